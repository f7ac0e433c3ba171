"""What each stage process pays for imports before it does any work: every stage's entry
module and library module imported in a fresh interpreter under `python -X importtime`.

    python -m bench.import_times                  # every stage, one probe each
    python -m bench.import_times --stages train review --repeat 3
    python -m bench.import_times --project /tmp/ff   # also run the stages for real there

Two probes per stage, each a fresh interpreter:
* "module": the stage's entry and library module as `python -m stages.<name>` loads them
  before run() starts;
* "+run()": also every module the library module imports inside its functions (found in its
  source), so roughly what the stage process imports in all.
Printed per probe: the wall time of the process (interpreter start included), the summed
import time, and the heavy packages loaded (matplotlib, sklearn, scipy, timm, onnx,
onnxruntime, dvclive, cleanlab, pandas, torchvision, torch, dvc) with the nearest folderfit
module that imported each (a heavy package pulled in by another heavy one is not listed
apart). Numbers depend on the load of the machine: the load average is printed with them.

With --project DIR, a third probe per stage ("stage") runs `python -X importtime -m
stages.<name>` in DIR for real: a tiny generated project (three classes of a few synthetic
photos, tf_efficientnet_lite0 at 64 px, its own feature cache, made on first use), so that the
stage's own work is small and the wall time is mostly start-up. It prints the same columns
for what the process really imported; the feature cache (and the engine choice and ONNX graph
kept there) is emptied once before the first stage, so review pays a machine's first run and
train and evaluate show what they repeat; then review runs once more with only the features
deleted, as on new photos ("again").
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {  # stage -> the library module stage_main imports (stages/<name>.py)
    "preflight": "folderfit.pipeline.preflight",
    "demo_data": "folderfit.pipeline.demo_data",
    "prepare": "folderfit.pipeline.prepare",
    "review": "folderfit.pipeline.review",
    "train": "folderfit.pipeline.train",
    "evaluate": "folderfit.pipeline.evaluate",
    "predict": "folderfit.commands.predict",  # not a stage: `folderfit predict` and folderfit.load
}
STAGES_RUN = ("preflight", "prepare", "review", "train", "evaluate")  # --project runs these
HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "sklearn", "scipy", "matplotlib",
         "dvclive", "cleanlab", "pandas", "dvc")
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def function_imports(module: str) -> list[str]:
    """Modules imported inside the functions of `module` (its lazy imports), from its source."""
    import ast

    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [alias.name for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom) and inner.module and not inner.level:
                    found.append(inner.module)
    return sorted(set(found))


def probe(stage: str, module: str, with_run: bool) -> tuple[float, list[tuple[int, int, int, str]]]:
    """(wall seconds, importtime rows (self us, cumulative us, depth, module) in print order)."""
    entry = f"stages.{stage}" if (REPO / "stages" / f"{stage}.py").exists() else "folderfit.cli"
    modules = [entry, "folderfit.params", module] + (function_imports(module) if with_run else [])
    code = "\n".join(f"import {name}" for name in modules)
    tick = time.perf_counter()
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO,
                            capture_output=True, text=True, check=False)
    wall = time.perf_counter() - tick
    if result.returncode:
        raise SystemExit(f"{stage}: import failed:\n{result.stderr[-2000:]}")
    rows = [(int(m[1]), int(m[2]), len(m[3]) // 2, m[4]) for m in map(LINE.match, result.stderr.splitlines()) if m]
    return wall, rows


def make_project(project: Path, per_class: int = 8) -> None:
    """A tiny project in `project` (kept between runs): params.yaml, the stage scripts, an
    ImageFolder of synthetic pictures; every stage's outputs go there too."""
    import shutil

    import numpy as np
    import yaml
    from PIL import Image

    project.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "stages", project / "stages", dirs_exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(model_name="tf_efficientnet_lite0")
    params["data"].update(source="data/photos", image_size=64)
    params["evaluate"].update(bootstrap=0)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(0)
    for c, tint in enumerate(((1, .3, .3), (.3, 1, .3), (.3, .3, 1))):
        folder = project / "data" / "photos" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.uniform(0, 1, (96, 96, 3)) * np.array(tint)
            Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg")


def run_stage(stage: str, project: Path) -> tuple[float, list[tuple[int, int, int, str]]]:
    """(wall seconds, importtime rows) of `python -X importtime -m stages.<stage>` in `project`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FOLDERFIT_CACHE": str(project / "cache")}
    tick = time.perf_counter()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"stages.{stage}"], cwd=project,
                            env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - tick
    if result.returncode:
        raise SystemExit(f"{stage}: stage failed:\n{result.stderr[-2000:]}")
    rows = [(int(m[1]), int(m[2]), len(m[3]) // 2, m[4]) for m in map(LINE.match, result.stderr.splitlines()) if m]
    return wall, rows


def importer(rows, index: int) -> str:
    """The nearest folderfit/stages module above rows[index] in the import tree (importtime
    prints a module after everything it imported, one level less indented)."""
    depth = rows[index][2]
    for self_us, cum_us, d, name in rows[index + 1:]:
        if d < depth:
            if name.startswith(("folderfit", "stages")) or name in HEAVY:
                return name
            depth = d
    return "lazy, in a function"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="*", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--repeat", type=int, default=1, help="probes per stage (the median counts)")
    parser.add_argument("--project", type=Path, help="also run the stages for real in this tiny "
                                                     "project folder (made if missing)")
    args = parser.parse_args(argv)
    if args.project:
        import shutil

        args.project = args.project.resolve()
        make_project(args.project)
        shutil.rmtree(args.project / "cache", ignore_errors=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'stage':<10} {'probe':<8} {'wall s':>7} {'imports s':>9}  heavy packages (imported by)")
    for stage in args.stages:
        module = STAGES[stage]
        probes = (False, True) + (("stage",) if args.project and stage in STAGES_RUN else ())
        for with_run in probes:
            walls, summed, rows = [], [], []
            for _ in range(args.repeat if with_run != "stage" else 1):
                wall, rows = (run_stage(stage, args.project) if with_run == "stage"
                              else probe(stage, module, with_run))
                walls.append(wall)
                summed.append(sum(self_us for self_us, *_ in rows) / 1e6)
            heavy = []
            for i, (self_us, cum_us, depth, name) in enumerate(rows):
                by = importer(rows, i) if name in HEAVY else None
                if by is not None and by not in HEAVY:
                    heavy.append(f"{name} {cum_us / 1e6:.2f}s ({by})")
            label = "stage" if with_run == "stage" else "+run()" if with_run else "module"
            print(f"{stage:<10} {label:<8} {statistics.median(walls):7.2f} "
                  f"{statistics.median(summed):9.2f}  {'; '.join(heavy) or '-'}")
    if args.project and "review" in args.stages:
        # new photos on a machine that ran before: features computed again, the engine choice
        # and the exported ONNX graph read from the cache
        import shutil

        shutil.rmtree(args.project / "cache" / "features", ignore_errors=True)
        wall, rows = run_stage("review", args.project)
        heavy = sorted(name for *_, name in rows if name in HEAVY)
        print(f"{'review':<10} {'again':<8} {wall:7.2f} {sum(r[0] for r in rows) / 1e6:9.2f}  "
              f"features recomputed, graph cached; heavy packages: {', '.join(heavy)}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
