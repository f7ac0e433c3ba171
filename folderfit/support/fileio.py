"""Writes that are never half-done (temp file or folder + rename), their errors, and hashes.

Every output is built under a temporary name beside its place and renamed into it only when
complete, so the previous output stays whole until the new one replaces it (dvc.yaml marks the
outputs `persist: true`, so DVC leaves them in place while a stage runs). A write that fails
because the disk is full, the folder is read-only, or a parent is a file becomes one
OutputError line naming the output and, for a full disk, the space needed and the space free.
Temp names carry the writer's process id, so the leftovers of a killed run are recognised
and removed by the next write of the same output.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from folderfit.errors import OutputError, PipelineError

_UMASK = os.umask(0)
os.umask(_UMASK)

# errno values that mean "this output cannot be written here", as opposed to a bug
SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
WRITE_ERRNOS = SPACE_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                               errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG}
TEMP_NAME_CHARS = 80  # of the target's name in a temp name: temp names stay within NAME_MAX


# ------------------------------------------------------------------ error messages
def size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int:
    try:
        return shutil.disk_usage(existing_ancestor(Path(path))).free
    except OSError:
        return 0


def _file_in_the_way(path: Path) -> Path | None:
    """The first ancestor of `path` that exists but is not a folder."""
    for parent in reversed(Path(path).parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def output_error(exc: OSError, path: str | Path, needed: int | None = None) -> OutputError:
    """One line for an output that could not be written: what, why and what to do."""
    path = Path(path)
    code = exc.errno
    if code in SPACE_ERRNOS:
        free = free_bytes(path)
        need = (f"about {size_text(needed)} needed, {size_text(free)} free" if needed
                else f"more than the {size_text(free)} free is needed")
        what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on the device"
        message = f"{path}: {what} ({need}); free some space and rerun"
    elif code == errno.EROFS:
        message = f"{path}: the file system is read-only; write the outputs to a writable folder"
    elif code in (errno.EACCES, errno.EPERM):
        message = (f"{path}: permission denied; make {existing_ancestor(path.parent)} writable "
                   f"for this user")
    elif code in (errno.ENOTDIR, errno.EEXIST) and _file_in_the_way(path):
        blocker = _file_in_the_way(path)
        message = f"{path}: cannot be written because {blocker} is a file, not a folder; move or delete {blocker}"
    elif code == errno.EISDIR:
        message = f"{path}: is a folder; delete it or choose another output path"
    elif code == errno.ENAMETOOLONG:
        message = f"{path}: name too long for the file system; choose a shorter path"
    else:
        message = f"{path}: cannot write ({exc.strerror or exc})"
    error = OutputError(message)
    error.errno = code  # still recognisable as a write error by is_write_error
    error.target = path
    return error


def is_write_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


# ------------------------------------------------------------------ temp names
def _temp_prefix(path: Path) -> str:
    return f".{path.name[:TEMP_NAME_CHARS]}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Delete temp files of `path` left by a writer that no longer runs (e.g. killed -9)."""
    prefix = _temp_prefix(path)
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[^/]*\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


# ------------------------------------------------------------------ files
@contextlib.contextmanager
def atomic_path(path: str | Path, size: int | None = None):
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.
    `size` (bytes to be written, if known) goes into the message of a full disk."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-", suffix=".tmp",
                                   dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if not is_write_error(exc):
            raise
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)  # first: the free space reported is then what is really free
        raise output_error(exc, path, size) from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


class NotRegularFile(OSError):
    """A path that was to be read is a named pipe, a folder, a device or a socket."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path):
    """`path` opened for binary reading, only if it is a regular file (or a link to one):
    opening a named pipe waits for a writer for ever and a device never ends, so anything else
    raises NotRegularFile. Opened without blocking, then checked on the open descriptor, so
    the file cannot be swapped between the check and the read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, f"{_kind(mode)}, not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json_if_present(path: str | Path, rerun: str):
    """A stage's JSON output, or None where it was not written; an unreadable one is a
    one-line error saying to run `rerun` (e.g. "dvc repro train")."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: unreadable ({exc}); rerun `{rerun}`") from None


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def save_torch(obj, path: str | Path) -> None:
    """torch.save, atomically and byte-reproducibly. torch names the zip's root folder after the
    file it writes to, so saving straight into a random temp name makes every file different;
    a buffer gets the fixed root name 'archive'."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ folders
def dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Put the finished directory `new` in place of `target`: the old one is moved aside first
    and deleted last, so at every moment `target` is either the old or the new directory."""
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _inside(path, folder) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def staging_dir_of(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.tmp")


def mirror_files(src: str | Path, dest: str | Path) -> None:
    """Make the files under `dest` those under `src` (small ones: each is read whole), every
    file replaced atomically, so a reader of `dest` never sees one half-written; files under
    `dest` that `src` lacks are deleted. For outputs built in a staging folder that readers
    follow while they grow (train's curves)."""
    src, dest = Path(src), Path(dest)
    wanted = {path.relative_to(src) for path in src.rglob("*") if path.is_file()} if src.is_dir() else set()
    for rel in sorted(wanted):
        data = (src / rel).read_bytes()
        target = dest / rel
        if not target.is_file() or target.read_bytes() != data:
            write_bytes(target, data)
    if dest.is_dir():
        for path in sorted(dest.rglob("*"), reverse=True):  # files before their folders
            rel = path.relative_to(dest)
            if path.is_file() and rel not in wanted:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


@contextlib.contextmanager
def staged_dir(target: str | Path, expected_size=None):
    """Yield an empty temp folder beside `target` (a killed run's leftover is cleared first);
    when the block succeeds it replaces `target` whole (replace_dir). On any failure the temp
    folder is deleted and `target` is untouched. A write error inside becomes one line naming
    `target`; the space needed is `expected_size()` if given, else the size of the previous
    output (a rerun writes about as much), at least what was written before the failure."""
    target = Path(target)
    tmp = staging_dir_of(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        replace_dir(tmp, target)
    except OSError as exc:
        written = dir_size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_write_error(exc) or not _inside(getattr(exc, "target", tmp), tmp):
            raise  # not a write error, or one about another output (already one line)
        needed = max(written, (expected_size() if expected_size else 0) or
                     (dir_size(target) if target.is_dir() else 0))
        raise output_error(exc, target, needed or None) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------ DVC's cache copy
# written beside DVC's cached copies: its .dir manifest (a JSON entry per file) and more
CACHE_MARGIN = 1 << 20
MANIFEST_PER_FILE = 256
DEFAULT_CACHE_TYPES = ["reflink", "copy"]  # DVC's default cache.type


def dvc_dir(start: str | Path = ".") -> Path | None:
    """The .dvc folder of the DVC repository holding `start` (None outside one)."""
    here = Path(os.path.abspath(start))
    return next((folder / ".dvc" for folder in (here, *here.parents) if (folder / ".dvc").is_dir()),
                None)


def dvc_cache_settings(dvc: Path) -> tuple[Path, list[str]]:
    """(cache folder, link types in the order DVC tries them), from DVC's merged config
    (repository, local, global, system), as DVC itself resolves them."""
    try:
        from dvc.config import Config, ConfigError
    except ImportError:
        return dvc / "cache", DEFAULT_CACHE_TYPES
    try:
        cache = Config(dvc_dir=str(dvc))["cache"]
    except ConfigError:  # DVC refuses its own config before any stage runs; its defaults here
        cache = {}
    types = cache.get("type") or DEFAULT_CACHE_TYPES
    if isinstance(types, str):
        types = [kind.strip() for kind in types.split(",")]
    return Path(cache.get("dir") or dvc / "cache"), list(types)


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(existing_ancestor(a)).st_dev == os.stat(existing_ancestor(b)).st_dev


def reflinks(folder: Path, cache: Path) -> bool:
    """Whether a file in `folder` can be reflinked (copy-on-write) into the cache's file system."""
    try:
        from dvc_objects.fs.system import reflink
    except ImportError:
        return False
    src = dst = None
    try:
        fd, src = tempfile.mkstemp(prefix=".reflink-probe-", dir=folder)
        os.write(fd, b"x")
        os.close(fd)
        dst = os.path.join(existing_ancestor(cache), os.path.basename(src))
        reflink(src, dst)
        return True
    except OSError:
        return False
    finally:
        for path in (src, dst):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def cache_copies(folder: Path, cache: Path, types: list[str]) -> bool:
    """Whether DVC copies `folder`'s files into `cache` (bytes on the cache's file system),
    trying its cache types in order as DVC does: a reflink or a hardlink on one file system
    costs nothing, a symlink moves the file (a copy across file systems), copy copies."""
    same = same_filesystem(folder, cache)
    for kind in types:
        if kind == "reflink" and reflinks(folder, cache):
            return False
        if kind == "hardlink" and same:
            return False
        if kind in ("symlink", "copy"):
            return not same if kind == "symlink" else True
    return True


def in_dvc_cache(cache: Path, path: Path) -> bool:
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    return any((where / digest[:2] / digest[2:]).is_file() for where in (cache / "files" / "md5", cache))


def check_dvc_cache_room(new: str | Path, target: str | Path) -> None:
    """Before the finished output folder `new` replaces `target`: when the stage ends, DVC
    copies the output into its cache (unless its cache type links there), and a full disk then
    stops DVC with a raw `[Errno 28]` and leaves that disk full. Refused here in one line,
    naming the cache and the space needed, while the previous output is still whole. Files
    already in the cache cost nothing (hashed only when the whole output would not fit), and
    the old output's own copies, deleted after the swap, count as free on their file system."""
    new, target = Path(new), Path(target)
    dvc = dvc_dir(target.parent)
    if dvc is None:  # not in a DVC repository: nothing caches the output
        return
    cache, types = dvc_cache_settings(dvc)
    files = [p for p in new.rglob("*") if p.is_file() and not p.is_symlink()]
    total = sum(p.stat().st_size for p in files)
    margin = CACHE_MARGIN + MANIFEST_PER_FILE * len(files)
    room = free_bytes(cache)
    if target.is_dir() and same_filesystem(target, cache):
        room += sum(p.stat().st_size for p in target.rglob("*")
                    if p.is_file() and not p.is_symlink() and p.stat().st_nlink == 1)
    if total + margin <= room or not cache_copies(new, cache, types):
        return
    need = sum(p.stat().st_size for p in files if not in_dvc_cache(cache, p)) + margin
    if need <= room:
        return
    shown = os.path.relpath(cache) if _inside(cache, ".") else cache
    raise OutputError(
        f"{target}: DVC copies this output into its cache {shown} when the stage ends: about "
        f"{size_text(need)} needed there, {size_text(free_bytes(cache))} free; free some space "
        f"there (or move the cache: dvc cache dir PATH; or link instead: dvc config cache.type "
        f"hardlink,symlink), then rerun")
