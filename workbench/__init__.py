"""Resilient AI Workbench: the helper package behind the notebooks.

Subpackages are imported when used, so ``import workbench`` pulls in no torch, keras or
matplotlib: ``workbench.attacks``, ``workbench.models``, ``workbench.data``,
``workbench.widgets``, ``workbench.viz``, ``workbench.exercises``.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {"attacks", "cli", "config", "data", "defenses", "exercises", "experiments", "models",
               "notebooks", "safety", "viz", "widgets"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"workbench.{name}")
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
