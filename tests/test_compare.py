"""`folderfit compare`: two evaluations of the same images, paired by path: which images
flipped, the accuracy difference with its paired-bootstrap interval, McNemar's exact p and
the verdict; refusals for different splits or test sets; and the CI report's section."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from folderfit import cli
from folderfit.errors import PipelineError
from folderfit.results import comparison

CLASSES = ("cat", "dog", "fox")


def write_eval(folder: Path, truth: dict, predicted: dict, split: str | None = "test") -> Path:
    """A metrics/eval-like folder: predictions.csv (evaluate's columns) and summary.json."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "prepared_file", "true", "predicted", "confidence", "correct", "top_k"])
        for path, true in truth.items():
            out.writerow([path, f"data/prepared/test/{path}", true, predicted[path], "0.9",
                          int(true == predicted[path]), ""])
    if split is not None:
        (folder / "summary.json").write_text(json.dumps({"split": split, "n_images": len(truth)}))
    return folder


def wrong(label: str) -> str:
    return CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]


def pair(tmp_path, n=200, base_right=150, up=(), down=(), split_a="test", split_b="test"):
    """A and B on the same n images: A right on the first `base_right`; B as A except the
    indices in `up` (wrong in A, right in B) and `down` (right in A, wrong in B)."""
    paths = [f"{CLASSES[i % 3]}/img{i:04d}.jpg" for i in range(n)]
    truth = {p: CLASSES[i % 3] for i, p in enumerate(paths)}
    a = {p: truth[p] if i < base_right else wrong(truth[p]) for i, p in enumerate(paths)}
    b = dict(a)
    for i in up:
        assert i >= base_right
        b[paths[i]] = truth[paths[i]]
    for i in down:
        assert i < base_right
        b[paths[i]] = wrong(truth[paths[i]])
    return (write_eval(tmp_path / "a", truth, a, split_a), write_eval(tmp_path / "b", truth, b, split_b),
            paths)


def compare_dirs(a: Path, b: Path, **kw) -> dict:
    return comparison.compare(comparison.read_path(a, "A"), comparison.read_path(b, "B"), **kw)


def test_a_clear_improvement_is_real_and_lists_the_flipped_images(tmp_path):
    a, b, paths = pair(tmp_path, up=range(150, 170), down=(3, 7))
    r = compare_dirs(a, b)
    assert (r["n_wrong_to_right"], r["n_right_to_wrong"]) == (20, 2)
    assert r["verdict"] == "b_better"
    assert r["mcnemar_p"] == pytest.approx(binomtest(20, 22, 0.5).pvalue)
    assert r["difference"] == pytest.approx(18 / 200)
    assert 0 < r["difference_ci95_low"] < 18 / 200 < r["difference_ci95_high"]
    assert (r["accuracy_a"], r["accuracy_b"]) == (pytest.approx(0.75), pytest.approx(0.84))
    assert {f["path"] for f in r["wrong_to_right"]} == set(paths[150:170])
    assert [f["path"] for f in r["right_to_wrong"]] == sorted([paths[3], paths[7]])
    flip = next(f for f in r["right_to_wrong"] if f["path"] == paths[3])
    assert flip == {"path": paths[3], "true": "cat", "a_predicted": "cat", "b_predicted": "dog"}
    assert r["sentence"].startswith("B (B) is better than A (A) by 9.0 points on 200 shared test images")
    assert "20 wrong->right vs 2 right->wrong" in r["sentence"]


def test_the_same_change_the_other_way_is_b_worse(tmp_path):
    a, b, _ = pair(tmp_path, up=range(150, 170), down=(3, 7))
    r = compare_dirs(b, a)
    assert r["verdict"] == "a_better" and r["difference_ci95_high"] < 0
    assert r["sentence"].startswith("B (B) is worse than A (A) by 9.0 points")


def test_a_few_flips_both_ways_are_no_detectable_difference(tmp_path):
    a, b, _ = pair(tmp_path, up=range(150, 155), down=range(0, 4))
    r = compare_dirs(a, b)
    assert r["verdict"] == "no_difference"
    assert r["mcnemar_p"] > 0.5 and r["difference_ci95_low"] < 0 < r["difference_ci95_high"]
    assert r["sentence"].startswith("no detectable difference between A (A) and B (B) on 200 shared test images")
    assert "5 wrong->right vs 4 right->wrong" in r["sentence"]


def test_identical_runs_have_no_difference_and_no_flips(tmp_path):
    a, _, _ = pair(tmp_path)
    r = compare_dirs(a, a)
    assert r["verdict"] == "no_difference"
    assert r["wrong_to_right"] == r["right_to_wrong"] == []
    assert r["mcnemar_p"] == 1.0 and r["difference"] == 0
    assert (r["difference_ci95_low"], r["difference_ci95_high"]) == (0.0, 0.0)
    assert "(0 flipped)" in r["sentence"]


def test_a_small_lopsided_set_is_not_called_real_on_too_few_flips(tmp_path):
    """4 flips all one way: McNemar p = 0.125, so no verdict, though every flip helped B."""
    a, b, _ = pair(tmp_path, n=40, base_right=30, up=range(30, 34))
    r = compare_dirs(a, b)
    assert r["mcnemar_p"] == pytest.approx(0.125)
    assert r["verdict"] == "no_difference"


def test_different_splits_are_refused(tmp_path):
    a, b, _ = pair(tmp_path, split_b="val_holdout")
    with pytest.raises(PipelineError, match="test split and B .* val_holdout split"):
        compare_dirs(a, b)


def test_partly_overlapping_sets_compare_on_the_shared_images(tmp_path):
    _, _, paths = pair(tmp_path / "x")
    truth = {p: CLASSES[i % 3] for i, p in enumerate(paths)}
    a = write_eval(tmp_path / "a", truth, truth)  # all right
    fewer = {p: truth[p] for p in paths[:196]}  # B dropped 4 images (a correction, say)
    b = write_eval(tmp_path / "b", fewer, {**fewer, paths[0]: wrong(truth[paths[0]])})
    r = compare_dirs(a, b)
    assert (r["n_shared"], r["n_only_in_a"], r["n_only_in_b"], r["n_compared"]) == (196, 4, 0, 196)
    assert [f["path"] for f in r["right_to_wrong"]] == [paths[0]]
    half = write_eval(tmp_path / "half", {p: truth[p] for p in paths[:100]}, truth)
    with pytest.raises(PipelineError, match="share only 100 scored images"):
        compare_dirs(a, half)
    assert compare_dirs(a, half, min_shared=0.5)["n_compared"] == 100


def test_a_shared_image_whose_label_changed_is_left_out_and_counted(tmp_path):
    _, _, paths = pair(tmp_path / "x")
    truth = {p: CLASSES[i % 3] for i, p in enumerate(paths)}
    fixed = {**truth, paths[5]: wrong(truth[paths[5]])}
    r = compare_dirs(write_eval(tmp_path / "a", truth, truth), write_eval(tmp_path / "b", fixed, truth))
    assert r["label_differs"] == [paths[5]]
    assert r["n_compared"] == 199 and r["wrong_to_right"] == r["right_to_wrong"] == []


def test_the_multinomial_bootstrap_is_the_paired_image_bootstrap():
    """Counting -1/0/+1 draws is the same distribution as resampling image indices."""
    n, up, down = 300, 25, 10
    d = np.array([1] * up + [-1] * down + [0] * (n - up - down))
    rng = np.random.default_rng(1)
    naive = d[rng.integers(0, n, size=(20_000, n))].mean(1)
    expected = np.percentile(naive, [2.5, 97.5])
    low, high = comparison.paired_bootstrap_ci(up, down, n, resamples=20_000, seed=5)
    assert low == pytest.approx(expected[0], abs=0.004) and high == pytest.approx(expected[1], abs=0.004)
    assert comparison.paired_bootstrap_ci(up, down, n) == comparison.paired_bootstrap_ci(up, down, n)


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("file,label\nx,y\n")
    with pytest.raises(PipelineError, match="missing column"):
        comparison.read_path(tmp_path / "bad.csv", "A")
    with pytest.raises(PipelineError, match="not found"):
        comparison.read_path(tmp_path / "nothing", "A")
    (tmp_path / "twice.csv").write_text("path,true,predicted\nx,a,a\nx,a,b\n")
    with pytest.raises(PipelineError, match="listed twice"):
        comparison.read_path(tmp_path / "twice.csv", "A")


def run_cli(capsys, *argv):
    try:
        cli.main(["compare", *argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_command_prints_text_and_json(tmp_path, capsys):
    a, b, paths = pair(tmp_path, up=range(150, 170), down=(3, 7))
    code, out, _ = run_cli(capsys, "--a", str(a), "--b", str(b), "--show", "5")
    assert code == 0
    assert f"A: {a} ({a / 'predictions.csv'}): test, 200 images" in out
    assert "accuracy on them: A 0.7500, B 0.8400" in out
    assert "is better than" in out
    assert "wrong in A, right in B (20)" in out and "... and 15 more" in out
    assert f"  {paths[3]}  cat  A:cat  B:dog" in out
    code, out, _ = run_cli(capsys, "--a", str(a), "--b", str(b / "predictions.csv"), "--json")
    result = json.loads(out)
    assert code == 0 and result["verdict"] == "b_better" and len(result["wrong_to_right"]) == 20


def test_the_command_refuses_with_one_line(tmp_path, capsys):
    a, b, _ = pair(tmp_path, split_b="cv")
    code, out, err = run_cli(capsys, "--a", str(a), "--b", str(b))
    assert code == 2 and out == ""
    assert err.startswith("error: A (") and err.count("\n") == 1
    code, _, err = run_cli(capsys, "--a", str(a))  # B: the workspace's metrics/eval
    assert code == 2 and "metrics/eval/predictions.csv: not found" in err
    code, _, err = run_cli(capsys, "main", "--a", str(a), "--b", str(b))
    assert code == 2 and "one side too many" in err


# ------------------------------------------------------------------ real revisions
STAGE = """\
import json, pathlib, shutil, yaml
which = yaml.safe_load(open("params.yaml"))["which"]
out = pathlib.Path("metrics/eval")
out.mkdir(parents=True, exist_ok=True)
shutil.copy(f"runs/{which}/predictions.csv", out / "predictions.csv")
shutil.copy(f"runs/{which}/summary.json", out / "summary.json")
"""


@pytest.mark.slow
def test_revisions_workspace_and_experiments_through_dvc(tmp_path, monkeypatch, capsys):
    """A commit, a `dvc exp` name and the workspace, read from the DVC cache of a real git +
    DVC repository; a base without evaluate outputs is one line in the CI report."""
    from conftest import run

    repo = tmp_path / "repo"
    repo.mkdir()
    pair(repo / "runs", up=range(150, 175), down=(1,))  # runs/a, runs/b
    (repo / "runs" / "a").rename(repo / "runs" / "base")
    (repo / "runs" / "b").rename(repo / "runs" / "better")
    (repo / "make.py").write_text(STAGE)
    (repo / "params.yaml").write_text("which: base\n")
    (repo / "dvc.yaml").write_text("stages:\n  evaluate:\n    cmd: python make.py\n    deps: [make.py, runs]\n"
                                   "    params: [which]\n    outs: [metrics/eval]\n")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                ["git", "config", "user.name", "t"], ["git", "commit", "-q", "--allow-empty", "-m", "empty"],
                ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"], ["dvc", "repro", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "base"],
                ["dvc", "exp", "run", "-q", "-n", "better", "-S", "which=better"]):
        run(cmd, repo)
    monkeypatch.chdir(repo)
    code, out, err = run_cli(capsys, "HEAD", "better", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["n_wrong_to_right"], result["n_right_to_wrong"], result["verdict"]) == (25, 1, "b_better")
    assert result["a"]["from"] == "metrics/eval/predictions.csv at HEAD"
    code, out, err = run_cli(capsys, "HEAD", "--json")  # B: the workspace, where the exp left its outputs
    assert code == 0 and json.loads(out)["n_wrong_to_right"] == 25
    code, _, err = run_cli(capsys, "HEAD~1")
    assert code == 2 and "metrics/eval/predictions.csv at HEAD~1: not found" in err
    code, _, err = run_cli(capsys, "no-such-rev")
    assert code == 2 and "no-such-rev: not a revision here" in err

    from folderfit.commands import ci_report

    assert ci_report.verdict("HEAD").startswith("B (this commit) is better than A (HEAD) by 12.0 points")
    assert ci_report.verdict("HEAD~1").startswith("Not compared: metrics/eval/predictions.csv at HEAD~1")
