"""Run the GitHub workflow's shell steps here, in order, on a tiny configuration.

    python .ci/workflow_selftest.py

GitHub is not reachable from our CI, so this plays the job: a temporary copy of the repository
with a tiny params.yaml committed as `main`, a pull-request-like change on top (lr), then every
`run:` line of .github/workflows/pipeline.yml with the job's env and a job-summary file.
main's results are computed and committed first (as a DVC remote would provide them), so the
report must show both columns. The install step is left out: .ci/run runs .ci/steps/install.sh
itself before this, and reinstalling from the temporary copy would point the editable install
at it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from folderfit.commands.repro_check import make_copy, set_key  # noqa: E402

WORKFLOW = ROOT / ".github/workflows/pipeline.yml"
TINY = ["data.image_size=32", "num_epochs=2", "demo.per_class=6", "evaluate.bootstrap=200",
        "model_name=mobilenet_v3_small", "weights=none", "freeze_layers=2", "precision=fp32"]


def git(copy: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", *args],
                   cwd=copy, check=True, capture_output=True)


def main() -> int:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["reproduce"]
    steps = [s for s in job["steps"] if "run" in s]
    with tempfile.TemporaryDirectory(prefix="workflow-selftest-") as tmp:
        copy = make_copy(ROOT, Path(tmp), TINY)
        git(copy, "branch", "-M", "main")
        # main's results in the DVC cache (as `dvc fetch` brings them from a remote), so the
        # report's main column must be filled
        subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=copy, check=True)
        git(copy, "add", "-A")
        git(copy, "commit", "-qm", "main results")
        git(copy, "checkout", "-q", "-b", "pull-request")
        params = yaml.safe_load((copy / "params.yaml").read_text())
        set_key(params, "lr", 0.0005)  # the change the report must show
        (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        git(copy, "commit", "-qam", "lower lr")
        summary = Path(tmp) / "summary.md"
        env = {**os.environ, **{k: str(v) for k, v in (job.get("env") or {}).items()},
               "GITHUB_STEP_SUMMARY": str(summary), "RUNNER_TEMP": tmp}
        for step in steps:
            if step["run"].strip() == "bash .ci/steps/install.sh":
                print(f"== {step['name']}: run by .ci/run before this script", flush=True)
                continue
            print(f"== {step['name']}: {step['run'].strip()}", flush=True)
            step_env = {**env, **{k: str(v) for k, v in (step.get("env") or {}).items()
                                  if "${{" not in str(v)}}
            result = subprocess.run(["bash", "-c", step["run"]], cwd=copy, env=step_env)
            if result.returncode != 0:
                print(f"workflow selftest: step '{step['name']}' failed ({result.returncode})",
                      file=sys.stderr)
                return 1
        text = summary.read_text()
        for expected in ("## Reproducibility check", "repro-check: OK", "## Results: main",
                         "## Params: main", "| lr ", "0.0005"):
            if expected not in text:
                print(f"workflow selftest: job summary lacks {expected!r}:\n{text}", file=sys.stderr)
                return 1
        # both columns hold a number (any value: the tiny model may well score 1)
        if not re.search(r"\| accuracy \(on the scored split\) \| [0-9.]+ \| [0-9.]+ \|", text):
            print(f"workflow selftest: no accuracy for both main and this commit:\n{text}",
                  file=sys.stderr)
            return 1
        if "Note: no metrics" in text:
            print(f"workflow selftest: main's metrics are cached, yet the report says none:\n{text}",
                  file=sys.stderr)
            return 1
        print(f"workflow selftest: OK, {len(steps)} steps; job summary:\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
