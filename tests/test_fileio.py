"""Outputs are replaced whole, never left half-written."""

from __future__ import annotations

import pytest

from folderfit.support.fileio import atomic_path, replace_dir, write_json


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def test_replace_dir_swaps_in_the_new_directory(tmp_path):
    target, new = tmp_path / "prepared", tmp_path / ".prepared.tmp"
    (target / "a").mkdir(parents=True)
    (target / "a" / "old.txt").write_text("old")
    (new / "b").mkdir(parents=True)
    (new / "b" / "new.txt").write_text("new")
    replace_dir(new, target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["b", "b/new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
