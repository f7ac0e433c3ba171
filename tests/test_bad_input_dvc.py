"""Bad input under `dvc repro` / `dvc exp run` itself: what the user sees, and that no failure
loses the previous outputs (DVC deletes a stage's outputs before running it unless they are
`persist: true`; the stages then swap their outputs in only when complete).

One pipeline run (the baseline, on 3 classes of real digit scans in data/raw) is copied for
every case; each case changes one thing, runs DVC and compares every output file's md5."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ENV, make_repo, run, write_image_folder

pytestmark = pytest.mark.slow  # dvc runs in temp repositories

OUTPUT_FOLDERS = ("data/demo", "data/prepared", "metrics", "models")


def snapshot(repo: Path) -> dict[str, str]:
    """md5 of every file of every stage output (data/demo, data/prepared, metrics/, models/)."""
    out = {}
    for folder in OUTPUT_FOLDERS:
        for path in sorted((repo / folder).rglob("*")):
            if path.is_file():
                out[path.relative_to(repo).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def leftovers(repo: Path) -> list[str]:
    """Temp files or folders of a write (.NAME.tmp, .NAME.PID-x.tmp, .NAME.old)."""
    return sorted(p.relative_to(repo).as_posix() for folder in ("data", "metrics", "models")
                  for p in (repo / folder).rglob(".*") if p.name.endswith((".tmp", ".old")))


def edit_params(repo: Path, **dotted) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in dotted.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["dvc", *args], repo, check=False)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def ran(result: subprocess.CompletedProcess) -> list[str]:
    return [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A committed repository whose pipeline ran on data/raw; (repo, snapshot of its outputs)."""
    repo = make_repo(tmp_path_factory.mktemp("baseline") / "repo", {"data": {"source": "data/raw"}})
    write_image_folder(repo / "data/raw", per_class=6, classes=(0, 1, 2), size=32)
    with open(repo / "data/.gitignore", "a") as fh:
        fh.write("/raw\n")  # the images stay out of git (a user would `dvc add` them)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline results"], repo)
    return repo, snapshot(repo)


@pytest.fixture
def repo(baseline, tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(baseline[0], copy, symlinks=True)
    return copy


def assert_nothing_lost(repo: Path, baseline) -> None:
    assert snapshot(repo) == baseline[1]
    assert leftovers(repo) == []


# ------------------------------------------------------------------ a failing stage keeps outputs
def test_failing_prepare_keeps_every_previous_output(repo, baseline):
    for digit in (1, 2):
        shutil.rmtree(repo / f"data/raw/digit{digit}")
    result = dvc(repo, "repro")
    assert result.returncode != 0 and ran(result) == ["preflight", "prepare"]
    assert error_lines(result) == [
        "error: data.source data/raw: 1 class folder(s) with images (digit0); a classifier needs at "
        "least 2 (one sub-folder of images per class)"]
    assert_nothing_lost(repo, baseline)
    shutil.rmtree(repo / "data/raw")  # the images back as they were: nothing is out of date
    shutil.copytree(baseline[0] / "data/raw", repo / "data/raw")
    # preflight always runs (it records the library's digest); nothing else is out of date
    assert json.loads(dvc(repo, "status", "--json").stdout) == {"preflight": ["always changed"]}


def test_failing_review_and_train_keep_every_previous_output(repo, baseline):
    edit_params(repo, weights="/nonexistent/weights.pt")
    missing = ("error: params.yaml: 'weights' file /nonexistent/weights.pt does not exist; give a "
               "state-dict file path, default or none")
    result = dvc(repo, "repro")  # review is the first stage that builds the backbone
    assert result.returncode != 0 and ran(result) == ["preflight", "review"]
    assert error_lines(result) == [missing]
    assert_nothing_lost(repo, baseline)
    result = dvc(repo, "repro", "train")  # train alone: its own failure
    assert result.returncode != 0 and ran(result)[-1:] == ["train"]
    assert error_lines(result) == [missing]
    assert_nothing_lost(repo, baseline)


def test_source_deleted_after_a_run_stops_dvc_and_keeps_outputs(repo, baseline):
    shutil.rmtree(repo / "data/raw")
    result = dvc(repo, "repro")  # preflight runs first and names the missing folder
    assert result.returncode != 0 and ran(result) == ["preflight"]
    assert "data.source" in result.stderr and "data/raw" in result.stderr
    assert_nothing_lost(repo, baseline)


# ------------------------------------------------------------------ preflight: params.yaml
def test_missing_source_is_named_before_any_stage_works(repo, baseline):
    edit_params(repo, **{"data.source": "data/nowhere"})
    result = dvc(repo, "repro")
    assert result.returncode != 0 and ran(result) == ["preflight"]
    assert error_lines(result) == [
        "error: data.source data/nowhere: does not exist; point data.source in params.yaml at an "
        "ImageFolder directory (one folder per class)"]
    assert_nothing_lost(repo, baseline)


@pytest.mark.parametrize("how", ["dvc exp run -S +key", "hand edit"])
def test_unknown_key_stops_at_preflight(repo, baseline, how):
    if how == "hand edit":
        edit_params(repo, num_epoch=3)
        result = dvc(repo, "repro")
    else:
        result = dvc(repo, "exp", "run", "-S", "+num_epoch=3")
    assert result.returncode != 0 and ran(result) == ["preflight"]
    assert len(error_lines(result)) == 1
    assert error_lines(result)[0].startswith(
        "error: params.yaml: unknown key 'num_epoch' (did you mean 'num_epochs'?); known keys here:")
    assert_nothing_lost(repo, baseline)


@pytest.mark.parametrize("how", ["dvc exp run -S", "hand edit"])
def test_out_of_range_seed_stops_at_preflight(repo, baseline, how):
    if how == "hand edit":
        edit_params(repo, seed=-1)
        result = dvc(repo, "repro")
    else:
        result = dvc(repo, "exp", "run", "-S", "seed=-1")
    assert result.returncode != 0 and ran(result) == ["preflight"]
    assert error_lines(result) == ["error: params.yaml: 'seed' must be in 0..4294967295, got -1"]
    assert_nothing_lost(repo, baseline)


def test_tilde_in_data_source_is_refused_with_the_fix(repo, baseline):
    edit_params(repo, **{"data.source": "~/photos"})
    result = dvc(repo, "repro")
    assert ran(result) == ["preflight"]
    assert error_lines(result) == [
        f"error: params.yaml: 'data.source' is '~/photos', but DVC does not expand '~' in paths; "
        f"write the full path: data.source: {os.path.expanduser('~/photos')}"]
    assert_nothing_lost(repo, baseline)


def test_valid_edit_reruns_only_the_stages_it_touches(repo, baseline):
    result = dvc(repo, "exp", "run", "-S", "evaluate.bootstrap=300")
    assert result.returncode == 0, result.stderr
    assert ran(result) == ["preflight", "evaluate"]  # preflight's output did not change


def test_cpu_engine_through_dvc_exp_run(repo, baseline):
    """A wrong engine stops at preflight; `torch` reruns the stages whose features it computes
    (new cache keys) and is recorded with the model's details."""
    wrong = dvc(repo, "exp", "run", "-S", "cpu_engine=onnx")
    assert wrong.returncode != 0 and ran(wrong) == ["preflight"]
    assert error_lines(wrong) == ["error: params.yaml: 'cpu_engine' is 'onnx'; choose one of: "
                                  "auto, onnxruntime, openvino, torch"]
    assert_nothing_lost(repo, baseline)
    result = dvc(repo, "exp", "run", "-S", "cpu_engine=torch")
    assert result.returncode == 0, result.stderr
    assert {"review", "train"} <= set(ran(result)) and "prepare" not in ran(result)
    # torch, in fp32 or (where the CPU has it natively and it measured faster) bf16
    assert re.search(r"computed \(torch-(fp32|bf16)\)", result.stdout), result.stdout
    details = yaml.safe_load((repo / "metrics/train/details.json").read_text())
    assert details["feature_engine"] in ("torch-fp32", "torch-bf16")


def test_scientific_notation_typed_by_hand_runs(repo, baseline):
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("lr: 0.001", "lr: 3e-3"))
    assert "lr: 3e-3" in (repo / "params.yaml").read_text()
    result = dvc(repo, "repro")
    assert result.returncode == 0, result.stderr
    assert ran(result)[:2] == ["preflight", "train"]
    assert json.loads(dvc(repo, "status", "--json").stdout) == {"preflight": ["always changed"]}


# ------------------------------------------------------------------ names DVC cannot track
def add_bad_name(folder: Path, kind: str) -> None:
    if kind == "not UTF-8":
        shutil.copy(folder / "digit0/img001.png", os.path.join(os.fsencode(folder), b"digit0/caf\xe9.png"))
    else:
        os.symlink("gone.png", folder / "digit0/broken.png")


@pytest.mark.parametrize("kind,message", [
    ("not UTF-8", "error: data.source data/raw2: names that are not valid UTF-8 "
                  "(digit0/caf\\xe9.png); DVC cannot track them, so `dvc repro` would stop at "
                  "prepare: rename them, e.g. convmv -r -f latin1 -t utf-8 --notest data/raw2"),
    ("broken link", "error: data.source data/raw2: broken symbolic links (digit0/broken.png); DVC "
                    "cannot hash data.source while they are there: delete them or restore what "
                    "they point to"),
])
def test_new_source_with_a_name_dvc_cannot_track_is_named_first(repo, baseline, kind, message):
    shutil.copytree(repo / "data/raw", repo / "data/raw2")
    add_bad_name(repo / "data/raw2", kind)
    edit_params(repo, **{"data.source": "data/raw2"})
    result = dvc(repo, "repro")
    assert ran(result) == ["preflight"]
    assert error_lines(result) == [message]
    assert_nothing_lost(repo, baseline)


@pytest.mark.parametrize("kind,dvc_says,preflight_says", [
    ("not UTF-8", "ERROR: failed to reproduce 'prepare': 'utf-8' codec can't encode character "
                  "'\\udce9'", "names that are not valid UTF-8 (digit0/caf\\xe9.png)"),
    ("broken link", "ERROR: failed to reproduce 'prepare': [Errno 2] No such file or directory: ",
     "broken symbolic links (digit0/broken.png)"),
])
def test_name_dvc_cannot_track_added_to_the_source_in_use(repo, baseline, kind, dvc_says,
                                                          preflight_says):
    """preflight always runs first, so it names the bad file before DVC hashes data.source
    (DVC's own message for a name that is not UTF-8 would not say which), and nothing is lost."""
    add_bad_name(repo / "data/raw", kind)
    result = dvc(repo, "repro")
    assert result.returncode != 0 and ran(result) == ["preflight"]
    assert preflight_says in result.stderr
    assert_nothing_lost(repo, baseline)
    by_hand = run(["python", "-m", "stages.preflight"], repo, check=False)
    assert by_hand.returncode == 2 and preflight_says in by_hand.stderr


# ------------------------------------------------------------------ full disk, read-only folder
@pytest.fixture(scope="module")
def can_mount(tmp_path_factory):
    probe = tmp_path_factory.mktemp("probe")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t",
                             "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("a small full disk needs `unshare -rm` (user + mount namespaces): "
                    + result.stderr.decode(errors="replace").strip())


def tmpfs_kb(folder: Path, margin_kb: int) -> int:
    """Size of a tmpfs holding `folder`'s files (tmpfs counts whole 4 KiB pages) plus margin."""
    pages = sum(math.ceil(p.stat().st_size / 4096) for p in folder.rglob("*") if p.is_file())
    return pages * 4 + margin_kb


FULL = {  # output folder, params change that reruns the stage writing there, free space left
    "models (train)": ("models", {"lr": 0.002}, 1024),
    "data (prepare)": ("data", {"data.image_size": 48}, 16),
    "metrics (evaluate)": ("metrics", {"evaluate.bootstrap": 300}, 16),
}
SIZE = r"[0-9.]+ (bytes|kB|MB|GB)"
EXPECTED = {
    "models (train)": rf"error: models/model\.pt: no space left on the device \(about {SIZE} "
                      rf"needed, {SIZE} free\); free some space and rerun",
    "data (prepare)": rf"error: data/prepared: no space left on the device \(about {SIZE} "
                      rf"needed, {SIZE} free\); free some space and rerun",
    "metrics (evaluate)": rf"error: metrics/eval: no space left on the device \(about {SIZE} "
                          rf"needed, {SIZE} free\); free some space and rerun",
}


def on_small_disk(repo: Path, work: Path, folder: str, margin_kb: int | None, steps: str) -> None:
    """Run the shell `steps` in `repo` while `folder` is a tmpfs holding its current files and
    `margin_kb` free (None: mounted read-only); `$W` is `work`, outside the tmpfs. The tmpfs
    lives in a private mount namespace and is gone when the steps end."""
    size_kb = tmpfs_kb(repo / folder, margin_kb or 1024)
    readonly = f"mount -o remount,ro {folder}" if margin_kb is None else "true"
    script = f"""
        set -u
        W={work}
        cp -a {folder} $W/before
        mount -t tmpfs -o size={size_kb}k tmpfs {folder}
        cp -a $W/before/. {folder}/
        {readonly}
        {steps}
    """
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
                          cwd=repo, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr


MD5_ALL = "(find data metrics models -type f -exec md5sum {} + | sort)"
LEFTOVERS = "(find data metrics models -name '.*.tmp' -o -name '.*.old' | sort)"


@pytest.mark.parametrize("case", list(FULL))
def test_full_output_folder_is_one_line_and_keeps_outputs(repo, baseline, can_mount, tmp_path, case):
    """The output folder is full: `dvc repro` fails with one line naming it with the space
    needed and free, and keeps every previous output; with space again, the next `dvc repro`
    succeeds and leaves no temp files."""
    import re

    folder, change, margin_kb = FULL[case]
    edit_params(repo, **change)
    before = subprocess.run(MD5_ALL, shell=True, cwd=repo, capture_output=True, text=True).stdout
    on_small_disk(repo, tmp_path, folder, margin_kb, f"""
        dvc repro >$W/run1.out 2>$W/run1.err; echo $? >$W/run1.rc
        {MD5_ALL} >$W/after1.md5
        mount -o remount,size=1g {folder}
        dvc repro >$W/run2.out 2>$W/run2.err; echo $? >$W/run2.rc
        {LEFTOVERS} >$W/leftovers
    """)
    first_err = (tmp_path / "run1.err").read_text()
    assert (tmp_path / "run1.rc").read_text().strip() != "0"
    errors = [line for line in first_err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.fullmatch(EXPECTED[case], errors[0]), first_err
    assert "Traceback" not in first_err
    assert (tmp_path / "after1.md5").read_text() == before  # every previous output, byte for byte
    assert (tmp_path / "run2.rc").read_text().strip() == "0", (tmp_path / "run2.err").read_text()
    assert (tmp_path / "leftovers").read_text() == ""


def test_read_only_output_folder(repo, baseline, can_mount, tmp_path):
    """DVC itself stops first: it makes the persisted outputs writable before running the
    stage (chmod), which a read-only file system refuses. Run alone, the stage says it in one
    line. Either way nothing is lost."""
    edit_params(repo, **{"evaluate.bootstrap": 300})
    before = subprocess.run(MD5_ALL, shell=True, cwd=repo, capture_output=True, text=True).stdout
    on_small_disk(repo, tmp_path, "metrics", None, f"""
        dvc repro >$W/dvc.out 2>$W/dvc.err
        python -m stages.evaluate >$W/stage.out 2>$W/stage.err; echo $? >$W/stage.rc
        {MD5_ALL} >$W/after.md5
    """)
    assert "ERROR: failed to reproduce 'evaluate': [Errno 30] Read-only file system: " in (
        tmp_path / "dvc.err").read_text()
    assert (tmp_path / "stage.rc").read_text().strip() == "2"
    assert (tmp_path / "stage.err").read_text().strip().splitlines() == [
        "error: metrics/eval: the file system is read-only; write the outputs to a writable folder"]
    assert (tmp_path / "after.md5").read_text() == before
