"""bench/candidates_study.py: its paired bootstrap and its split (the study's numbers rest on both)."""

import numpy as np
from PIL import Image

from bench import candidates_study


def test_paired_bootstrap_brackets_the_difference():
    same = np.array([1, 0, 1, 1, 0] * 20, dtype=bool)
    assert candidates_study.paired_bootstrap(same, same, 500, 0) == (0.0, 0.0)
    better = same.copy()
    better[:10] = True  # 4 of the first 10 were wrong: +0.04
    low, high = candidates_study.paired_bootstrap(better, same, 2000, 0)
    assert 0.0 <= low < 0.04 < high
    assert candidates_study.paired_bootstrap(better, same, 2000, 0) == (low, high)  # seeded


def test_roles_give_every_image_one_role_with_val_per_class(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    names, split = candidates_study.roles(tmp_path, 0.2, 42)
    assert names == ["a", "b"]
    paths = [p for s in split.values() for p, _ in s]
    assert len(paths) == len(set(paths)) == 20
    assert sorted(y for _, y in split["val"]) == [0, 0, 1, 1]
    assert candidates_study.roles(tmp_path, 0.2, 42) == (names, split)
