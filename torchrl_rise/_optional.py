"""Lazy imports of optional dependencies, with an error that names the pip extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "import_optional"]


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def import_optional(module: str, *, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra that installs it.

    Args:
        module: dotted module name, e.g. ``"vizdoom"``.
        extra: the ``torchrl_rise`` pip extra that installs it, e.g. ``"vizdoom"``.
        purpose: what needs it, for the message (defaults to ``module``).

    Example:
        >>> math = import_optional("math", extra="dev")
        >>> math.sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        what = purpose or module
        raise MissingDependencyError(
            f"{what} needs the optional dependency {module!r}, which is not installed. "
            f"Install it with `pip install 'torchrl_rise[{extra}]'` "
            f"(or `scripts/install.sh {extra}` in a checkout)."
        ) from err
