"""Exercises: checks that run in the notebook (``check``) and under ``workbench grade``.

Reference solutions live in the notebooks' masters between ``# BEGIN SOLUTION`` and
``# END SOLUTION``; the package's own functions (``workbench.attacks.fgsm``...) are the
references the checks compare against.

``check``, ``run_checks``, ``get_exercise`` and ``exercises_for`` come from
:mod:`workbench.exercises.registry`, imported on first use: it imports every notebook's check
module (and with them torch), which ``import workbench.exercises.grader`` does not need.
"""

import importlib

from workbench.exercises.core import CheckFailed, CheckResult, format_results

_FROM_REGISTRY = {"check", "exercises_for", "get_exercise", "run_checks"}


def __getattr__(name):
    if name in _FROM_REGISTRY:
        return getattr(importlib.import_module("workbench.exercises.registry"), name)
    raise AttributeError(f"module 'workbench.exercises' has no attribute {name!r}")


__all__ = ["CheckFailed", "CheckResult", "check", "exercises_for", "format_results",
           "get_exercise", "run_checks"]
