"""`folderfit serve MODEL`: the model file as an HTTP JSON prediction service.

    POST /predict[?top_k=K]  one image as the body (Content-Type image/* or
                             application/octet-stream), or several as the file parts of a
                             multipart/form-data body; answers their top-k classes
    GET  /metadata           classes, preprocessing, architecture, the model file's sha256
    GET  /health             {"status": "ok", ...} once the model is loaded and warmed up

Every answer names the model (its file's sha256, the version to log with each prediction);
every refusal is `{"error": "<one line>"}` with a 4xx/5xx status. Each image takes predict's
path exactly (folderfit.images.decode.network_image on the opened upload, then
Classifier.batch_probabilities): the probabilities equal `folderfit predict`'s on the same
file (tests/test_serve.py). One request's images are one batch; a request with a bad image is
refused whole, naming the image.

Safety, since a server accepts bytes from whoever reaches its port:
* 127.0.0.1 by default; another --host prints a warning (plain HTTP: put a TLS proxy in
  front). On loopback the Host header must name loopback (a DNS-rebinding page gets 403), and
  a request with an Origin header (sent by browsers for web pages; this server grants no CORS)
  gets 403 whatever the host.
* optional bearer token (--token, or the FOLDERFIT_SERVE_TOKEN variable, which `ps` does not
  show), compared in constant time, on every endpoint.
* bodies over --max-body-mb get 413 (Content-Length checked before reading, the stream counted
  while reading); a body not received within BODY_TIMEOUT_S gets 408; at most --max-images
  files per request; images over PIL's pixel limit (decompression bombs) or
  imageio's aspect limit get 422, content that is not an image of predict's formats 415 (only
  those decoders are tried: no EPS/Ghostscript, no PDF).
* inference runs on one worker thread, one batch at a time, so the event loop keeps answering
  (/health included) while it works; at most --max-queue requests wait for or hold it, more
  get 503 with Retry-After; uvicorn refuses connections beyond CONNECTIONS with 503.

Needs the `serve` extra (Starlette, uvicorn, python-multipart): pip install 'folderfit[serve]'.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import ipaddress
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from folderfit.errors import PipelineError
from folderfit.support.fileio import sha256_file

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
TOKEN_ENV = "FOLDERFIT_SERVE_TOKEN"
BODY_TIMEOUT_S = 60.0  # a client that sends slower than this holds a connection: 408
CONNECTIONS = 32  # open connections (uvicorn's limit_concurrency); with --max-body-mb, bounds memory
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SERVE_EXTRA = "pip install 'folderfit[serve]'"


class Refused(Exception):
    """A request answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ the model
class Service:
    """The loaded model file and what the endpoints answer; no web framework in here."""

    def __init__(self, model_path, precision: str = "auto", device: str = "auto"):
        from PIL import Image

        from folderfit.artifacts.model_file import load_model_file
        from folderfit.compute.classifier import Classifier
        from folderfit.compute.runtime import Setting
        from folderfit.images import image_folder

        path = Path(model_path)
        digest = sha256_file(path) if path.is_file() else None  # missing: load_model_file says so
        loaded = load_model_file(path)
        if sha256_file(path) != digest:  # the digest must be of the weights that are served
            raise PipelineError(f"{path}: the model file changed while it was loaded; start again "
                                f"once it is written")
        self.classifier = Classifier(loaded, precision, device, Setting("cli"))
        self.sha256 = digest
        self.model = {"sha256": digest, "architecture": loaded.info["model_name"], "file": path.name}
        registered = Image.registered_extensions()  # predict's extensions -> PIL decoder names
        self.formats = sorted({registered[e] for e in image_folder.IMAGE_EXTENSIONS if e in registered})

    def metadata(self) -> dict:
        from PIL import Image

        import folderfit

        loaded = self.classifier.loaded
        pre = loaded.preprocess
        return {"model": self.model, "classes": self.classifier.class_names,
                "image_size": pre.image_size, "resize_size": pre.resize_size,
                "interpolation": pre.interpolation, "mean": list(pre.mean), "std": list(pre.std),
                "tta": loaded.tta, "device": str(self.classifier.rt.device),
                "precision": self.classifier.rt.precision, "formats": self.formats,
                "max_pixels": Image.MAX_IMAGE_PIXELS, "folderfit": folderfit.__version__}

    def warm_up(self) -> None:
        """One blank batch through the network: the first request is not the slow one, and a
        model with NaN weights fails here, at start (Classifier's finiteness check)."""
        import torch

        size = self.classifier.loaded.preprocess.image_size
        self.classifier.batch_probabilities(torch.zeros(1, 3, size, size, dtype=torch.uint8))

    def tensor(self, label: str, data: bytes):
        """predict's network input for one upload, or Refused naming `label`."""
        from PIL import Image

        from folderfit.images import decode

        if not data:
            raise Refused(400, f"{label}: empty (0 bytes); send the image file's bytes")
        try:
            with decode.decode_errors(), Image.open(io.BytesIO(data), formats=self.formats) as img:
                return decode.network_image(img, self.classifier.loaded.preprocess)
        except decode.BadImage as exc:
            if str(exc) == decode.NOT_AN_IMAGE:
                raise Refused(415, f"{label}: not an image file (unrecognised content); send "
                                   f"{', '.join(self.formats)}") from None
            raise Refused(422, f"{label}: {exc}") from None

    def classify(self, uploads: list[tuple[str, bytes]], top_k: int) -> dict:
        """The /predict answer for [(label, bytes)]: one batch through the network."""
        import torch

        batch = torch.stack([self.tensor(label, data) for label, data in uploads])
        probs, decided = self.classifier.batch_decisions(batch)  # decision: predict's
        names = self.classifier.class_names
        top_p, top_i = probs.topk(min(top_k, len(names)), dim=1)  # ties as predict breaks them
        predictions = []
        for (label, _), ps, cs, decision in zip(uploads, top_p.tolist(), top_i.tolist(), decided.labels):
            top = [{"class": names[c], "prob": p} for p, c in zip(ps, cs)]
            predictions.append({"name": label, "predicted": top[0]["class"], "decision": decision,
                                "confidence": top[0]["prob"], "top_k": top})
        return {"model": self.model, "predictions": predictions}


# ------------------------------------------------------------------ HTTP
def require_stack() -> None:
    try:
        import multipart  # noqa: F401  (python-multipart: Starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise PipelineError(f"folderfit serve needs {exc.name}, from the serve extra: "
                            f"{SERVE_EXTRA}") from None


async def _capped_stream(request, max_body: int):
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > max_body:
            raise Refused(413, _too_large(max_body))
        yield chunk


def _too_large(max_body: int) -> str:
    return (f"request body over the limit of {max_body} bytes; send fewer or smaller images "
            f"(the server's --max-body-mb)")


async def read_uploads(request, *, max_body: int, max_images: int) -> list[tuple[str, bytes]]:
    """[(label, bytes)] of the request's images, or Refused (400/408/413/415)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise Refused(400, f"bad Content-Length header '{length[:40]}'")
    if length is not None and int(length) > max_body:  # refused before a byte is read
        raise Refused(413, _too_large(max_body))
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            if kind == "multipart/form-data":
                parser = MultiPartParser(request.headers, _capped_stream(request, max_body),
                                         max_files=max_images, max_fields=16, max_part_size=1 << 14)
                try:
                    form = await parser.parse()
                except MultiPartException as exc:
                    raise Refused(400, f"multipart body refused: {exc.message}") from None
                try:
                    parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
                    uploads = [(f"image {i + 1} ({part.filename!r})" if part.filename else
                                f"image {i + 1}", await part.read()) for i, part in enumerate(parts)]
                finally:
                    await form.close()
                if not uploads:
                    raise Refused(400, "no file in the multipart body; send each image as a file "
                                       "part, e.g. curl -F image=@photo.jpg")
                return uploads
            if kind.startswith("image/") or kind == "application/octet-stream":
                body = bytearray()
                async for chunk in _capped_stream(request, max_body):
                    body += chunk
                return [("body", bytes(body))]
    except TimeoutError:
        raise Refused(408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s") from None
    raise Refused(415, f"Content-Type '{kind or 'none'}' is not accepted; send one image's bytes "
                       f"with Content-Type image/... (or application/octet-stream), or images as "
                       f"the files of a multipart/form-data body")


def make_app(service: Service, *, token: str | None = None, max_body: int = 64 << 20,
             max_images: int = 32, max_queue: int = 8, top_k: int = 3, loopback: bool = True):
    """The Starlette application (run by uvicorn in `command`, in a thread by the tests)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="folderfit-inference")
    admitted = 0  # requests waiting for or holding the inference thread (event loop only)
    expected = token.encode() if token else None

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status, headers)

    def refusal(request) -> JSONResponse | None:
        if loopback:
            host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
            if not is_loopback(host):
                return error(403, f"Host '{host}' refused: this server answers requests to "
                                  f"127.0.0.1 / localhost only")
        if "origin" in request.headers:
            return error(403, "requests from web pages are refused (this server grants no CORS)")
        if expected is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                return error(401, "missing or wrong token: send the header 'Authorization: Bearer "
                                  "<token>'", {"WWW-Authenticate": "Bearer"})
        return None

    def guarded(handler):
        async def endpoint(request):
            problem = refusal(request)
            if problem is not None:
                return problem
            try:
                return await handler(request)
            except Refused as exc:
                return error(exc.status, exc.message, exc.headers)
            except PipelineError as exc:  # non-finite probabilities: the model file is broken
                return error(500, str(exc))
            except Exception as exc:  # logged here, one JSON line to the client
                print(f"serve: {request.method} {request.url.path} failed: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
                return error(500, f"internal error ({type(exc).__name__}); see the server's log")
        return endpoint

    async def health(request):
        return JSONResponse({"status": "ok", "model": service.model})

    async def metadata(request):
        return JSONResponse(service.metadata())

    async def predict(request):
        nonlocal admitted
        raw_k = request.query_params.get("top_k", str(top_k))
        if not raw_k.isdigit() or int(raw_k) < 1:
            raise Refused(400, f"top_k '{raw_k}' must be a whole number >= 1")
        uploads = await read_uploads(request, max_body=max_body, max_images=max_images)
        if admitted >= max_queue:
            raise Refused(503, f"busy: {max_queue} requests are queued for inference; retry "
                               f"shortly", {"Retry-After": "1"})
        admitted += 1
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                executor, service.classify, uploads, int(raw_k))
        finally:
            admitted -= 1
        return JSONResponse(answer)

    async def http_error(request, exc):  # 404, 405: JSON like every other answer
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    routes = [Route("/health", guarded(health), methods=["GET"]),
              Route("/metadata", guarded(metadata), methods=["GET"]),
              Route("/predict", guarded(predict), methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), or a one-line PipelineError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=128)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise PipelineError(f"cannot listen on {host}:{port} ({reason}); choose another --port "
                            f"(0: any free one) or --host") from None


def make_server(app):
    """The uvicorn server of `app` (run it with .run(sockets=[listen(...)])): h11 only, no
    websockets, no proxy headers trusted, no access log."""
    import uvicorn

    config = uvicorn.Config(app, http="h11", ws="none", lifespan="off", log_level="warning",
                            access_log=False, proxy_headers=False, server_header=False,
                            limit_concurrency=CONNECTIONS)
    return uvicorn.Server(config)


def command(args) -> None:
    """`folderfit serve` (arguments: folderfit.cli)."""
    require_stack()
    from PIL import Image

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.max_pixels:
        Image.MAX_IMAGE_PIXELS = args.max_pixels  # what imageio checks every image against
    service = Service(args.model, args.precision, args.device)
    service.warm_up()
    sock = listen(args.host, args.port)
    port = sock.getsockname()[1]
    if not is_loopback(args.host):
        print(f"warning: --host {args.host} serves the model to other machines, over plain HTTP "
              f"(put a TLS proxy in front)"
              + ("" if token else f"; anyone who reaches port {port} can use it: set a token "
                                  f"({TOKEN_ENV} or --token)"), file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serve: {args.model} (sha256 {service.sha256[:12]}, {service.model['architecture']}, "
          f"{len(service.classifier.class_names)} classes, {service.classifier.rt.describe()}) on "
          f"http://{shown}:{port}" + (" with a token" if token else "")
          + "; POST /predict, GET /metadata, GET /health; Ctrl-C stops", file=sys.stderr, flush=True)
    app = make_app(service, token=token, max_body=args.max_body_mb << 20, max_images=args.max_images,
                   max_queue=args.max_queue, top_k=args.top_k, loopback=is_loopback(args.host))
    make_server(app).run(sockets=[sock])
