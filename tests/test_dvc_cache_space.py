"""prepare counts DVC's cache copy of its output: when the stage ends DVC copies data/prepared
into .dvc/cache (unless its cache type links), and a disk with room for prepare's copies but
not for DVC's stopped DVC with a raw `[Errno 28]` and a disk 100% full. With a faked
shutil.disk_usage, prepare (what `dvc repro` runs) now refuses in one line, before the swap."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from pathlib import Path

import pytest
from conftest import write_image_folder, write_params

from folderfit.cli import stage_main
from folderfit.support import fileio
from folderfit.support.fileio import dir_size

SIZE = r"[0-9.]+ (bytes|kB|MB|GB)"
ROOM = 2 * fileio.CACHE_MARGIN  # the margin, the manifest of a few dozen files


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder with a DVC repository's .dvc/ and a small image set."""
    write_image_folder(tmp_path / "images", per_class=8, size=32)
    write_params(tmp_path, **{"data.source": str(tmp_path / "images"), "data.image_size": 32})
    (tmp_path / ".dvc").mkdir()
    return tmp_path


def set_cache(project: Path, **settings) -> None:
    lines = "".join(f"    {key} = {value}\n" for key, value in settings.items())
    (project / ".dvc/config").write_text(f"[cache]\n{lines}")


def prepare(project: Path, capsys) -> tuple[int, list[str]]:
    code = 0
    with contextlib.chdir(project):
        try:
            stage_main("prepare", "", "folderfit.pipeline.prepare:run", argv=[])
        except SystemExit as exc:
            code = exc.code
    return code, capsys.readouterr().err.splitlines()


def fake_disk(monkeypatch, free_at: dict[Path, int], default: int = 10**12) -> None:
    """shutil.disk_usage reporting `free` bytes for paths under each key (the longest wins)."""
    real = shutil.disk_usage

    def disk_usage(path):
        path = Path(path).resolve()
        usage = real(path)
        hits = [root for root in free_at if path.is_relative_to(root.resolve())]
        free = free_at[max(hits, key=lambda p: len(p.parts))] if hits else default
        return usage._replace(free=free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def output_size(project: Path, capsys) -> int:
    """data/prepared's size from an unconstrained run (then removed: no previous output)."""
    assert prepare(project, capsys)[0] == 0
    size = dir_size(project / "data/prepared")
    shutil.rmtree(project / "data")
    return size


def test_room_for_prepares_copies_but_not_dvcs_is_refused(project, capsys, monkeypatch):
    set_cache(project, type="copy")
    size = output_size(project, capsys)
    fake_disk(monkeypatch, {project: size // 2})  # the cache shares the project's disk
    code, err = prepare(project, capsys)  # was: prepare passed, then DVC's [Errno 28]
    assert code == 2 and len(err) == 1, err
    assert re.fullmatch(rf"error: data/prepared: DVC copies this output into its cache "
                        rf"\.dvc/cache when the stage ends: about {SIZE} needed there, "
                        rf"{SIZE} free; free some space there \(or move the cache: dvc cache dir "
                        rf"PATH; or link instead: dvc config cache\.type hardlink,symlink\), "
                        rf"then rerun", err[0]), err[0]
    assert not (project / "data/prepared").exists() and not (project / "data/.prepared.tmp").exists()


def test_the_cache_on_another_disk_is_checked_there(project, capsys, monkeypatch, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("other-disk") / "cache"
    set_cache(project, type="copy", dir=str(elsewhere))
    size = output_size(project, capsys)
    fake_disk(monkeypatch, {elsewhere.parent: size // 2})  # the project's disk: plenty
    code, err = prepare(project, capsys)
    assert code == 2 and f"its cache {elsewhere} when the stage ends" in err[0], err
    fake_disk(monkeypatch, {elsewhere.parent: size + ROOM, project: 1})  # only the cache's disk counts
    assert prepare(project, capsys) == (0, [])


def test_a_rerun_keeps_the_previous_output_when_refused(project, capsys, monkeypatch):
    set_cache(project, type="copy")
    size = output_size(project, capsys)
    assert prepare(project, capsys)[0] == 0
    before = {p: p.read_bytes() for p in (project / "data/prepared").rglob("*") if p.is_file()}
    write_params(project, **{"data.source": str(project / "images"), "data.image_size": 48})
    # the old copies are freed after the swap: only less than output minus them is too little
    fake_disk(monkeypatch, {project: 1000})
    code, err = prepare(project, capsys)
    assert code == 2 and "needed there" in err[0], err
    assert {p: p.read_bytes() for p in (project / "data/prepared").rglob("*") if p.is_file()} == before
    fake_disk(monkeypatch, {project: size + ROOM})
    assert prepare(project, capsys)[0] == 0


def test_files_already_in_the_cache_cost_nothing(project, capsys, monkeypatch):
    set_cache(project, type="copy")
    output_size(project, capsys)
    assert prepare(project, capsys)[0] == 0
    files = [p for p in (project / "data/prepared").rglob("*") if p.is_file()]
    shutil.rmtree(project / "data/prepared")  # no old copies to free: only the cache can help
    just_the_margin = fileio.CACHE_MARGIN + fileio.MANIFEST_PER_FILE * len(files)
    fake_disk(monkeypatch, {project: just_the_margin})
    assert prepare(project, capsys)[0] == 2  # nothing cached yet: refused
    assert not (project / "data/prepared").exists()
    monkeypatch.undo()
    assert prepare(project, capsys)[0] == 0
    for path in (project / "data/prepared").rglob("*"):  # what DVC's commit does (DVC 3 layout)
        if path.is_file():
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            cached = project / ".dvc/cache/files/md5" / digest[:2] / digest[2:]
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, cached)
    shutil.rmtree(project / "data/prepared")
    fake_disk(monkeypatch, {project: just_the_margin})
    assert prepare(project, capsys) == (0, [])


@pytest.mark.parametrize("types,same_disk,copies", [
    ("hardlink", True, False), ("hardlink,copy", False, True), ("symlink", True, False),
    ("symlink", False, True), ("copy", True, True), ("reflink,copy", True, "probe"),
])
def test_cache_types_as_dvc_tries_them(tmp_path, monkeypatch, types, same_disk, copies):
    monkeypatch.setattr(fileio, "same_filesystem", lambda a, b: same_disk)
    reflink_works = fileio.reflinks(tmp_path, tmp_path)  # this machine's file system
    expected = (not reflink_works) if copies == "probe" else copies
    assert fileio.cache_copies(tmp_path, tmp_path / "cache", types.split(",")) is expected


def test_no_dvc_repository_no_check(tmp_path, capsys, monkeypatch):
    write_image_folder(tmp_path / "images", per_class=4, size=32)
    write_params(tmp_path, **{"data.source": str(tmp_path / "images"), "data.image_size": 32})
    monkeypatch.setattr(fileio, "dvc_dir", lambda start=".": None)
    fake_disk(monkeypatch, {tmp_path: 1})
    assert prepare(tmp_path, capsys)[0] == 0
