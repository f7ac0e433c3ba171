"""`folderfit review --serve` keeps every decision it acknowledges, over real HTTP on
127.0.0.1: class and file names of any spelling round-trip through data/corrections.csv, two
servers on one project lose nothing, Keep never undoes a relabel, and hostile requests get an
answer (issue 30)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from folderfit.artifacts import corrections as corrections_file
from folderfit.commands import review_server

# class folders whose names CSV or the comment rule could eat
HOSTILE = ["# hash", "#tight", " lead", "trail ", "a, b", 'q"uote', " both "]
ORDINARY = ["cats", "dogs", "birds", "cows", "pigs", "rats"]
CLASSES = [*ORDINARY, *HOSTILE]
PER_CLASS = 10
REPO = Path(__file__).resolve().parents[1]


def make_source(root: Path) -> tuple[Path, list[dict]]:
    """data.source with one folder per class, and the manifest rows the server reads."""
    source, manifest = root / "source", []
    for c in CLASSES:
        (source / c).mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(source / c / f"{i}.png")
            manifest.append({"source": f"{c}/{i}.png", "class": c, "split": "train",
                             "file": f"train/{c}/{i}.png"})
    return source, manifest


def start(source: Path, manifest: list, corrections: Path):
    store = review_server.Corrections(corrections, source, manifest)
    srv, token = review_server.make_server(b"<html></html>", store=store, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, {"port": srv.server_address[1], "token": token}


def request(s, method, url, body=None, headers=None, timeout=20):
    conn = http.client.HTTPConnection("127.0.0.1", s["port"], timeout=timeout)
    h = {"Content-Type": "application/json", "X-Folderfit-Token": s["token"], **(headers or {})}
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    try:
        conn.request(method, url, body=data, headers=h)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def post(s, *decisions):
    return request(s, "POST", "/api/decisions",
                   {"decisions": [{"path": p, "action": a} for p, a in decisions]})


def saved(s) -> dict:
    status, body = request(s, "GET", "/api/decisions")
    assert status == 200, body
    return {d["path"]: d["action"] for d in json.loads(body)["decisions"]}


@pytest.fixture
def project(tmp_path):
    source, manifest = make_source(tmp_path)
    corrections = tmp_path / "data/corrections.csv"
    corrections.parent.mkdir()
    corrections.write_text("path,action\n# a note the user wrote\n\n")
    srv, s = start(source, manifest, corrections)
    yield {**s, "source": source, "manifest": manifest, "file": corrections}
    srv.shutdown()
    srv.server_close()


# ------------------------------------------------------------------ names round-trip
def test_every_class_and_file_name_round_trips_through_the_server(project):
    s = project
    want = {}
    for c in HOSTILE:
        want[f"{c}/0.png"] = "drop"
        want[f"{c}/1.png"] = "relabel:cats"
        want[f"cats/{HOSTILE.index(c)}.png"] = f"relabel:{c}"
    for path, action in want.items():
        status, body = post(s, (path, action))
        assert status == 200, (path, body)
    fixes = corrections_file.read(s["source"], s["file"])  # as prepare reads it
    assert {p: f.describe() for p, f in fixes.items()} == want
    assert saved(s) == want
    assert "# a note the user wrote" in s["file"].read_text()


@pytest.mark.parametrize("value", ["# x", "#x", " x", "x ", "a, b", 'q"u', "a\nb", "a\r\nb", "", "\t#"])
def test_format_row_round_trips(value, tmp_path):
    text = "path,action\n" + corrections_file.format_row(value, f"relabel:{value}") + "\n# note\n"
    rows = [fields for _, _, fields in corrections_file.records(text, tmp_path / "c.csv") if fields]
    assert rows == [corrections_file.HEADER, [value, f"relabel:{value}"]]


def test_user_written_files_read_as_before(tmp_path):
    source, _ = make_source(tmp_path)
    path = tmp_path / "c.csv"
    path.write_text('path , action\n'
                    '# a note, with a comma\n'
                    '   # an indented note "with a quote\n'
                    '\n'
                    '  cats/0.png ,  drop  \n'
                    '"cats/1.png", relabel:dogs\n'
                    '#tight/0.png,drop\n'                 # '#tight' is a class folder: a row
                    '# hash/0.png,drop\n'                 # unquoted '# ': a commented-out row
                    '"# hash/1.png",drop\n'               # quoted: a row
                    '" lead/0.png",relabel: dogs\n'      # unquoted class: spaces stripped
                    '"cats/2.png","relabel: lead"\n')    # quoted: the class ' lead'
    fixes = {p: f.describe() for p, f in corrections_file.read(source, path).items()}
    assert fixes == {"cats/0.png": "drop", "cats/1.png": "relabel:dogs", "#tight/0.png": "drop",
                     "# hash/1.png": "drop", " lead/0.png": "relabel:dogs",
                     "cats/2.png": "relabel: lead"}


def test_an_unclosed_quote_is_one_line_naming_the_row(tmp_path):
    from folderfit.errors import PipelineError

    source, _ = make_source(tmp_path)
    path = tmp_path / "c.csv"
    path.write_text('path,action\ncats/0.png,drop\n"cats/1.png,drop\n')
    with pytest.raises(PipelineError, match=r"c.csv:3: .*never closed") as caught:
        corrections_file.read(source, path)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------ two servers, one file
SERVER = """
import json, sys
from pathlib import Path
from folderfit.commands import review_server
source, manifest, corrections = sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), sys.argv[3]
store = review_server.Corrections(Path(corrections), Path(source), manifest)
srv, token = review_server.make_server(b"", store=store, port=0)
print(json.dumps({"port": srv.server_address[1], "token": token}), flush=True)
srv.serve_forever()
"""


def test_two_servers_on_one_project_keep_every_acknowledged_decision(project, tmp_path):
    """One server in this process, one in another: every decision answered 200 is in the
    file afterwards (the merge is a read-modify-write under a lock both processes take)."""
    listed = tmp_path / "manifest.json"
    listed.write_text(json.dumps(project["manifest"]))
    other = subprocess.Popen([sys.executable, "-c", SERVER, str(project["source"]), str(listed),
                              str(project["file"])], stdout=subprocess.PIPE, text=True,
                             cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    try:
        second = json.loads(other.stdout.readline())
        servers = [project, second]
        paths = [r["source"] for r in project["manifest"] if r["class"] in ORDINARY]
        assert len(paths) == 60
        acknowledged, refused, lock = [], [], threading.Lock()

        def client(k):
            for path in paths[k::4]:
                try:
                    status, body = post(servers[k % 2], (path, "drop"))
                except OSError as exc:
                    status, body = None, repr(exc)
                with lock:
                    (acknowledged if status == 200 else refused).append((path, status, body))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not refused
        assert sorted(p for p, _, _ in acknowledged) == sorted(paths)
        assert sorted(corrections_file.read(project["source"], project["file"])) == sorted(paths)
    finally:
        other.terminate()
        other.wait(timeout=10)


# ------------------------------------------------------------------ keep
def test_keep_never_undoes_a_relabel(tmp_path):
    """Keep = the image stays in the class the page shows (its class in data/prepared)."""
    source, manifest = make_source(tmp_path)
    shown = {"cats/0.png": "dogs", "cats/3.png": "dogs"}  # relabels applied by the last prepare
    manifest = [{**r, "class": shown.get(r["source"], r["class"])} for r in manifest]
    corrections = tmp_path / "corrections.csv"
    corrections.write_text("path,action\n"
                           "cats/0.png,relabel:dogs\n"    # applied: the page shows dogs
                           "cats/1.png,drop\n"            # clicked, not applied yet
                           "cats/2.png,relabel:dogs\n"    # clicked, not applied yet
                           "cats/3.png,drop\n")           # clicked after the relabel was applied
    srv, s = start(source, manifest, corrections)
    try:
        for path in ("cats/0.png", "cats/1.png", "cats/2.png", "cats/3.png", "cats/4.png"):
            status, body = post(s, (path, "keep"))
            assert status == 200, body
        fixes = {p: f.describe() for p, f in corrections_file.read(source, corrections).items()}
        assert fixes == {"cats/0.png": "relabel:dogs", "cats/3.png": "relabel:dogs"}
        assert saved(s) == fixes
        # undoing a relabel: relabel to the image's own folder, which needs no row
        assert post(s, ("cats/0.png", "relabel:cats"))[0] == 200
        assert list(corrections_file.read(source, corrections)) == ["cats/3.png"]
    finally:
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------ hostile requests
def test_a_deeply_nested_body_is_a_400(project):
    before = project["file"].read_bytes()
    status, body = request(project, "POST", "/api/decisions", b"[" * 200_000)
    assert status == 400
    assert "\n" not in json.loads(body)["error"]
    status, body = request(project, "POST", "/api/decisions",
                           b'{"decisions": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    assert status == 400
    assert project["file"].read_bytes() == before
    assert request(project, "GET", "/api/decisions")[0] == 200  # still serving


def test_a_hundred_clients_arriving_at_once_all_get_an_answer(project):
    """A burst larger than the old listen backlog of 5, arriving while the server is busy
    (here: not accepting yet): every client is answered, none is reset or left waiting."""
    store = review_server.Corrections(project["file"], project["source"], project["manifest"])
    srv, token = review_server.make_server(b"<html></html>", store=store, port=0)
    s = {"port": srv.server_address[1], "token": token}
    answers, lock = [], threading.Lock()

    def client():
        try:
            status, _ = request(s, "GET", "/api/decisions", timeout=5)
        except OSError as exc:
            status = repr(exc)
        with lock:
            answers.append(status)

    threads = [threading.Thread(target=client) for _ in range(100)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        for t in threads:
            t.join(timeout=60)
    finally:
        srv.shutdown()
        srv.server_close()
    assert answers == [200] * 100


def test_handlers_at_once_are_bounded(project):
    """Connections beyond review_server.MAX_CLIENTS wait in the listen queue instead of each getting
    a thread: a client that sends nothing holds one slot until the handler's timeout."""
    store = review_server.Corrections(project["file"], project["source"], project["manifest"])
    srv, token = review_server.make_server(b"<html></html>", store=store, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    idle = []
    try:
        for _ in range(review_server.MAX_CLIENTS):
            idle.append(socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5))
        time.sleep(0.3)
        s = {"port": srv.server_address[1], "token": token}
        with pytest.raises(TimeoutError):  # every slot is held: this one waits
            request(s, "GET", "/api/decisions", timeout=0.5)
        idle.pop().close()  # one slot frees
        assert request(s, "GET", "/api/decisions", timeout=5)[0] == 200
    finally:
        for sock in idle:
            sock.close()
        srv.shutdown()
        srv.server_close()


@pytest.mark.skipif(not __import__("shutil").which("node"), reason="needs node")
def test_the_pages_export_quotes_as_format_row_does():
    """Opened from disk, the page exports the CSV itself: its cells must read back the same."""
    import re

    from folderfit.results.pages import review_page

    cell = re.search(r"^function cell\(s\).*$", review_page.SCRIPT, re.M).group(0)
    values = ["# x", "#x", " x", "x ", "a, b", 'q"u', "a\nb", "plain/1.png", "relabel:cats"]
    out = subprocess.run(["node", "-e", cell + "\nconsole.log(JSON.stringify("
                          + json.dumps(values) + ".map(cell)))"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(out) == [corrections_file.format_row(v, "x").removesuffix(",x") for v in values]


def test_original_class_is_the_class_folder():
    assert corrections_file.original_class("cats/1.png", False) == "cats"
    assert corrections_file.original_class("train/ lead/1.png", True) == " lead"
    assert corrections_file.original_class("# hash/sub/1.png", False) == "# hash"
