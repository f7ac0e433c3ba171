"""The review and results pages (folderfit.results.pages) and the --serve server, on a small synthetic
project built in a temp dir (images, manifest, review and eval outputs; no training)."""

from __future__ import annotations

import csv
import http.client
import json
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from folderfit.artifacts import corrections as corrections_file
from folderfit.commands import review_server
from folderfit.errors import PipelineError
from folderfit.results.pages import results_page, review_page, thumbs

CLASSES = ("birds", "cats", "dogs")
ODD = "cats/odd, \"name\".png"  # a comma and quotes: the CSV export must quote it


def _img(path: Path, seed: int, size=(48, 40)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def make_project(root: Path, per_class: int = 6) -> dict:
    """source/<class>/<i>.png (data.source), data/prepared/manifest.csv naming them (prepare
    keeps no copies), metrics/review/ and metrics/eval/ as the stages write them (plus an extra
    column/key)."""
    manifest, n = [], 0
    splits = ["train", "train", "train", "val", "test", "test"]
    for c in CLASSES:
        for i in range(per_class):
            rel = ODD if (c, i) == ("cats", 0) else f"{c}/{i:03d}.png"
            split = splits[i % len(splits)]
            _img(root / "source" / rel, n)
            manifest.append({"file": rel, "source": rel, "class": c, "split": split,
                             "sha256": f"{n:064x}", "width": 48, "height": 40, "root": "source",
                             "image_size": 32})
            n += 1
    _csv(root / "data/prepared/manifest.csv", list(manifest[0]), [list(r.values()) for r in manifest])
    rev = root / "metrics/review"
    # most suspect first, as the stage writes; one test image (dogs/004.png) among them
    issues = [("dogs/004.png", "dogs", "cats", 0.01), (ODD, "cats", "dogs", 0.05),
              ("birds/001.png", "birds", "cats", 0.2), ("birds/003.png", "birds", "dogs", 0.3),
              ("dogs/000.png", "dogs", "birds", 0.4)]
    _csv(rev / "label_issues.csv", ["path", "given", "suggested", "score", "extra"],
         [[p, g, s, f"{sc:.6f}", "x"] for p, g, s, sc in issues])
    # stage order: one same-class pair written first to check the page ranks cross-class first
    _csv(rev / "near_duplicates.csv", ["path", "other", "similarity", "issue", "class",
                                        "other_class", "split", "other_split", "pixel_correlation"],
         [["birds/000.png", "birds/002.png", "0.990000", "", "birds", "birds", "train", "train", "0.9"],
          ["cats/001.png", "dogs/001.png", "0.950000", "different classes", "cats", "dogs",
           "train", "train", "0.5"]])
    _csv(rev / "outliers.csv", ["path", "class", "split", "score"],
         [["cats/002.png", "cats", "train", "0.700000"]])
    (rev / "noise_per_class.json").write_text(json.dumps(
        [{"class": c, "label_noise_rate": r} for c, r in zip(CLASSES, (0.1, 0.05, 0.2))]))
    (rev / "details.json").write_text(json.dumps({
        "n_label_issues": len(issues), "label_noise_rate": 0.12, "n_near_duplicates": 2,
        "n_outliers": 1, "per_class": [{"class": c, "n_images": per_class, "n_label_issues": 1,
                                        "label_noise_rate": 0.1} for c in CLASSES]}))
    ev = root / "metrics/eval"
    ev.mkdir(parents=True)
    tests = [r for r in manifest if r["split"] == "test"]
    preds = []
    for k, r in enumerate(tests):  # every third one wrong
        pred = CLASSES[(CLASSES.index(r["class"]) + (1 if k % 3 == 0 else 0)) % 3]
        preds.append([r["source"], f"source/{r['file']}", r["class"], pred,
                      f"{0.5 + 0.08 * k:.6f}", int(pred == r["class"]), f"{pred}=0.6;x=0.2"])
    _csv(ev / "predictions.csv", ["path", "prepared_file", "true", "predicted", "confidence",
                                  "correct", "top_k"], preds)
    (ev / "summary.json").write_text(json.dumps({
        "split": "test", "estimate": "cv", "n_images": len(preds), "accuracy": 0.6667,
        "accuracy_ci95_low": 0.3, "accuracy_ci95_high": 0.9, "macro_f1": 0.61,
        "macro_f1_ci95_low": 0.2, "macro_f1_ci95_high": 0.85, "ece": 0.1, "ece_bins": 10,
        "top_k": 2, "top_k_accuracy": 0.9, "new_key": 1}))
    (ev / "per_class.json").write_text(json.dumps({c: {"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                                       "support": 2, "roc_auc": None} for c in CLASSES}))
    return {"root": root, "manifest": manifest, "issues": issues, "preds": preds,
            "review": rev, "eval": ev, "prepared": root / "data/prepared", "source": root / "source"}


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path)


def embedded(html: str, element_id: str = "data"):
    m = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


# ------------------------------------------------------------------ review page
def test_review_page_lists_issues_in_file_order_with_thumbnails(project):
    out = review_page.write(project["review"], project["prepared"], project["review"] / "index.html")
    html = out.read_text(encoding="utf-8")
    data = embedded(html)
    assert [data["images"][it["img"]]["path"] for it in data["issues"]] == [p for p, *_ in project["issues"]]
    assert [(it["given"], it["suggested"]) for it in data["issues"]] == [(g, s) for _, g, s, _ in project["issues"]]
    assert data["images"][data["issues"][0]["img"]]["split"] == "test"
    for it in data["issues"]:  # made from the original file (prepare keeps no copy)
        path = data["images"][it["img"]]["path"]
        assert data["thumbs"][it["img"]] == thumbs.data_uri(project["source"] / path)
    # cross-class pair first although the stage file lists the same-class pair first
    assert data["pairs"][0]["issue"] == "different classes"
    assert [r["class"] for r in data["noise"]] == list(CLASSES) and data["noise"][2]["rate"] == 0.2
    assert "http://" not in html.replace("http-equiv", "") and "https://" not in html  # no network
    assert 'test image: decide by looking' in html


def test_review_page_is_deterministic(project, tmp_path):
    a = review_page.write(project["review"], project["prepared"], tmp_path / "a.html").read_bytes()
    b = review_page.write(project["review"], project["prepared"], tmp_path / "b.html").read_bytes()
    assert a == b


def test_file_names_cannot_inject_markup(project):
    evil = "cats/</script><img src=x onerror=alert(1)>.png"
    rows = list(csv.reader(open(project["review"] / "label_issues.csv")))
    rows.append([evil, "cats", "dogs", "0.9", ""])
    _csv(project["review"] / "label_issues.csv", rows[0], rows[1:])
    html = review_page.render(review_page.collect(project["review"], project["prepared"]))
    assert "</script><img" not in html
    data = embedded(html)
    assert data["images"][data["issues"][-1]["img"]]["path"] == evil


def test_missing_review_file_is_one_line_error(project):
    (project["review"] / "label_issues.csv").unlink()
    with pytest.raises(PipelineError, match="label_issues.csv: not found"):
        review_page.write(project["review"], project["prepared"], project["review"] / "index.html")


def test_broken_image_gets_empty_tile(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = tmp_path / "good.png"
    _img(good, 1, (400, 300))
    uris = thumbs.data_uris([bad, good, good])
    assert uris[0] is None and uris[1] == uris[2]
    import base64
    import io
    img = Image.open(io.BytesIO(base64.b64decode(uris[1].split(",", 1)[1])))
    assert max(img.size) == thumbs.THUMB_PX


# ------------------------------------------------------------------ results page
def test_results_page_numbers_confusion_and_facts(project):
    out = results_page.write(project["eval"], project["prepared"], project["eval"] / "index.html",
                             facts={"backbone": "tf_efficientnet_lite0", "strategy": "feature_extract",
                                    "changed params": {"lr": 0.01}, "data version": "abc123"})
    html = out.read_text(encoding="utf-8")
    data = embedded(html)
    assert data["estimate"] == "cv" and 'data-kind="cv"' in html and "cross-validation" in html
    assert data["classes"] == list(CLASSES)
    wrong = sum(p[2] != p[3] for p in project["preds"])
    assert sum(data["matrix"][i][i] for i in range(3)) == len(project["preds"]) - wrong
    assert "0.3000 \u2013 0.9000" in html and "tf_efficientnet_lite0" in html and "abc123" in html
    assert data["thumbs"] == [thumbs.data_uri(project["source"] / p[0]) for p in project["preds"]]
    assert all(t and t.startswith("data:image/jpeg") for t in data["thumbs"])
    assert sum(b["count"] for b in data["bins"]) == len(project["preds"]) and len(data["bins"]) == 10


@pytest.mark.parametrize("summary, kind", [({"split": "test", "estimate": "the test split, scored with the model file"}, "test"),
                                           ({"split": "train", "estimate": "5-fold cross-validation of the whole procedure"}, "cv"),({"split": "test"}, "test"), ({"split": "val", "selection_split_scored": True}, "val"),
                                           ({"split": "test", "estimate": "cv"}, "cv"), ({"estimate": "test", "split": "test"}, "test")])
def test_estimate_kind(summary, kind):
    assert results_page.estimate_of(summary) == kind


def test_reliability_bins_match_the_evaluation():
    from folderfit.results import metrics

    conf = np.array([0.1, 0.2, 0.2, 0.55, 0.99, 1.0, 0.35])
    ok = np.array([1, 0, 1, 1, 1, 0, 0], bool)
    ref = metrics.reliability_bins(conf, ok, 10)
    ours = results_page.reliability(list(conf), list(ok), 10)
    assert [b["count"] for b in ours] == list(ref["count"])
    assert [b["accuracy"] or 0 for b in ours] == pytest.approx(list(ref["accuracy"]))


# ------------------------------------------------------------------ the server
@pytest.fixture
def server(project):
    corrections = project["root"] / "data/corrections.csv"
    corrections.write_text("path,action\n# a comment the user wrote\nbirds/005.png,drop\n")
    store = review_server.Corrections(corrections, project["source"], project["manifest"])
    srv, token = review_server.make_server(b"<html>page</html>", store=store, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield {"port": srv.server_address[1], "token": token, "file": corrections, **project}
    srv.shutdown()
    srv.server_close()


def request(s, method, url, body=None, token=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", s["port"], timeout=10)
    h = {"Content-Type": "application/json", **({"X-Folderfit-Token": token} if token else {}), **(headers or {})}
    conn.request(method, url, body=body if body is None or isinstance(body, bytes) else json.dumps(body).encode(), headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def test_serve_merges_decisions_atomically_and_prepare_accepts_them(server):
    s = server
    st, body = request(s, "POST", "/api/decisions", {"decisions": [
        {"path": ODD, "action": "relabel:dogs"}, {"path": "birds/001.png", "action": "drop"},
        {"path": "birds/005.png", "action": "relabel:cats"},  # replaces the existing drop
        {"path": "birds/001.png", "action": "relabel:cats"}]}, token=s["token"])  # later one wins
    assert st == 200, body
    fixes = corrections_file.read(s["source"], s["file"])
    assert {p: f.describe() for p, f in fixes.items()} == {
        ODD: "relabel:dogs", "birds/001.png": "relabel:cats", "birds/005.png": "relabel:cats"}
    text = s["file"].read_text()
    assert "# a comment the user wrote" in text and '"cats/odd, ""name"".png",relabel:dogs' in text
    st, _ = request(s, "POST", "/api/decisions", {"decisions": [{"path": ODD, "action": "keep"}]}, token=s["token"])
    assert st == 200 and ODD not in corrections_file.read(s["source"], s["file"])
    st, body = request(s, "GET", "/api/decisions", token=s["token"])
    assert st == 200 and {d["path"] for d in json.loads(body)["decisions"]} == {"birds/001.png", "birds/005.png"}
    assert not [p for p in s["file"].parent.iterdir() if p.name.endswith(".tmp")]


def test_serve_refuses_bad_token_host_and_path_tricks(server):
    s = server
    before = s["file"].read_bytes()
    ok = {"decisions": [{"path": "birds/001.png", "action": "drop"}]}
    assert request(s, "GET", "/?token=wrong")[0] == 403
    assert request(s, "GET", "/")[0] == 403
    assert request(s, "GET", f"/?token={s['token']}")[0] == 200
    assert request(s, "POST", "/api/decisions", ok, token="wrong")[0] == 403
    assert request(s, "POST", "/api/decisions", ok)[0] == 403
    assert request(s, "POST", f"/api/decisions?token={s['token']}", ok)[0] == 403  # header only
    assert request(s, "POST", "/api/decisions", ok, token=s["token"], headers={"Host": "evil.example:80"})[0] == 403
    for path in ("/etc/passwd", "../source/cats/001.png", "cats/../cats/001.png", "nothere.png",
                 "C:/x.png", "data/corrections.csv"):
        st, body = request(s, "POST", "/api/decisions", {"decisions": [{"path": path, "action": "drop"}]}, token=s["token"])
        assert st == 400, (path, body)
    for action in ("relabel:wolves", "delete", "relabel:../x"):
        assert request(s, "POST", "/api/decisions", {"decisions": [{"path": "cats/001.png", "action": action}]},
                       token=s["token"])[0] == 400
    # a body over the limit is refused from its Content-Length, before it is read
    conn = http.client.HTTPConnection("127.0.0.1", s["port"], timeout=10)
    conn.putrequest("POST", "/api/decisions")
    for k, v in (("Content-Type", "application/json"), ("X-Folderfit-Token", s["token"]),
                 ("Content-Length", str(review_server.MAX_BODY + 1))):
        conn.putheader(k, v)
    conn.endheaders(b"{")
    assert conn.getresponse().status == 413
    conn.close()
    assert request(s, "POST", "/api/decisions", b"{not json", token=s["token"])[0] == 400
    assert request(s, "POST", "/api/decisions", b"x", token=s["token"], headers={"Content-Type": "text/plain"})[0] == 415
    assert s["file"].read_bytes() == before  # nothing refused was written


def test_serve_binds_loopback_and_port_in_use_is_one_line(project):
    store = review_server.Corrections(project["root"] / "c.csv", project["source"], project["manifest"])
    srv, token = review_server.make_server(b"", store=store, port=0)
    try:
        assert srv.server_address[0] == "127.0.0.1" and len(token) >= 32
        with pytest.raises(PipelineError, match=r"port \d+ on 127.0.0.1 is already in use; choose another with --port"):
            review_server.make_server(b"", store=store, port=srv.server_address[1])
    finally:
        srv.server_close()


def test_cli_review_serve_port_in_use(project, monkeypatch, capsys):
    from folderfit import cli

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    monkeypatch.chdir(project["root"])
    import yaml
    from conftest import repo_params
    (project["root"] / "params.yaml").write_text(yaml.safe_dump(repo_params({"data": {"source": "source"}})))
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main(["review", "--serve", "--port", str(port), "--dir", "metrics/review"])
    finally:
        blocker.close()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("\n") == 0 and "already in use" in err, err
