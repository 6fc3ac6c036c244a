"""Names a package imports on first use (PEP 562), so that importing it pays for none of its heavier modules."""

from __future__ import annotations

import importlib

__all__ = ["first_use"]


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
