"""Hydra presets of the recipes (``preset=quickstart|debug|tiny|cpu_<suite>``), on ``hydra.searchpath``.

They live in the package rather than in ``recipes/config/`` so that the ``preset`` config group
is visible only to the training recipes (each ``recipes/config/<suite>.yaml`` adds
``pkg://torchrl_rise.training.presets`` to hydra's search path), not to other configs there.
"""

from __future__ import annotations

__all__ = ["register_presets"]

SEARCH_PATH = "pkg://torchrl_rise.training.presets"


def register_presets() -> None:
    """Make hydra see the presets before it reads a primary config (so ``--help`` lists them).

    ``hydra.searchpath`` in the suite YAML is enough to compose ``preset=...``, but hydra builds the
    ``--help`` page's "Configuration groups" from its initial search path only; a search-path
    plugin adds the presets there. The recipes call this before ``@hydra.main`` runs.
    """
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class RisePresetsSearchPath(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            search_path.append(provider="torchrl_rise", path=SEARCH_PATH)

    RisePresetsSearchPath.__module__ = __name__
    Plugins.instance().register(RisePresetsSearchPath)
