"""The layering rules of the library, checked on its import graph (every import statement,
at module level or inside a function):

* stages/*.py are thin: they import folderfit.cli only, and nothing imports them;
* a stage module (one per DVC stage) never imports another stage module: what two stages
  share lives below them (extraction, estimate, features, probe, paths, data, ...);
* errors imports nothing from the package (every module may raise its errors);
* inference (the one inference loop) knows nothing of training (engine, training);
* the import graph has no cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "folderfit"
STAGE_MODULES = {"folderfit.pipeline.preflight", "folderfit.pipeline.demo_data", "folderfit.pipeline.prepare", "folderfit.pipeline.review",
                 "folderfit.pipeline.train", "folderfit.pipeline.evaluate"}


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
    edges = {}
    for name, path in modules.items():
        # keep real modules only ("from folderfit.x import f" adds folderfit.x.f: not a module)
        edges[name] = {m for m in imports_of(path) if m in modules and m != name}
    return edges


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
