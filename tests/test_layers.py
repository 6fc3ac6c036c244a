"""The architecture of DESIGN.md (at the repository's root), checked: layers import only from below, optional packages
lazily."""

import ast
import subprocess
import sys
from pathlib import Path

import voxfit

SRC = Path(voxfit.__file__).parent

# layer of each top-level module or subpackage of voxfit; a module may import from equal or lower layers
LAYERS = {
    "_array": 0,
    "_dask": 0,
    "_execution": 0,
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
    "cli": 5,
    "__init__": 6,
    "__main__": 6,
}
# third-party imports allowed per layer (besides the standard library); numba only inside functions
THIRD_PARTY = {0: {"numpy"}, 1: {"numpy", "scipy"}, 2: {"numpy", "scipy", "nibabel", "pandas"}}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        top_level = node in tree.body
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = path.relative_to(SRC).parent.parts[: len(path.relative_to(SRC).parent.parts) - node.level + 1]
                target = (base + tuple((node.module or "").split("."))) if node.module else base
                yield "voxfit", target[0] if target and target[0] else "__init__", top_level
            else:
                yield node.module.split(".")[0], None, top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], None, top_level


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
