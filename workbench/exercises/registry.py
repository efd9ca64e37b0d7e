"""Every notebook's exercises, looked up by name or by notebook.

Importing this module imports each notebook's check module, which registers its exercises in
:data:`workbench.exercises.core.EXERCISES`. The check modules import ``core``, never this
module, so there is no import cycle. A new notebook's checks are one more name on the import
line below, in notebook order.
"""

from __future__ import annotations

import os
from typing import Callable

from workbench.exercises import (nb01_shieldgemma, nb02_fgsm, nb03_pgd, nb04_lat,  # noqa: F401
                                 nb05_lat_llm, nb06_redteam, nb07_defenses)
from workbench.exercises.core import (CHECK_TIMEOUT_S, EXERCISES, CheckResult, Exercise,
                                      format_results, run_checks_list)


def exercises_for(notebook: str) -> list[Exercise]:
    """The exercises of a notebook (by stem, e.g. "02_fgsm"), in the order they were added."""
    return [ex for ex in EXERCISES.values() if ex.notebook == notebook]


def get_exercise(name: str) -> Exercise:
    """The exercise called ``name``; ValueError listing the known ones otherwise."""
    if name not in EXERCISES:
        raise ValueError(f"no exercise named {name!r}; known: {sorted(EXERCISES)}")
    return EXERCISES[name]


def run_checks(name: str, fn: Callable, *, timeout: float = CHECK_TIMEOUT_S) -> list[CheckResult]:
    """Run every check of exercise ``name`` on ``fn``; one result per check, in order."""
    return run_checks_list(name, get_exercise(name).checks, fn, timeout=timeout)


def check(name: str, fn: Callable) -> None:
    """Check a learner's function in the notebook: prints what passed and, for each failure,
    the likely mistake. Returns nothing, so that the cell shows only the report (use
    :func:`run_checks` for the results). Under ``workbench grade`` it only says so: the grader
    runs the checks itself, in a process of its own, once the notebook has run."""
    if os.environ.get("WORKBENCH_GRADING") == "1":
        print(f"{get_exercise(name).title}: checked by `workbench grade` after the notebook runs")
        return
    results = run_checks(name, fn)
    print(f"Checking {get_exercise(name).title}:")
    print(format_results(results))
