"""folderfit serve: predict's numbers over HTTP, and the server's limits (size, pixels,
content, token, host, queue). Each test runs the real Starlette app under uvicorn on a free
127.0.0.1 port, in a thread."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

import tiny_project as T  # noqa: E402
from PIL import Image  # noqa: E402

from folderfit.cli import build_parser  # noqa: E402
from folderfit.commands import (
    predict,
    serve,  # noqa: E402
)
from folderfit.compute import classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model file, PNG and JPEG images of several sizes, and the loaded Service."""
    root = tmp_path_factory.mktemp("serve")
    T.make_image_folder(root / "img", per_class=2, size=40, seed=1)
    T.make_image_folder(root / "img", per_class=2, size=57, seed=2, suffix=".jpg")
    T.save_tiny_model(root / "model.pt", "mobilenet_v3_small", 32)
    service = serve.Service(root / "model.pt", precision="fp32", device="cpu")
    files = sorted((root / "img").rglob("*.*"))
    return root, files, service


@contextlib.contextmanager
def running(service, **options):
    """The app on a free 127.0.0.1 port, served by uvicorn in a thread; yields the port."""
    sock = serve.listen("127.0.0.1", 0)
    server = serve.make_server(serve.make_app(service, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def call(port, method, path, body=None, headers=None, host=None):
    """(status, parsed JSON, response headers) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        headers = dict(headers or {})
        if body is not None and not callable(getattr(body, "__next__", None)):
            headers.setdefault("Content-Length", str(len(body)))
        elif body is not None:
            headers["Transfer-Encoding"] = "chunked"
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        if body is not None and isinstance(body, (bytes, bytearray)):
            conn.send(body)
        elif body is not None:  # chunked, no Content-Length: the server counts the stream
            for chunk in body:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw), dict(response.getheaders())
    finally:
        conn.close()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = "----folderfit-test-boundary"
    out = io.BytesIO()
    for name, data in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                  f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_predictions_equal_folderfit_predict(setup, tmp_path):
    root, files, service = setup
    digest = hashlib.sha256((root / "model.pt").read_bytes()).hexdigest()
    out = tmp_path / "preds.jsonl"
    predict.command(build_parser().parse_args(
        ["predict", *map(str, files), "--model", str(root / "model.pt"), "--precision", "fp32",
         "--device", "cpu", "--top-k", "3", "--output", str(out)]))
    def label(f: Path) -> str:
        return f"{f.parent.name}-{f.name}"

    expected = {label(Path(r["path"])): r for r in map(json.loads, out.read_text().splitlines())}
    assert len(expected) == len(files) and any(n.endswith(".jpg") for n in expected)
    with running(service) as port:
        body, headers = multipart([(label(f), f.read_bytes()) for f in files])
        status, answer, _ = call(port, "POST", "/predict?top_k=3", body, headers)
        assert status == 200, answer
        assert answer["model"] == {"sha256": digest, "architecture": "mobilenet_v3_small",
                                   "file": "model.pt"}
        got = answer["predictions"]
        assert [p["name"] for p in got] == [f"image {i + 1} ({label(f)!r})" for i, f in enumerate(files)]
        for f, p in zip(files, got):
            want = expected[label(f)]
            assert p["predicted"] == want["predicted"] == p["top_k"][0]["class"]
            probs = {t["class"]: t["prob"] for t in p["top_k"]}  # top 3 of 3: every class
            assert probs.keys() == {t["class"] for t in want["top_k"]} == set(T.CLASSES)
            for w in want["top_k"]:
                assert abs(probs[w["class"]] - w["prob"]) <= 1e-6, (label(f), probs, w)
        # one image as the raw body, and top_k from the query (default: the app's top_k)
        status, single, _ = call(port, "POST", "/predict?top_k=1", files[-1].read_bytes(),
                                 {"Content-Type": "image/jpeg"})
        assert status == 200 and single["model"]["sha256"] == digest
        [p] = single["predictions"]
        assert p["name"] == "body" and len(p["top_k"]) == 1
        assert abs(p["confidence"] - expected[label(files[-1])]["confidence"]) <= 1e-6
    # predict's unrounded numbers too, for the same batch
    probs, order, failed = classifier.predict_files(service.classifier.loaded, files, len(files), "fp32",
                                            progress=False, device="cpu")
    assert order == list(range(len(files))) and not failed
    for row, p in zip(probs, got):
        assert abs(float(row.max()) - p["confidence"]) <= 1e-6


def test_health_and_metadata(setup):
    root, _, service = setup
    with running(service) as port:
        status, health, _ = call(port, "GET", "/health")
        assert status == 200 and health["status"] == "ok"
        assert health["model"]["sha256"] == service.sha256
        status, meta, _ = call(port, "GET", "/metadata")
        assert status == 200
        assert meta["classes"] == list(T.CLASSES) and meta["image_size"] == 32
        assert meta["model"]["architecture"] == "mobilenet_v3_small"
        assert meta["model"]["sha256"] == hashlib.sha256((root / "model.pt").read_bytes()).hexdigest()
        assert "JPEG" in meta["formats"] and "EPS" not in meta["formats"]
        status, missing, _ = call(port, "GET", "/nope")
        assert status == 404 and "error" in missing
        status, wrong, _ = call(port, "GET", "/predict")
        assert status == 405 and "error" in wrong


def test_oversize_body_is_413(setup):
    _, files, service = setup
    with running(service, max_body=50_000, max_images=2) as port:
        big = os.urandom(120_000)
        status, answer, _ = call(port, "POST", "/predict", big, {"Content-Type": "image/png"})
        assert status == 413 and "over the limit of 50000 bytes" in answer["error"]
        assert "\n" not in answer["error"]
        # no Content-Length (chunked): refused while the stream is counted
        chunks = iter([big[i:i + 10_000] for i in range(0, len(big), 10_000)])
        status, answer, _ = call(port, "POST", "/predict", chunks, {"Content-Type": "image/png"})
        assert status == 413, answer
        body, headers = multipart([("a.png", big)])
        status, answer, _ = call(port, "POST", "/predict", body, headers)
        assert status == 413
        body, headers = multipart([(f.name, f.read_bytes()) for f in files[:3]])
        status, answer, _ = call(port, "POST", "/predict", body, headers)
        assert status == 400 and "Too many files" in answer["error"]
        # the server still answers after refusals
        status, _, _ = call(port, "POST", "/predict", files[0].read_bytes(), {"Content-Type": "image/png"})
        assert status == 200


def test_non_images_and_bombs_are_refused(setup, monkeypatch):
    _, files, service = setup
    with running(service) as port:
        status, answer, _ = call(port, "POST", "/predict", b"hello, not a picture",
                                 {"Content-Type": "image/jpeg"})
        assert status == 415 and answer["error"].startswith("body: not an image file")
        status, answer, _ = call(port, "POST", "/predict", b"{}", {"Content-Type": "application/json"})
        assert status == 415 and "Content-Type 'application/json'" in answer["error"]
        status, answer, _ = call(port, "POST", "/predict", b"", {"Content-Type": "image/png"})
        assert status == 400 and "empty" in answer["error"]
        good = files[0].read_bytes()
        body, headers = multipart([("ok.png", good), ("notes.txt", b"just text")])
        status, answer, _ = call(port, "POST", "/predict", body, headers)
        assert status == 415 and answer["error"].startswith("image 2 ('notes.txt'): not an image")
        # an EPS header (Ghostscript would run it): not one of predict's formats
        status, answer, _ = call(port, "POST", "/predict", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n",
                                 {"Content-Type": "image/x-eps"})
        assert status == 415
        jpeg = next(f for f in files if f.suffix == ".jpg").read_bytes()
        status, answer, _ = call(port, "POST", "/predict", jpeg[: len(jpeg) // 2],
                                 {"Content-Type": "image/jpeg"})
        assert status == 422 and "cannot decode" in answer["error"]
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # as --max-pixels sets it
        bomb = png_bytes(Image.new("L", (3000, 3000)))  # 9 megapixels in a few kB
        assert len(bomb) < 50_000
        status, answer, _ = call(port, "POST", "/predict", bomb, {"Content-Type": "image/png"})
        assert status == 422 and "decompression bomb" in answer["error"], answer
        status, answer, _ = call(port, "POST", "/predict", png_bytes(Image.new("RGB", (900, 30))),
                                 {"Content-Type": "image/png"})
        assert status == 422 and "aspect ratio" in answer["error"]
        status, answer, _ = call(port, "POST", "/predict?top_k=0", good, {"Content-Type": "image/png"})
        assert status == 400 and "top_k" in answer["error"]


def test_token_is_enforced(setup):
    _, files, service = setup
    image = files[0].read_bytes()
    with running(service, token="s3cret-token") as port:
        for path in ("/health", "/metadata"):
            status, answer, headers = call(port, "GET", path)
            assert status == 401 and headers.get("www-authenticate") == "Bearer"
        status, _, _ = call(port, "POST", "/predict", image, {"Content-Type": "image/png"})
        assert status == 401
        status, _, _ = call(port, "POST", "/predict", image, {"Content-Type": "image/png",
                                                               "Authorization": "Bearer s3cret-tokeN"})
        assert status == 401
        status, answer, _ = call(port, "POST", "/predict", image,
                                 {"Content-Type": "image/png", "Authorization": "Bearer s3cret-token"})
        assert status == 200 and len(answer["predictions"]) == 1


def test_loopback_by_default_and_foreign_hosts_refused(setup, monkeypatch, capsys):
    args = build_parser().parse_args(["serve", "m.pt"])
    assert args.host == "127.0.0.1" and serve.is_loopback(args.host) and not serve.is_loopback("0.0.0.0")
    _, _, service = setup
    with running(service) as port:
        status, answer, _ = call(port, "GET", "/health", host=f"attacker.example:{port}")
        assert status == 403 and "Host" in answer["error"]
        status, _, _ = call(port, "GET", "/health", host=f"localhost:{port}")
        assert status == 200
        status, answer, _ = call(port, "GET", "/health", headers={"Origin": "https://example.com"})
        assert status == 403 and "web pages" in answer["error"]
    # the command: a warning for any other --host (never bound here: listen is redirected)
    started = []

    class NoServer:
        def run(self, sockets):
            started.append(sockets[0].getsockname())
            sockets[0].close()

    monkeypatch.setattr(serve, "Service", lambda *a, **k: service)
    monkeypatch.setattr(serve, "make_server", lambda app: NoServer())
    monkeypatch.setattr(serve, "listen", lambda host, port: serve.socket.create_server(("127.0.0.1", 0)))
    monkeypatch.delenv(serve.TOKEN_ENV, raising=False)
    serve.command(build_parser().parse_args(["serve", "m.pt", "--port", "0"]))
    assert "warning" not in capsys.readouterr().err
    serve.command(build_parser().parse_args(["serve", "m.pt", "--host", "0.0.0.0", "--port", "0"]))
    err = capsys.readouterr().err
    assert "warning: --host 0.0.0.0 serves the model to other machines" in err and "set a token" in err
    assert len(started) == 2


def test_inference_off_the_event_loop_and_bounded_queue(setup, monkeypatch):
    """While one request holds the inference thread, /health answers at once and a request
    over --max-queue gets 503."""
    _, files, service = setup
    gate, inside = threading.Event(), threading.Event()
    real = service.classify

    def held(uploads, top_k):
        inside.set()
        assert gate.wait(30)
        return real(uploads, top_k)

    monkeypatch.setattr(service, "classify", held)
    image = files[0].read_bytes()
    with running(service, max_queue=1) as port:
        first = {}
        worker = threading.Thread(target=lambda: first.update(answer=call(
            port, "POST", "/predict", image, {"Content-Type": "image/png"})))
        worker.start()
        assert inside.wait(30)
        status, _, _ = call(port, "GET", "/health")
        assert status == 200
        status, answer, headers = call(port, "POST", "/predict", image, {"Content-Type": "image/png"})
        assert status == 503 and "busy" in answer["error"] and headers.get("retry-after") == "1"
        gate.set()
        worker.join(30)
        assert first["answer"][0] == 200


def test_missing_serve_stack_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import fails as if not installed
    with pytest.raises(serve.PipelineError, match=r"needs uvicorn.*folderfit\[serve\]"):
        serve.require_stack()


@pytest.mark.slow  # a subprocess importing torch
def test_cli_serves(setup):
    root, files, _ = setup
    env = {**os.environ, "PYTHONPATH": str(REPO), "FOLDERFIT_SERVE_TOKEN": "tok"}
    proc = subprocess.Popen([sys.executable, "-m", "folderfit", "serve", str(root / "model.pt"),
                             "--port", "0", "--precision", "fp32"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "http://127.0.0.1:" in line and "with a token" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        status, answer, _ = call(port, "POST", "/predict", files[0].read_bytes(),
                                 {"Content-Type": "image/png", "Authorization": "Bearer tok"})
        assert status == 200 and answer["predictions"][0]["predicted"] in T.CLASSES
    finally:
        proc.terminate()
        proc.wait(30)
