"""The layering rules of the library, checked on its import graph (every import statement,
at module level or inside a function):

* stages/*.py are thin: they import folderfit.cli only, and nothing imports them;
* the folders are the layers: nothing imports folderfit.pipeline (one module per DVC stage) or
  folderfit.commands (one module per `folderfit` command), and those two never import each
  other nor a module of their own folder: what two of them share lives below them;
* the bottom (errors, params, paths, support/) imports nothing above it;
* the files stages hand over are named only by their owner module in folderfit.artifacts;
* errors imports nothing from the package (every module may raise its errors);
* inference (the one inference loop) knows nothing of training (engine, training);
* the import graph has no cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "folderfit"
STAGE_MODULES = {f"folderfit.pipeline.{name}" for name in
                 ("preflight", "demo_data", "prepare", "review", "train", "evaluate")}
TOP = ("folderfit.pipeline", "folderfit.commands")
BOTTOM = {"folderfit.errors", "folderfit.params", "folderfit.paths", "folderfit.support"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """folderfit modules `path` imports (`from folderfit import x` counts as folderfit.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module != "folderfit":  # `from folderfit import x` needs x, not __init__
                found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("folderfit", "stages")}


def graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {module_name(p): p for p in files}
    packages = {module_name(p) for p in files if p.name == "__init__.py"}
    edges = {}
    for name, path in modules.items():
        # keep real modules only ("from folderfit.x import f" adds folderfit.x.f: not a module);
        # `from folderfit.images import decode` depends on decode, not on the package's __init__
        found = {m for m in imports_of(path) if m in modules and m != name}
        edges[name] = {m for m in found
                       if m not in packages or not any(o.startswith(m + ".") for o in found)}
    return edges


# The folders from the bottom up: a module may import from its own folder and from folders
# below it, never from one above. The top-level modules errors, params and paths sit below
# every folder; cli (the entry) and the package's public face (__init__: load) above them all.
LAYERS = ["support", "images", "backbone", "artifacts", "compute", "frozen", "tuning", "results",
          "pipeline", "commands"]


def test_the_graph_is_read():
    edges = graph()
    assert "folderfit.pipeline.train" in edges and "folderfit.tuning.epoch_loop" in edges["folderfit.pipeline.train"]


def test_stage_scripts_are_thin_and_nothing_imports_them():
    for script in (REPO / "stages").glob("*.py"):
        assert imports_of(script) <= {"folderfit.cli", "folderfit.cli.stage_main"}, script.name
    for name, targets in graph().items():
        assert not {t for t in targets if t.startswith("stages")}, name


def test_no_stage_module_imports_another():
    edges = graph()
    for stage in STAGE_MODULES:
        crossing = edges[stage] & (STAGE_MODULES - {stage})
        assert not crossing, f"{stage} imports {sorted(crossing)}"


def folder_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_stage_registry_names_every_stage_module():
    from folderfit.cli import STAGES

    assert set(STAGES.values()) == STAGE_MODULES
    for name in STAGES:
        assert (REPO / "stages" / f"{name}.py").is_file(), name


def test_nothing_imports_pipeline_or_commands_and_they_import_no_sibling():
    for name, targets in graph().items():
        for target in targets:
            if folder_of(target) in TOP:
                assert False, f"{name} imports {target}: stages and commands are the top layer"


def test_the_bottom_imports_nothing_above_it():
    for name, targets in graph().items():
        if folder_of(name) in BOTTOM or name in BOTTOM:
            above = {t for t in targets if folder_of(t) not in BOTTOM and t not in BOTTOM
                     and t != "folderfit"}
            assert not above, f"{name} imports {sorted(above)}"


def test_hand_over_files_are_named_in_code_by_their_owner_only():
    """The files stages hand to each other are opened through their owner module in
    folderfit.artifacts: no other module's code names them (paths.py says where they live)."""
    owners = {"MANIFEST_NAME": "artifacts/manifest.py", "MANIFEST": "artifacts/manifest.py",
              "LEARNED_FROM": "artifacts/learned_from.py", "CV_PREDICTIONS": "artifacts/learned_from.py",
              "manifest.csv": "artifacts/manifest.py", "learned_from.csv": "artifacts/learned_from.py",
              "cv_predictions.csv": "artifacts/learned_from.py", "models/model.pt": "paths.py"}
    owners |= {"LEARNING_CURVE": "artifacts/learning_curve_record.py", "learning_curve.json": "artifacts/learning_curve_record.py"}
    owners |= {"CANDIDATES": "artifacts/backbone_candidates.py", "candidates.json": "artifacts/backbone_candidates.py"}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "paths.py" or rel.startswith("project/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            named = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                     else node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
            owner = owners.get(named) if isinstance(named, str) else None
            assert owner is None or rel == owner, \
                f"folderfit/{rel} names {named}: read and write it through folderfit/{owner}"


def test_no_short_module_aliases():
    """Modules are imported under descriptive names (`from folderfit.frozen import probe`),
    never one- or two-letter aliases."""
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tests").glob("*.py"), *(REPO / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("folderfit"):
                for alias in node.names:
                    assert not (alias.asname and len(alias.asname) <= 3 and alias.asname.isupper()), \
                        f"{path.name}: {alias.name} as {alias.asname}"


def test_folders_import_only_downward():
    rank = {name: i for i, name in enumerate(LAYERS)}

    def folder(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 or module.split(".")[-1] in rank else None

    for name, targets in graph().items():
        here = folder(name)
        if here is None or here == "project":
            continue
        for target in targets:
            there = folder(target)
            if there not in rank or there == here:
                continue
            assert rank[there] < rank[here], f"{name} imports {target}: {there}/ is not below {here}/"
            assert not (here in ("pipeline", "commands") and there in ("pipeline", "commands")), name


def test_every_folder_is_in_the_layer_order_and_documented():
    folders = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} - {"project"}
    assert folders == set(LAYERS), folders ^ set(LAYERS)
    dev = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    for name in LAYERS:
        assert f"`{name}/`" in dev, f"docs/development.md does not map {name}/"
        assert (PACKAGE / name / "__init__.py").read_text(encoding="utf-8").startswith('"""'), name


def test_errors_import_nothing_from_the_package():
    assert graph()["folderfit.errors"] == set()


def test_inference_knows_nothing_of_training():
    assert not graph()["folderfit.compute.inference"] & {"folderfit.tuning.epoch_loop", "folderfit.pipeline.train"}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])


def test_a_module_alias_means_one_module_everywhere():
    meaning: dict[str, set[str]] = {}
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tests").glob("*.py"), *(REPO / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # `from folderfit import data as D`: a module under an alias
            if isinstance(node, ast.ImportFrom) and node.module in ("folderfit", "folderfit.results.pages"):
                for alias in node.names:
                    if alias.asname:
                        meaning.setdefault(alias.asname, set()).add(f"{node.module}.{alias.name}")
    clashes = {name: modules for name, modules in meaning.items() if len(modules) > 1}
    assert not clashes, clashes
