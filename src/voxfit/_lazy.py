"""Names a package imports on first use (PEP 562), so that importing it pays for none of its heavier modules; and
numpy's submodules that a voxfit process never uses, loaded on first use there."""

from __future__ import annotations

import importlib
import sys

__all__ = ["first_use", "numpys_unused_submodules_lazy"]

# numpy's submodules that its namespace names (numpy imports them when first read) and that nothing a voxfit
# command runs uses. scipy's array-API layer (scipy._lib.array_api_compat.numpy, which scipy.linalg and
# scipy.special import) reads every name of numpy's namespace, so each was imported: with subprocess, email,
# urllib and sysconfig, 65 modules and 50-60 ms of every fit's start on its main thread (scipy 1.17, numpy 2).
# numpy's other such submodules cost a few milliseconds together, and some are used (numba reads polynomial)
NUMPY_UNUSED = ("f2py", "testing")


def first_use(namespace: dict, where: dict):
    """``__getattr__`` and ``__dir__`` for the package whose globals are `namespace`: each name of `where`
    is imported when first read, from ``where[name]``: a submodule (the name is its attribute), a
    ``(submodule, attribute)`` pair, or ``(submodule, None)`` for the submodule itself; it is then kept in
    the package's globals."""
    package = namespace["__name__"]

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = where[name] if isinstance(where[name], tuple) else (where[name], name)
        value = importlib.import_module(f".{module}", package)
        value = value if attribute is None else getattr(value, attribute)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__


def numpys_unused_submodules_lazy() -> None:
    """Make :data:`NUMPY_UNUSED` load on first use in this process (``importlib.util.LazyLoader``): as scipy is
    first imported, each is put in ``sys.modules`` and on numpy unexecuted, and it executes when one of its
    attributes is first read. For the voxfit program's own process only (:func:`voxfit.cli.program_settings`):
    a library leaves its users' imports as they are, and the worker processes a command starts import as usual.
    Nothing is done where scipy is imported already; a submodule that is imported already, or that this numpy
    lacks, is left as it is. Python 3.11's LazyLoader executes a module once, but a second thread that reads it
    meanwhile sees it half made (an AttributeError; fixed in 3.12.3): hence only modules that nothing a
    command runs reads, on any thread (``inspect.stack()`` reads every module's ``__file__``)."""
    if "scipy" not in sys.modules:
        sys.meta_path.insert(0, _BeforeScipy())


class _BeforeScipy:
    """A finder that finds nothing: asked for scipy or a module of it once numpy is imported (scipy imports numpy
    first, and reads numpy's namespace later, in ``scipy._lib``), it leaves the import system and makes numpy's
    unused submodules lazy. It never imports numpy itself: finders run under the interpreter's import lock,
    and another thread importing numpy would wait for that lock while holding numpy's."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "scipy" and _imported("numpy"):
            # (a new list: the import system goes on over the one it holds, and the finders after this one are
            # still asked for `name`)
            sys.meta_path = [finder for finder in sys.meta_path if finder is not self]
            _make_lazy(sys.modules["numpy"], NUMPY_UNUSED)
        return None


def _imported(name: str) -> bool:
    """Whether module `name` is imported and done executing (``__spec__._initializing`` is importlib's mark of a
    module still executing)."""
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _make_lazy(parent, names) -> None:
    import importlib.util

    for name in names:
        full = f"{parent.__name__}.{name}"
        if full in sys.modules or name in vars(parent):
            continue
        try:
            spec = importlib.util.find_spec(full)
        except (ImportError, ValueError):
            continue
        if spec is None or not hasattr(spec.loader, "exec_module"):
            continue
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)  # (only records the module's loader: it executes on first use)
        setattr(parent, name, module)  # (numpy's own __getattr__ would import it again)
