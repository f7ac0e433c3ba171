"""Reproducibility check: rerun the whole pipeline twice and compare every output in dvc.lock.

    folderfit repro-check [--set KEY=VALUE ...] [--runs N] [--keep]

It works in a temporary copy of the repository (the files git sees: code, params.yaml,
dvc.yaml, dvc.lock, *.dvc), so your workspace, dvc.lock and cache are never touched, and
`--set` can shrink the configuration (e.g. `--set num_epochs=2 --set data.image_size=32`)
without editing params.yaml. Each run is `dvc repro --force --no-run-cache`: every stage
really executes (DVC's run-cache would otherwise restore outputs of an identical earlier run
and the check would prove nothing).

Exit codes: 0 identical, 1 some output differs (named, with the files inside a directory
output that differ), 2 the check could not run (bad --set, a failing stage, no git).

One output is exempt: metrics/timing.json holds wall-clock time. It exists so that time is
kept out of every other output, which must then be byte-identical.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from folderfit.errors import PipelineError
from folderfit.params import dump_yaml, parse_params, read_yaml

EXEMPT = {"metrics/timing.json": "wall-clock time, different on every run by design"}
CHECKPOINT_DIR = "checkpoints"  # resume state of train; must not carry over between runs


# ------------------------------------------------------------------ the temporary copy
def git_visible_files(repo: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a fresh clone plus your edits holds."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                             check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise PipelineError(f"{repo}: not a git repository (or git is missing); the check copies "
                            f"the files git sees, run it from the repository root") from None
    return [f for f in out.decode().split("\0") if f and (repo / f).is_file()]


def stage_outputs(dvc_yaml: dict) -> set[str]:
    outs = set()
    for stage in (dvc_yaml.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                outs.add(str(next(iter(entry))) if isinstance(entry, dict) else str(entry))
    return outs


def set_key(raw: dict, dotted: str, value) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PipelineError(f"--set {dotted}: '{part}' is not a group of keys in params.yaml")
    node[last] = value


def apply_overrides(params_file: Path, overrides: list[str], repo: Path) -> dict:
    """Write `--set KEY=VALUE` into the copy's params.yaml (validated like any params.yaml).
    A relative data.source that is not a pipeline output points back at the original repo."""
    raw = read_yaml(params_file.read_text(encoding="utf-8"), params_file) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--set {item}: expected KEY=VALUE, e.g. --set num_epochs=2")
        set_key(raw, key.strip(), read_yaml(value, f"--set {item}") if value.strip() else "")
    params = parse_params(raw)
    source = Path(params.data.source).expanduser()
    dvc_yaml = read_yaml((params_file.parent / "dvc.yaml").read_text(encoding="utf-8"), "dvc.yaml") or {}
    produced = {Path(o) for o in stage_outputs(dvc_yaml)}
    if not source.is_absolute() and source not in produced and not (params_file.parent / source).exists():
        raw.setdefault("data", {})["source"] = str((repo / source).resolve())
    params_file.write_text(dump_yaml(raw), encoding="utf-8")
    return raw


def make_copy(repo: Path, workdir: Path, overrides: list[str]) -> Path:
    copy = workdir / "repo"
    for rel in git_visible_files(repo):
        target = copy / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)
    if not (copy / "dvc.yaml").is_file() or not (copy / "params.yaml").is_file():
        raise PipelineError(f"{repo}: no dvc.yaml/params.yaml known to git; run the check from "
                            f"the repository root")
    apply_overrides(copy / "params.yaml", overrides, repo)
    # A commit, because dvclive (train's curves) refuses a git repository without one.
    git = ["git", "-c", "user.name=repro-check", "-c", "user.email=repro-check@localhost",
           "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "repro-check copy"]):
        subprocess.run(git + cmd, cwd=copy, check=True, capture_output=True)
    return copy


# ------------------------------------------------------------------ running and comparing
def dvc(args: list[str], cwd: Path, log) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, stdout=log,
                          stderr=subprocess.STDOUT, text=True)


def locked_outputs(copy: Path) -> dict[str, tuple[str, str]]:
    """{output path: (stage, md5)} for every output recorded in dvc.lock."""
    lock = read_yaml((copy / "dvc.lock").read_text(encoding="utf-8"), "dvc.lock") or {}
    found = {}
    for stage, entry in (lock.get("stages") or {}).items():
        for out in entry.get("outs") or []:
            found[out["path"]] = (stage, out.get("md5") or out.get("hash", ""))
    return found


def file_hashes(root: Path) -> dict[str, str]:
    """md5 of each file under a directory output (to name the files that differ)."""
    if root.is_file():
        return {"": hashlib.md5(root.read_bytes()).hexdigest()}
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_run(copy: Path, index: int, runs: int, log_path: Path) -> tuple[dict, dict]:
    shutil.rmtree(copy / CHECKPOINT_DIR, ignore_errors=True)
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        result = dvc(["repro", "--force", "--no-run-cache"], copy, log)
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
    if result.returncode != 0:
        sys.stderr.write("\n".join(f"  | {line}" for line in tail) + "\n")
        raise PipelineError(f"run {index}: `dvc repro` failed (exit {result.returncode}); its "
                            f"output ends as shown above (full log: {log_path})")
    print(f"repro-check: run {index}/{runs} done in {time.perf_counter() - started:.0f} s", flush=True)
    outputs = locked_outputs(copy)
    return outputs, {path: file_hashes(copy / path) for path in outputs}


def compare(first: tuple[dict, dict], other: tuple[dict, dict]) -> list[str]:
    """One line per output whose md5 differs (exempt outputs left out)."""
    (locks_a, files_a), (locks_b, files_b) = first, other
    problems = []
    for path in [*locks_a, *(p for p in locks_b if p not in locks_a)]:  # pipeline order
        if path in EXEMPT:
            continue
        stage, md5_a = locks_a.get(path, (locks_b.get(path, ("?", ""))[0], "missing"))
        md5_b = locks_b.get(path, (stage, "missing"))[1]
        if md5_a == md5_b:
            continue
        a, b = files_a.get(path, {}), files_b.get(path, {})
        inner = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k)
        detail = f"; files that differ: {', '.join(inner[:8])}{' ...' if len(inner) > 8 else ''}" if inner else ""
        problems.append(f"  stage {stage}: {path}  md5 {md5_a} != {md5_b}{detail}")
    return problems


def check(repo: Path, overrides: list[str], runs: int, workdir: Path) -> int:
    copy = make_copy(repo, workdir, overrides)
    shown = " ".join(f"--set {o}" for o in overrides) or "params.yaml as committed"
    print(f"repro-check: {runs} runs of `dvc repro --force --no-run-cache` in {copy} ({shown})",
          flush=True)
    results = [one_run(copy, i, runs, workdir / f"run{i}.log") for i in range(1, runs + 1)]
    exempt = "; ".join(f"{p} ({why})" for p, why in EXEMPT.items())
    print(f"repro-check: compared {len([p for p in results[0][0] if p not in EXEMPT])} outputs of "
          f"{len({s for s, _ in results[0][0].values()})} stages; exempt: {exempt}")
    for i, other in enumerate(results[1:], start=2):
        problems = compare(results[0], other)
        if problems:
            print(f"repro-check: FAILED: {len(problems)} output(s) of run {i} differ from run 1 "
                  f"(same code, params and data):", file=sys.stderr)
            print("\n".join(problems), file=sys.stderr)
            print("repro-check: look for randomness that `seed` does not drive (an unseeded "
                  "generator, time, set/dict order, nondeterministic kernels) in the first stage "
                  "listed; later stages may differ only because their inputs did.", file=sys.stderr)
            return 1
    print(f"repro-check: OK: {runs} runs gave identical outputs")
    return 0


def command(args) -> None:
    """`folderfit repro-check` (arguments: folderfit.cli)."""
    if args.runs < 2:
        raise PipelineError("--runs must be at least 2")
    workdir = Path(tempfile.mkdtemp(prefix="repro-check-"))
    try:
        code = check(Path.cwd(), args.overrides, args.runs, workdir)
    finally:
        if args.keep:
            print(f"repro-check: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)
