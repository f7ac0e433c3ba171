"""`folderfit review --serve`: the review page on this machine only, saving each decision
straight into data/corrections.csv.

Security, because a local server is reachable by every program and web page on the machine:
* bound to 127.0.0.1 only (never all interfaces); the Host header must name it (a DNS
  rebinding page gets 403);
* a random token (secrets.token_urlsafe) printed on start: the page needs it as `?token=`,
  the API as the `X-Folderfit-Token` header (a custom header: another site's page cannot send
  it without a CORS preflight, which this server never grants); compared in constant time;
* the only file ever written is the corrections file; a decision's path must be one the
  manifest lists (so no absolute path, no '..', no other file), its action keep / drop /
  relabel:<class of the data>; bodies over MAX_BODY bytes are refused;
* the merged file is validated exactly as prepare reads it (folderfit.artifacts.corrections.read)
  before it replaces the old one (temp file + os.replace): a bad write never lands.
Merging: the existing rows and comments stay; a new decision for a path replaces that path's
row (the later decision wins). `keep` means the image stays in the class the page shows (its
class in data/prepared): its row goes when that is the image's own folder, and otherwise
becomes the relabel to it, so Keep never undoes a relabel that the data already has.
Every read-merge-write holds an flock on data/.corrections.csv.lock, so two servers (or two
tabs on two servers) on one project keep every decision they answer 200 for.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import os
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from folderfit.artifacts import corrections as corrections_file
from folderfit.errors import PipelineError
from folderfit.images import image_folder
from folderfit.paths import PREPARED
from folderfit.results.pages import review_page
from folderfit.results.pages.html import read_manifest
from folderfit.support.fileio import atomic_path, output_error

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_BODY = 1 << 20  # 1 MB: ~10,000 decisions
MAX_CLIENTS = 16  # handler threads at once; more connections wait in the listen queue
LISTEN_QUEUE = 128  # the listen backlog: a burst of a page's requests is queued, not reset
IDLE_TIMEOUT = 30  # seconds a connection may stay silent before its handler lets go
TOKEN_HEADER = "X-Folderfit-Token"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class Corrections:
    """The corrections file, merged and written under a lock held across threads and
    processes: every decision a server answers 200 for is in the file afterwards, even with
    two servers (or a server and an editor's script using this class) on one project."""

    def __init__(self, path: Path, source: Path, manifest: list[dict]):
        self.path, self.source = Path(path), Path(source)
        self.paths = {r["source"] for r in manifest}
        self.classes = sorted({r["class"] for r in manifest})
        self.shown = {r["source"]: r["class"] for r in manifest}  # the class the page shows
        self.given_splits = image_folder.detect_layout(self.source).splits is not None
        self.lock = threading.Lock()

    def check(self, decision) -> tuple[str, str]:
        """(path, action) of one decision, or PipelineError saying why not."""
        if not isinstance(decision, dict) or not isinstance(decision.get("path"), str) \
                or not isinstance(decision.get("action"), str):
            raise PipelineError("each decision must be {\"path\": str, \"action\": str}")
        path, action = decision["path"], decision["action"]
        posix = path.replace("\\", "/")
        if posix.startswith("/") or ".." in posix.split("/"):
            raise PipelineError(f"path '{path}' must be relative to data.source, without '..'")
        if path not in self.paths:
            raise PipelineError(f"path '{path}' is not an image of data/prepared/manifest.csv")
        if action not in ("keep", "drop") and not (
                action.startswith("relabel:") and action.removeprefix("relabel:") in self.classes):
            raise PipelineError(f"action '{action}' for '{path}': use keep, drop or "
                                f"relabel:<class> (one of: {', '.join(self.classes)})")
        return path, action

    def records(self) -> list[tuple[int, str, list | None]]:
        """The file's records as prepare reads them (corrections.records)."""
        if not self.path.is_file():
            return [(1, ",".join(corrections_file.HEADER), list(corrections_file.HEADER))]
        text = corrections_file.decode(self.path.read_bytes(), self.path)
        return corrections_file.records(text, self.path, corrections_file._valid_row(self.source))

    def _key(self, cells: list | None) -> str | None:
        """The manifest path a row decides; None for the header, comments and blanks."""
        if not cells or len(cells) != 2 or cells == corrections_file.HEADER:
            return None
        key = cells[0].replace("\\", "/")
        return key if key in self.paths else None

    def saved(self) -> list[dict]:
        """The decisions the file holds now (rows of manifest paths). The file is only ever
        replaced whole (os.replace), so it is read without the lock."""
        return [{"path": key, "action": cells[1]} for _, _, cells in self.records()
                if (key := self._key(cells))]

    def _row(self, path: str, action: str) -> str | None:
        """The row a decision leaves in the file, None for none. Keep means the image stays in
        the class the page shows (its class in data/prepared): no row when that is its own
        folder's class, else the relabel that gives it that class. So Keep on a relabelled
        image keeps the relabel, and Keep right after a click not yet applied undoes it. A
        relabel to the image's own folder is no fix either: its row goes (undoing a relabel)."""
        own = corrections_file.original_class(path, self.given_splits)
        if action == "keep":
            action = f"relabel:{self.shown[path]}"
        return None if action == f"relabel:{own}" else corrections_file.format_row(path, action)

    @contextlib.contextmanager
    def _locked(self):
        """This server's threads, then every process: an exclusive flock on a lock file beside
        the corrections file (the file itself is replaced on each write, so it cannot hold
        the lock). Released when the descriptor closes, also when a process dies."""
        with self.lock:
            if fcntl is None:  # no flock (Windows): threads of one server only
                yield
                return
            lock_file = self.path.with_name(f".{self.path.name}.lock")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise output_error(exc, lock_file) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def apply(self, decisions: list) -> int:
        """Merge `decisions` into the file; returns the number of rows it then holds. The
        read, merge, check and replace all happen under the lock."""
        checked = dict(self.check(d) for d in decisions)  # the later one for a path wins
        with self._locked():
            records = self.records()
            kept, done = [], set()
            if not any(cells == corrections_file.HEADER for _, _, cells in records):
                kept.append(",".join(corrections_file.HEADER))  # a file of comments only
            for _, raw, cells in records:
                key = self._key(cells)
                if key in checked:
                    if key not in done and (row := self._row(key, checked[key])) is not None:
                        kept.append(row)  # in place of the old row
                    done.add(key)
                else:
                    kept.append(raw)
            kept += [row for p, a in checked.items()
                     if p not in done and (row := self._row(p, a)) is not None]
            text = "\n".join(kept) + "\n"
            with atomic_path(self.path) as tmp:
                tmp.write_text(text, encoding="utf-8")
                try:  # as prepare will read it; an error stops before the swap
                    rows = corrections_file.read(self.source, tmp)
                except PipelineError as exc:
                    raise PipelineError(str(exc).replace(str(tmp), str(self.path))) from None
            return len(rows)


class Server(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CLIENTS at once: the accept loop waits for a free
    slot, and the connections meanwhile wait in a listen queue of LISTEN_QUEUE."""
    request_queue_size = LISTEN_QUEUE
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        self.slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def make_handler(page: bytes, token: str, store: Corrections, port_of):
    class Handler(BaseHTTPRequestHandler):
        server_version = "folderfit"
        sys_version = ""
        timeout = IDLE_TIMEOUT  # a silent client cannot hold a slot for ever

        def log_message(self, fmt, *args):  # quiet: one line per write is printed instead
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data) -> None:
            self._send(code, json.dumps(data).encode("utf-8"))

        def _host_ok(self) -> bool:
            host = self.headers.get("Host", "")
            return host in (f"{HOST}:{port_of()}", f"localhost:{port_of()}")

        def _token_ok(self, given: str | None) -> bool:
            return bool(given) and hmac.compare_digest(given.encode(), token.encode())

        def do_GET(self):
            url = urlsplit(self.path)
            given = parse_qs(url.query).get("token", [None])[0] or self.headers.get(TOKEN_HEADER)
            if not self._host_ok() or not self._token_ok(given):
                return self._json(403, {"error": "forbidden: wrong or missing token"})
            if url.path in ("/", "/index.html"):
                return self._send(200, page, "text/html; charset=utf-8")
            if url.path == "/api/decisions":
                try:
                    return self._json(200, {"decisions": store.saved(), "file": str(store.path)})
                except PipelineError as exc:
                    return self._json(409, {"error": str(exc)})
            return self._json(404, {"error": "not found"})

        def do_POST(self):
            if not self._host_ok() or not self._token_ok(self.headers.get(TOKEN_HEADER)):
                return self._json(403, {"error": "forbidden: wrong or missing token"})
            if urlsplit(self.path).path != "/api/decisions":
                return self._json(404, {"error": "not found"})
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                return self._json(415, {"error": "send application/json"})
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._json(411, {"error": "Content-Length required"})
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                return self._json(413, {"error": f"body over {MAX_BODY} bytes"})
            try:
                raw = self.rfile.read(length)
            except OSError:  # the client went silent (IDLE_TIMEOUT) or away mid-body
                self.close_connection = True
                return None
            try:
                body = json.loads(raw.decode("utf-8"))
                decisions = body["decisions"]
                if not isinstance(decisions, list):
                    raise TypeError
            except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError):
                # RecursionError: a body nested deeper than the parser's stack
                return self._json(400, {"error": "expected JSON {\"decisions\": [{\"path\", \"action\"}]}"})
            try:
                n = store.apply(decisions)
            except PipelineError as exc:
                return self._json(400, {"error": str(exc)})
            print(f"saved {len(decisions)} decision(s): {store.path} has {n} row(s)", flush=True)
            return self._json(200, {"rows": n, "file": str(store.path)})

    return Handler


def make_server(page: bytes, *, store: Corrections, port: int = DEFAULT_PORT,
                token: str | None = None) -> tuple[ThreadingHTTPServer, str]:
    """(server bound to 127.0.0.1:port, token); a port in use is one PipelineError line."""
    token = token or secrets.token_urlsafe(24)
    holder = {}
    handler = make_handler(page, token, store, lambda: holder["port"])
    try:
        server = Server((HOST, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PipelineError(f"port {port} on {HOST} is already in use; choose another with "
                                f"--port N (or --port 0 for any free port)") from None
        raise PipelineError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc})") from None
    holder["port"] = server.server_address[1]
    return server, token


def page_bytes(review_dir: Path, prepared_dir: Path) -> bytes:
    """The review page in serve mode: the stage's index.html when it is newer than the lists
    (no thumbnails to redo), else rendered now."""
    index, issues = Path(review_dir) / "index.html", Path(review_dir) / "label_issues.csv"
    if index.is_file() and issues.is_file() and index.stat().st_mtime >= issues.stat().st_mtime:
        text = index.read_text(encoding="utf-8")
        if review_page.MODE_FILE in text:
            return text.replace(review_page.MODE_FILE, review_page.MODE_SERVE, 1).encode("utf-8")
    html = review_page.render(review_page.collect(review_dir, prepared_dir))
    return html.replace(review_page.MODE_FILE, review_page.MODE_SERVE, 1).encode("utf-8")


def serve(review_dir: Path, prepared_dir: Path, *, source: Path, corrections: Path = corrections_file.CORRECTIONS,
          port: int = DEFAULT_PORT, token: str | None = None, out=sys.stdout) -> None:
    manifest = read_manifest(prepared_dir)
    store = Corrections(corrections, source, manifest)
    store.saved()  # an unreadable corrections file is reported now, not on the first click
    corrections_file.read(source, store.path)
    server, token = make_server(page_bytes(review_dir, prepared_dir), store=store, port=port,
                                token=token)
    url = f"http://{HOST}:{server.server_address[1]}/?token={token}"
    print(f"review page: {url}\n(decisions are saved to {store.path}; Ctrl+C stops; then dvc repro)",
          file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def command(args) -> None:
    """`folderfit review --serve [--port N]` (arguments: folderfit.cli)."""
    from folderfit.params import load_params

    params = load_params()
    serve(Path(args.dir), PREPARED, source=Path(params.data.source), port=args.port)
