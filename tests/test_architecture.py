"""The package's layers, as rules the import graph must obey (docs/design.md draws them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "puzzle_dsl"
# A sub-package may import its own modules and those of packages ranked lower, never higher.
RANKS = {
    "dsl": 0,                      # the recipe language (no torch)
    "pipeline": 1,                 # stage infrastructure
    "model": 3,                    # the child, checkpoints, parent import, block library
    "train": 4, "tasks": 4,
    "corpus": 5, "bld": 6, "score": 7, "runtime": 8, "search": 9, "gkd": 10, "evaluate": 11,
    "report": 12, "export": 13,    # the method steps, in pipeline order
    "tracking": 13,                # MLflow: records what every step wrote
    "compiler": 14,                # recipe -> dvc.yaml + params.yaml: checks inputs with the
}                                  # steps' own (torch-free) readers; imports no torch itself




def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_every_sub_package_has_a_rank():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(RANKS)


def test_no_package_imports_a_higher_layer():
    upward = []
    for name, path in modules().items():
        own = name.split(".")[1] if name.count(".") else None
        for imported in imports(path):
            parts = imported.split(".")
            if own in RANKS and parts[0] == "puzzle_dsl" and len(parts) > 1 \
                    and parts[1] in RANKS and RANKS[parts[1]] > RANKS[own]:
                upward.append(f"{name} -> {imported}")
    assert not upward


def test_no_import_cycles_between_modules():
    mods = modules()
    graph = {name: {m for m in imports(path, top_level_only=True) if m in mods and m != name}
             for name, path in mods.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join(trail + [name])
        state[name] = "open"
        for dep in sorted(graph[name]):
            visit(dep, trail + [name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


def test_nothing_in_the_package_imports_a_stage_program():
    assert not [n for n, p in modules().items() if any(i.startswith("stages") for i in imports(p))]


def test_the_child_model_code_imports_only_torch_transformers_and_the_standard_library():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    child = PACKAGE / "model" / "nemotron_nas"
    for path in child.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # its own sibling module
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] in stdlib | {"torch", "transformers"}, (path.name, name)


def test_the_recipe_front_end_never_imports_torch():
    code = ("import sys, puzzle_dsl.cli, puzzle_dsl.dsl, puzzle_dsl.compiler.build, "
            "puzzle_dsl.compiler.code_deps; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
