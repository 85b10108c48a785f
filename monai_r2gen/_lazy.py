"""Lazy package exports (PEP 562), so that importing a sub-package does not import torch, MONAI or transformers."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list], list]:
    """Module-level ``__getattr__``, ``__dir__`` and ``__all__`` for a package whose names live in sub-modules.

    Args:
        package: the package's ``__name__`` (for error messages).
        exports: public name -> module that defines it.

    Returns:
        ``(__getattr__, __dir__, __all__)`` to assign in the package's ``__init__``.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module-level hook's required name
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list:  # noqa: N807
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
