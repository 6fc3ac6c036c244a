"""The architecture of DESIGN.md (at the repository's root), checked: layers import only from below, optional packages
lazily."""

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

import voxfit

SRC = Path(voxfit.__file__).parent

# layer of each top-level module or subpackage of voxfit; a module may import from equal or lower layers
LAYERS = {
    "_array": 0,
    "_checks": 0,
    "_dask": 0,
    "_digest": 0,
    "_execution": 0,
    "_folders": 0,
    "_lazy": 0,
    "_memory": 0,
    "_progress": 0,
    "_threads": 0,
    "_version": 0,
    "exceptions": 0,
    "core": 1,
    "io": 2,
    "design": 2,
    "engine": 3,
    "inference": 3,
    "models": 4,
    "report": 4,
    "bids": 5,
    "cli": 6,
    "__init__": 7,
    "__main__": 7,
    "_program": 7,
}
# third-party imports allowed per layer (besides the standard library); numba only inside functions
THIRD_PARTY = {0: {"numpy", "blake3"}, 1: {"numpy", "scipy"}, 2: {"numpy", "scipy", "nibabel", "pandas"}}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


@pytest.fixture(autouse=True, scope="module")
def _trees_freed():
    """The trees kept by :func:`_parsed` freed after this file's tests: half a million objects, which every later
    full collection of the worker's garbage walked (a second a collection, late in a run)."""
    yield
    _parsed.cache_clear()


@functools.cache
def _parsed(path: Path) -> tuple[ast.Module, tuple[ast.AST, ...]]:
    """A module's tree and its nodes in ast.walk's order, parsed and walked once for the checks of this file (both
    go over every module of the package: each parsed and walked it again, three walks a module)."""
    tree = ast.parse(path.read_text())
    return tree, tuple(ast.walk(tree))


def _imports(path: Path):
    tree, nodes = _parsed(path)
    body = {id(node) for node in tree.body}
    for node in nodes:
        top_level = id(node) in body
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                target = _relative_target(path, node)
                yield "voxfit", target[0] if target and target[0] else "__init__", top_level
            else:
                yield node.module.split(".")[0], None, top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], None, top_level


def _relative_target(path: Path, node: ast.ImportFrom, src: Path = SRC) -> tuple[str, ...]:
    """The parts, below voxfit, of the module a relative ``from ... import`` names."""
    base = path.relative_to(src).parent.parts[: len(path.relative_to(src).parent.parts) - node.level + 1]
    return (base + tuple((node.module or "").split("."))) if node.module else base


def _is_module(parts: tuple[str, ...], src: Path) -> bool:
    """Whether voxfit.<parts> is a module or a package (not a name defined in one)."""
    where = src.joinpath(*parts)
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def _private_uses(path: Path, src: Path = SRC):
    """``from X import _name`` and ``X._name`` where X is another voxfit module and _name is not a module of it
    (``_``-prefixed modules, such as ``_threads`` or ``core._kernels``, are imported by other modules: what they
    offer are their public names)."""
    me = path.relative_to(src).with_suffix("").parts
    me = me[:-1] if me[-1] == "__init__" else me
    _, nodes = _parsed(path)
    modules = {}  # local name -> parts of a voxfit module bound to it
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = tuple(p for p in _relative_target(path, node, src) if p)
            elif node.module.split(".")[0] == "voxfit":
                target = tuple(node.module.split(".")[1:])
            else:
                continue
            for alias in node.names:
                if _is_module((*target, alias.name), src):
                    modules[alias.asname or alias.name] = (*target, alias.name)
                elif alias.name.startswith("_") and not alias.name.startswith("__") and target != me:
                    yield f"from {'.'.join(('voxfit', *target))} import {alias.name} (line {node.lineno})"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "voxfit" and alias.asname:
                    modules[alias.asname] = tuple(alias.name.split(".")[1:])
    for node in nodes:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            target = modules[node.value.id]
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if private and target != me and not _is_module((*target, node.attr), src):
                yield f"{node.value.id}.{node.attr}, of voxfit.{'.'.join(target)} (line {node.lineno})"


def test_layers_import_only_from_below():
    problems = []
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        layer = LAYERS[unit]
        for package, target, top_level in _imports(path):
            if package == "voxfit" and target is not None:
                target = target.removesuffix(".py")
                if LAYERS.get(target, 99) > layer:
                    problems.append(f"{path.relative_to(SRC)} (layer {layer}) imports voxfit.{target}")
            elif package not in sys.stdlib_module_names and package != "voxfit" and top_level and layer in THIRD_PARTY:
                if package not in THIRD_PARTY[layer]:
                    problems.append(f"{path.relative_to(SRC)} (layer {layer}) imports {package} at module level")
    assert not problems, problems


def test_no_private_name_is_used_across_modules():
    """What one module uses of another is that module's public names; a private name imported elsewhere is a
    name to make public (or a helper to move where both can import it)."""
    problems = [f"{path.relative_to(SRC)}: {use}" for path in SRC.rglob("*.py") for use in _private_uses(path)]
    assert not problems, problems


def test_private_names_across_modules_are_found(tmp_path):
    """The check itself finds both forms, and lets ``_``-prefixed modules and a module's own names pass."""
    package = tmp_path / "voxfit"
    (package / "core").mkdir(parents=True)
    (package / "_threads.py").write_text("def run():\n    pass\n")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "_kernels.py").write_text("_TABLE = 1\n")
    (package / "core" / "ols.py").write_text("_KAPPA = 1\n")
    user = package / "core" / "fit.py"
    user.write_text(
        "from .. import _threads\nfrom . import _kernels, ols\nfrom .ols import _KAPPA\n"
        "from voxfit.core._kernels import _TABLE\nimport voxfit.core.ols as o\n"
        "x = ols._KAPPA + o._KAPPA + _kernels.numba\n"
    )
    assert list(_private_uses(package / "core" / "ols.py", package)) == []
    assert [use.split(" (")[0] for use in _private_uses(user, package)] == [
        "from voxfit.core.ols import _KAPPA",
        "from voxfit.core._kernels import _TABLE",
        "ols._KAPPA, of voxfit.core.ols",
        "o._KAPPA, of voxfit.core.ols",
    ]


def test_import_voxfit_loads_no_optional_or_heavy_package():
    heavy = ("numba", "pandas", "dask", "cupy", "torch", "nibabel", "statsmodels")
    code = f"import sys, voxfit; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_command_line_fit_path_does_not_import_scipy_stats():
    """scipy.stats costs ~0.6 s to import, more than voxfit's whole load of a 100 MB run overlaps with."""
    code = "import sys, voxfit.models, voxfit.cli; print('scipy.stats' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
