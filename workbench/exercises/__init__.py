"""Exercises: checks that run in the notebook (``check``) and under ``workbench grade``.

Reference solutions live in the notebooks' masters between ``# BEGIN SOLUTION`` and
``# END SOLUTION``; the package's own functions (``workbench.attacks.fgsm``...) are the
references the checks compare against.
"""

from workbench.exercises.core import (
    CheckFailed,
    CheckResult,
    check,
    exercises_for,
    format_results,
    get_exercise,
    run_checks,
)

__all__ = ["CheckFailed", "CheckResult", "check", "exercises_for", "format_results",
           "get_exercise", "run_checks"]
