"""What code a stage program runs: the files it imports, and a fingerprint of the code itself.

A stage must rerun when the code it runs changes, and only then. File hashes are too coarse (a
comment, a docstring or an unrelated function in an imported file would rerun a finished
pipeline), so each program gets a *fingerprint*: the normalised syntax tree (no comments, no
docstrings, no formatting) of every top-level definition reachable from `stages/PROGRAM.py`,
following names across puzzle_dsl modules. The `code` stage writes one fingerprint file per
program; every stage depends on its program's file, so DVC reruns a stage exactly when its
fingerprint changes (the idea Hamilton applies to functions).

Reachability is conservative: a module's top-level statements that are not definitions
(imports, constants, registries) always count, a class counts whole, and modules that are
shipped as data (the child's remote code, copied into every checkpoint) count byte for byte.
One exception: the field declarations of a recipe schema (a `Schema` subclass, dsl/schema.py)
do not count. They are the shape of params.yaml, which DVC already tracks per stage through
its params sections (every field, defaults included, is compiled into the file), so adding a
field to one section reruns only the stages whose params change, not every stage that reads
params.yaml. The fields are still followed (their types' methods count), and the schema's
methods and validators count as code.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "puzzle_dsl"
SCHEMA_BASE = ("puzzle_dsl.dsl.schema", "Schema")  # whose subclasses' fields are params data
# Copied verbatim into outputs (checkpoints carry them as remote code): every byte matters.
SHIPPED_AS_DATA = ("puzzle_dsl.model.nemotron_nas",)


# ---------------------------------------------------------------------------- module files
def module_name(path: Path, root: Path) -> str | None:
    """Dotted name of a puzzle_dsl file (None outside the package)."""
    try:
        parts = list(path.relative_to(root).with_suffix("").parts)
    except ValueError:
        return None
    if not parts or parts[0] != PACKAGE:
        return None
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _statements(node: ast.AST):
    """Every statement under `node`, nested ones too (expressions skipped: ~10x faster than
    ast.walk when only imports are wanted)."""
    for name in ("body", "orelse", "finalbody", "handlers", "cases"):
        for child in getattr(node, name, ()):
            yield child
            yield from _statements(child)


def _package_of(path: Path, root: Path) -> str | None:
    module = module_name(path, root)
    if module is None:
        return None
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _absolute(node: ast.ImportFrom, package: str | None) -> str | None:
    """The absolute module an ImportFrom names (None for a relative import outside a package)."""
    if not node.level:
        return node.module or ""
    if not package:
        return None
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


@functools.lru_cache(maxsize=2048)
def _parse(path: Path, mtime_ns: int, size: int) -> ast.Module:
    """The file's syntax tree with docstrings removed (they cannot change behaviour)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and _is_docstring(body[0])):
            node.body = body[1:] or ([] if isinstance(node, ast.Module) else [ast.Pass()])
    return tree


def _is_docstring(stmt: ast.AST) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def parse(path: Path) -> ast.Module:
    stat = path.stat()
    return _parse(path, stat.st_mtime_ns, stat.st_size)


def imports(path: Path, root: Path) -> set[str]:
    """Dotted puzzle_dsl module names that `path` imports (anywhere in the file)."""
    package, names = _package_of(path, root), set()
    for node in _statements(parse(path)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            full = _absolute(node, package)
            if full is None:
                continue
            names.add(full)
            names.update(f"{full}.{a.name}" for a in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def module_files(name: str, root: Path) -> list[Path]:
    """The files Python executes to import `name`: package __init__s and the module."""
    parts, files = name.split("."), []
    for k in range(1, len(parts) + 1):
        init = root.joinpath(*parts[:k], "__init__.py")
        if init.is_file():
            files.append(init)
    module = root.joinpath(*parts[:-1], parts[-1] + ".py")
    if module.is_file():
        files.append(module)
    return files


def program_file(program: str, root: Path) -> Path:
    return root / "stages" / f"{program}.py"


def code_files(program: str, root: Path) -> list[Path]:
    """stages/PROGRAM.py and every puzzle_dsl file it imports, transitively."""
    start = program_file(program, root)
    todo, seen = [start] if start.is_file() else [], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports(path, root):
            todo.extend(module_files(name, root))
    return sorted(seen)


def code_deps(program: str, root: Path) -> list[str]:
    """stages/PROGRAM.py and the non-empty files it imports, relative to `root` (sorted; DVC
    warns on empty deps, and an empty file runs nothing)."""
    files = {f.relative_to(root).as_posix() for f in code_files(program, root) if f.stat().st_size}
    return sorted(files | {f"stages/{program}.py"})


# ---------------------------------------------------------------------------- fingerprints
@dataclass(frozen=True)
class _Module:
    """One parsed module: its definitions, the code that always runs, and what names mean."""

    name: str
    definitions: dict[str, ast.AST]     # top-level def / class / assigned name -> statement
    always: list[ast.AST]               # other top-level statements (run at import)
    bindings: dict[str, tuple[str, str | None]]  # local name -> (module, attribute or None)
    imported: list[str]                 # puzzle_dsl modules its top-level imports execute
    stars: list[str]                    # modules it star-imports
    source: bytes


def _normalised(node: ast.AST) -> str:
    """The syntax tree as text: no comments, docstrings, formatting or line numbers."""
    return ast.dump(node, annotate_fields=False, include_attributes=False)


def _assigned_names(stmt: ast.AST) -> list[str]:
    targets = []
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        targets = [stmt.target]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _load_module(name: str, path: Path, root: Path) -> _Module:
    tree = parse(path)
    package = _package_of(path, root)
    definitions, always, bindings, imported, stars = {}, [], {}, [], []
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            definitions[stmt.name] = stmt
            continue
        if isinstance(stmt, ast.Import):  # what an import does is followed, not hashed
            imported += [a.name for a in stmt.names]
            continue
        if isinstance(stmt, ast.ImportFrom):
            full = _absolute(stmt, package)
            if full is not None:
                imported.append(full)
                stars += [full for a in stmt.names if a.name == "*"]
            continue
        names = _assigned_names(stmt)
        if names and len(names) == 1 and not isinstance(stmt, ast.AugAssign):
            definitions[names[0]] = stmt
            continue
        if not _is_docstring(stmt):
            always.append(stmt)
    for stmt in _statements(tree):  # imports anywhere bind names (lazy imports in functions)
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                if a.asname:
                    bindings[a.asname] = (a.name, None)
                else:
                    bindings[a.name.split(".")[0]] = (a.name.split(".")[0], None)
        elif isinstance(stmt, ast.ImportFrom):
            full = _absolute(stmt, package)
            if full is not None:
                for a in stmt.names:
                    bindings[a.asname or a.name] = (full, a.name)
    imported = [m for m in imported if m == PACKAGE or m.startswith(PACKAGE + ".")]
    return _Module(name, definitions, always, bindings, imported, stars, path.read_bytes())


def _is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


class _Program:
    """Walks the definitions a stage program reaches and hashes each one."""

    def __init__(self, root: Path):
        self.root = root
        self.modules: dict[str, _Module | None] = {}
        self.hashes: dict[str, str] = {}
        self.todo: list[tuple[str, ast.AST]] = []

    def module(self, name: str) -> _Module | None:
        if name not in self.modules:
            files = module_files(name, self.root) if _is_module(name, self.root) else []
            self.modules[name] = _load_module(name, files[-1], self.root) if files else None
            if self.modules[name] is not None:
                self.enter(name)
        return self.modules[name]

    def enter(self, name: str) -> None:
        """Importing `name` runs its parent packages' __init__ and its own top-level code."""
        parts = name.split(".")
        for k in range(1, len(parts)):
            if parts[0] == PACKAGE:
                self.module(".".join(parts[:k]))
        mod = self.modules[name]
        if name.startswith(SHIPPED_AS_DATA):
            self.hashes[name] = hashlib.sha256(mod.source).hexdigest()[:16]
            self.todo += [(name, d) for d in mod.definitions.values()]
        self.run_top_level(mod)

    def run_top_level(self, mod: _Module) -> None:
        """What importing `mod` executes: its imports and its non-definition statements."""
        for stmt in mod.always:
            self.add(mod.name, "<top>", stmt)
        for imported in mod.imported:
            if _is_module(imported, self.root):
                self.module(imported)

    def add(self, module: str, key: str, node: ast.AST) -> None:
        hashed = node
        if isinstance(node, ast.ClassDef) and self.is_schema(module, node):
            hashed = _without_fields(node)
        text = _normalised(hashed)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        qual = f"{module}:{key}" + (f" {digest[:8]}" if key == "<top>" else "")
        if qual in self.hashes:
            return
        self.hashes[qual] = digest
        self.todo.append((module, node))

    def definition(self, module: str, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
        """(module, statement) that `name` means inside `module`, through imports."""
        mod = self.module(module)
        if mod is None or depth > 20:
            return None
        if name in mod.definitions:
            return module, mod.definitions[name]
        target = mod.bindings.get(name)
        if target is None:
            for star in mod.stars:
                found = self.definition(star, name, depth + 1)
                if found:
                    return found
            return None
        target_module, target_name = target
        if target_name is None or not target_module.startswith(PACKAGE):
            return None
        return self.definition(target_module, target_name, depth + 1)

    def is_schema(self, module: str, node: ast.ClassDef, depth: int = 0) -> bool:
        """Whether the class derives from dsl.schema.Schema (resolved through the bases)."""
        if (module, node.name) == SCHEMA_BASE:
            return True
        for base in node.bases:
            if not isinstance(base, ast.Name) or depth > 20:
                continue
            found = self.definition(module, base.id)
            if found and isinstance(found[1], ast.ClassDef) and self.is_schema(*found, depth + 1):
                return True
        return False

    def resolve(self, module: str, name: str, attr: str | None = None) -> None:
        """Follow `name` (or `name.attr`) as used inside `module` to the definition it means."""
        mod = self.module(module)
        if mod is None:
            return
        if name in mod.definitions:
            self.add(module, name, mod.definitions[name])
            return
        target = mod.bindings.get(name)
        if target is None:
            for star in mod.stars:
                self.resolve(star, name, attr)
            return
        target_module, target_name = target
        if not (target_module == PACKAGE or target_module.startswith(PACKAGE + ".")):
            return
        if target_name is None:  # `import puzzle_dsl.x as m`: m.attr
            if attr is not None:
                self.resolve(target_module, attr)
            else:
                self.module(target_module)
            return
        as_module = f"{target_module}.{target_name}"
        if _is_module(as_module, self.root):  # `from puzzle_dsl.x import module`
            self.module(as_module)
            if attr is not None:
                self.resolve(as_module, attr)
            return
        self.resolve(target_module, target_name)

    def walk(self) -> None:
        while self.todo:
            module, node = self.todo.pop()
            for sub in ast.walk(node):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                    self.resolve(module, sub.value.id, sub.attr)
                elif isinstance(sub, ast.Name):
                    self.resolve(module, sub.id)


def _without_fields(node: ast.ClassDef) -> ast.ClassDef:
    """A schema class as hashed: its body without the annotated field declarations."""
    body = [stmt for stmt in node.body if not isinstance(stmt, ast.AnnAssign)]
    return ast.ClassDef(name=node.name, bases=node.bases, keywords=node.keywords,
                        body=body or [ast.Pass()], decorator_list=node.decorator_list,
                        type_params=getattr(node, "type_params", []))


def fingerprint(program: str, root: Path) -> dict[str, str]:
    """{"module:definition": hash} of everything `stages/PROGRAM.py` can run (sorted keys)."""
    path = program_file(program, root)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stage program")
    walker = _Program(root)
    name = f"stages.{program}"
    walker.modules[name] = _load_module(name, path, root)
    mod = walker.modules[name]
    for key, node in mod.definitions.items():  # the program file counts whole
        walker.add(name, key, node)
    walker.run_top_level(mod)
    for local in mod.bindings:
        walker.resolve(name, local)
    walker.walk()
    return dict(sorted(walker.hashes.items()))


def write_fingerprints(programs: list[str], root: Path, out_dir: Path) -> list[Path]:
    """One JSON file per program under `out_dir`; rewritten only when the content changes."""
    from puzzle_dsl.pipeline.atomic import write_text

    written = []
    for program in programs:
        path = out_dir / f"{program}.json"
        text = json.dumps(fingerprint(program, root), indent=1) + "\n"
        if not path.is_file() or path.read_text() != text:
            write_text(path, text)
        written.append(path)
    return written
