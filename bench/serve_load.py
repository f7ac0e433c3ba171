"""Throughput and latency of `folderfit serve`, measured from a client on the same machine.

    python -m bench.serve_load                              # batch 1 and 16, lite0 at 224 px
    python -m bench.serve_load --model models/model.pt --batches 1 4 16 --requests 30

Starts `folderfit serve MODEL --port 0` as its own process on 127.0.0.1 (loopback only; a
token set through the environment), then for each batch size sends multipart requests of that
many JPEG photos (synthetic, --photo-size, ~photo-like file sizes) from --clients threads,
each with one keep-alive connection, until --requests requests are answered or --seconds
pass, whichever is first. Printed per batch size: requests, images/s over the wall time, and
the p50 / p95 latency of a request. Without --model a model file is built from the offline
pretrained tf_efficientnet_lite0 (224 px, 3 classes, untrained head): the network a default
`dvc repro` delivers, so the compute per image is the real one.

The client threads share the machine with the server: on a small machine they take CPU from
it, and other load on the machine moves the numbers (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_model(path: Path) -> None:
    from folderfit.artifacts import model_file
    from folderfit.backbone import architecture

    built = architecture.build_model("tf_efficientnet_lite0", 3, "default", 0)
    model_file.save_model_file(path, built, ["a", "b", "c"], built.preprocess)


def photos(n: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """n JPEGs (quality 90) of smooth random colour fields with grain: photo-like sizes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        arr = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def multipart(images: list[bytes]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(12)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p{i}.jpg"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + img + b"\r\n" for i, img in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def start_server(model: Path, token: str, precision: str) -> tuple[subprocess.Popen, int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FOLDERFIT_SERVE_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "folderfit", "serve", str(model), "--host",
                             "127.0.0.1", "--port", "0", "--precision", precision, "--max-queue", "64"],
                            env=env, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "http://127.0.0.1:" not in line:
        proc.kill()
        sys.exit(f"the server did not start: {line}{proc.stderr.read()}")
    port = int(line.split("http://127.0.0.1:")[1].split()[0].rstrip(";"))
    return proc, port, line.strip()


def run_load(port: int, token: str, body: bytes, content_type: str, *, requests: int,
             seconds: float, clients: int) -> tuple[list[float], float, int]:
    """(latencies in s, wall s, failures): --clients threads, bounded in count and time."""
    lock = threading.Lock()
    latencies: list[float] = []
    failures = [0]
    issued = [0]
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {token}"}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(seconds, 30))
        while True:
            with lock:
                if issued[0] >= requests or time.monotonic() >= deadline:
                    break
                issued[0] += 1
            t0 = time.perf_counter()
            conn.request("POST", "/predict", body, headers)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - t0
            with lock:
                if response.status == 200:
                    latencies.append(elapsed)
                else:
                    failures[0] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, failures[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: lite0 at 224 px, built in a temp folder)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="images per request")
    parser.add_argument("--requests", type=int, default=40, help="requests per batch size at most")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per batch size at most")
    parser.add_argument("--clients", type=int, default=2, help="concurrent client threads")
    parser.add_argument("--photo-size", default="640x480", help="WxH of the JPEGs sent")
    parser.add_argument("--precision", default="auto", help="the server's --precision")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    width, height = map(int, args.photo_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else Path(tmp) / "model.pt"
        if not args.model:
            build_model(model)
        token = secrets.token_urlsafe(16)
        proc, port, started = start_server(model, token, args.precision)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/metadata", headers={"Authorization": f"Bearer {token}"})
            meta = json.loads(conn.getresponse().read())
            conn.close()
            print(started.removeprefix("serve: "))
            print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, {args.clients} "
                  f"client threads, {width}x{height} JPEGs")
            images = photos(max(args.batches), (width, height))
            results = []
            for batch in args.batches:
                body, content_type = multipart(images[:batch])
                run_load(port, token, body, content_type, requests=2, seconds=30, clients=1)  # warm
                lat, wall, failed = run_load(port, token, body, content_type, requests=args.requests,
                                             seconds=args.seconds, clients=args.clients)
                row = {"batch": batch, "requests": len(lat), "failed": failed,
                       "images_per_s": round(len(lat) * batch / wall, 1),
                       "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
                       "p95_ms": round(1000 * percentile(lat, 0.95), 1) if lat else None,
                       "body_kb": round(len(body) / 1024)}
                results.append(row)
                print(f"batch {batch:3d}: {row['requests']} requests ({failed} failed), "
                      f"{row['images_per_s']} images/s, p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms "
                      f"({row['body_kb']} kB per request)", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"model": meta["model"], "precision": meta["precision"],
                                                       "load_average": os.getloadavg()[0],
                                                       "results": results}, indent=1) + "\n")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
