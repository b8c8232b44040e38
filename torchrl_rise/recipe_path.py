"""The one import-path fix of the training recipes (``recipes/<suite>.py``), kept free of heavy imports.

``python recipes/procgen.py`` puts ``recipes/`` first on ``sys.path``. Three recipes are named
like simulator packages (``procgen``, ``vizdoom``, ``miniworld``) that TorchRL, gymnasium's plugin
loader and the env factories import, which would then find the recipe instead of the package.
Each recipe calls :func:`drop_script_folder` before it imports anything else; this module imports
nothing but the standard library (``import torchrl_rise`` loads its subpackages lazily).

Example:
    >>> import sys
    >>> folder = "/tmp/recipes_example"
    >>> sys.path.insert(0, folder)
    >>> drop_script_folder(folder + "/procgen.py")
    >>> folder in sys.path
    False
"""

from __future__ import annotations

import os
import sys

__all__ = ["drop_script_folder"]


def drop_script_folder(script: str) -> None:
    """Remove the folder of ``script`` (a recipe's ``__file__``) from ``sys.path``, in place.

    Spawned worker processes inherit the shortened path, so they do not find the recipe either.
    """
    folder = os.path.dirname(os.path.abspath(script))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != folder]
