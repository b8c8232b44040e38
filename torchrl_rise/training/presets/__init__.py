"""Hydra presets of the recipes (``preset=quickstart|debug|tiny``), found through ``hydra.searchpath``.

They live in the package rather than in ``recipes/config/`` so that the ``preset`` config group
is visible only to the training recipes (``recipes/config/base.yaml`` adds
``pkg://torchrl_rise.training.presets`` to hydra's search path), not to other configs there.
"""
