"""The architecture's rules, checked on the source: what each layer may import, and that the split
names are spelled in one place only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "distributed_surface"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a source file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def sources(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("path", sources("core"), ids=lambda p: p.name)
def test_the_core_imports_torch_and_numpy_only(path):
    """(and scipy's eigensolver, for the Hessian: numerics, no processes, files or pictures)"""
    for name in imported_modules(path):
        root = name.split(".")[0]
        allowed = {"torch", "numpy", "__future__", "distributed_surface"} | ({"scipy"} if path.name == "hessian.py" else set())
        assert root in allowed or root in sys.stdlib_module_names, name
        if root == "distributed_surface":
            assert name.startswith("distributed_surface.core"), f"{path.name} imports {name}"


@pytest.mark.parametrize("path", sources("engine"), ids=lambda p: p.name)
def test_the_engine_does_not_import_the_application(path):
    forbidden = ("distributed_surface.run", "distributed_surface.cli", "distributed_surface.problem", "distributed_surface.config")
    for name in imported_modules(path):
        assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name} imports {name}"
    if path.name != "mpi.py":
        assert not any(n.split(".")[0] == "mpi4py" for n in imported_modules(path)), path.name


def string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string in the code of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_split_names_are_spelled_in_one_place():
    """Only core/measurements.py names the splits and measurements; everything else asks it. (Settings
    such as ``test_data`` are settings' names, not measurements.)"""
    from distributed_surface.config import CONFIGS
    from distributed_surface.settings import settings_of

    settings = {name for config in CONFIGS.values() for name in settings_of(config)}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "measurements.py":
            continue
        for line, text in string_constants(path):
            if text in ("train", "test") or (text.startswith(("train_", "test_")) and text not in settings):
                found.append(f"{path.relative_to(PACKAGE)}:{line}: {text!r}")
    assert not found, "\n".join(found)


def test_import_needs_neither_mpi4py_nor_matplotlib():
    code = (
        "import sys, distributed_surface, distributed_surface.run, distributed_surface.storage; "
        "bad = [m for m in ('mpi4py', 'matplotlib', 'plotly') if m in sys.modules]; sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# ---------------------------------------------------------------- what each layer may import


def package_imports(path: Path) -> set[str]:
    """The package's modules that a source file imports (a name imported from a module is that module)."""
    return {name for name in imported_modules(path) if name.split(".")[0] == "distributed_surface" and _is_module(name)}


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def within(name: str, *layers: str) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)


# The package itself: its __init__ holds __version__ and imports nothing.
ROOT = "distributed_surface"


@pytest.mark.parametrize("path", sorted((PACKAGE / "storage").glob("*.py")), ids=lambda p: p.name)
def test_storage_imports_only_the_core(path):
    """(and h5py, numpy and the standard library)"""
    for name in imported_modules(path):
        root = name.split(".")[0]
        assert root in {"h5py", "numpy", "__future__", ROOT} or root in sys.stdlib_module_names, f"{path.name} imports {name}"
    for name in package_imports(path):
        assert name == ROOT or within(name, "distributed_surface.core", "distributed_surface.storage"), f"{path.name} imports {name}"


@pytest.mark.parametrize("path", sources("engine"), ids=lambda p: p.name)
def test_the_engines_import_only_the_core_and_storage(path):
    for name in package_imports(path):
        assert within(name, "distributed_surface.core", "distributed_surface.storage", "distributed_surface.engine"), (
            f"{path.name} imports {name}"
        )
    assert not any(name.split(".")[0] == "h5py" for name in imported_modules(path)), f"{path.name}: h5py is storage's"


def test_exports_import_only_storage_and_the_core():
    for name in package_imports(PACKAGE / "export.py"):
        assert within(name, "distributed_surface.core", "distributed_surface.storage"), f"export.py imports {name}"


def test_pictures_import_only_storage_and_the_core():
    for name in package_imports(PACKAGE / "plot.py"):
        assert name == ROOT or within(name, "distributed_surface.core", "distributed_surface.storage"), f"plot.py imports {name}"


def test_the_table_imports_only_storage_and_the_core():
    """(the metrics of a surface plug in through table.table_rows; it reads files, nothing else)"""
    for name in package_imports(PACKAGE / "table.py"):
        assert name == ROOT or within(name, "distributed_surface.core", "distributed_surface.storage"), f"table.py imports {name}"


def test_the_report_reads_files_only_and_is_plotlys_one_module():
    """report.py: storage, the core, the table and dsurf info's text; plotly is imported nowhere else,
    and matplotlib not by it."""
    allowed = ("distributed_surface.core", "distributed_surface.storage", "distributed_surface.table", "distributed_surface.info")
    for name in package_imports(PACKAGE / "report.py"):
        assert name == ROOT or within(name, *allowed), f"report.py imports {name}"
    assert not any(n.split(".")[0] == "matplotlib" for n in imported_modules(PACKAGE / "report.py"))
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "report.py":
            assert not any(n.split(".")[0] == "plotly" for n in imported_modules(path)), f"{path.name} imports plotly"


def test_no_import_circle():
    """No module imports itself through others (imports inside functions count: they run in the end)."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}  # fmt: skip

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {module: {target for name in imported_modules(path) if (target := resolve(name)) not in (None, module)
                      and not module.startswith(target + ".")}  # (a package's own __init__ is no circle)
             for module, path in modules.items()}  # fmt: skip
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
