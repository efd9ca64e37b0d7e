"""Is a room of machines ready for a workshop? ``workbench run`` executes notebooks headless,
keeps the executed copies and writes an HTML report of each notebook's time and outcome.

:func:`run_notebooks` runs them one after the other (a progress bar over all their code
cells), :func:`write_report` writes the page: the machine (mode, device, versions, cores), then
per notebook whether it ran top to bottom, how long it took, its slowest cells and, when a cell
failed, which one and why.
"""

from __future__ import annotations

import html
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

SLOWEST_SHOWN = 3


@dataclass
class NotebookOutcome:
    """How one notebook ran: its ``path``, the executed copy (``executed``), the run
    (:class:`~workbench.exercises.kernel.NotebookRun`) and its wall-clock ``seconds``."""

    path: Path
    executed: Path
    run: object
    seconds: float

    @property
    def ok(self) -> bool:
        return self.run.ok


def code_cells(path: Path) -> int:
    """How many code cells the notebook at ``path`` has (for the progress bar)."""
    from workbench.exercises.grader import read_notebook

    return sum(cell.cell_type == "code" for cell in read_notebook(path).cells)


def run_notebooks(paths: Sequence[Path], out: Path, *, cell_timeout: float,
                  total_timeout: float, progress: bool = True) -> list[NotebookOutcome]:
    """Run each notebook in lite mode in a fresh kernel (see
    :func:`workbench.exercises.grader.run_notebook`), writing its executed copy into ``out``
    (same file name; two notebooks of the same name get their folder's name in front)."""
    from tqdm.auto import tqdm

    from workbench.exercises.grader import run_notebook

    total = sum(code_cells(p) for p in paths)  # NotANotebook before anything is written
    out.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in paths]
    outcomes = []
    with tqdm(total=total, unit="cell", disable=not progress) as bar:
        for path in paths:
            name = path.name if names.count(path.name) == 1 else f"{path.parent.name}-{path.name}"
            executed = out / name
            bar.set_description(path.stem)
            start = time.monotonic()
            run = run_notebook(path, cell_timeout=cell_timeout, total_timeout=total_timeout,
                               keep=executed, on_cell=lambda cell: bar.update())
            outcomes.append(NotebookOutcome(path, executed, run, time.monotonic() - start))
    return outcomes


def machine() -> dict[str, str]:
    """What the report says about the machine: mode, device, Python, torch, cores."""
    import torch

    from workbench.config import get_device, get_mode

    return {"mode": get_mode(), "device": str(get_device()), "python": platform.python_version(),
            "torch": torch.__version__, "cores": str(os.cpu_count()),
            "host": platform.node()}


def _row(outcome: NotebookOutcome) -> str:
    run = outcome.run
    status = "ran top to bottom" if outcome.ok else html.escape(run.message)
    slowest = sorted(run.cells, key=lambda c: c.seconds, reverse=True)[:SLOWEST_SHOWN]
    cells = "<br>".join(f"{c.seconds:.1f} s: cell {c.index} <code>{html.escape(c.first_line[:60])}"
                        f"</code>" for c in slowest)
    colour = "#1a7f37" if outcome.ok else "#b2182b"
    return (f"<tr><td>{html.escape(outcome.path.name)}</td>"
            f"<td style='color:{colour}'>{'ok' if outcome.ok else 'FAILED'}</td>"
            f"<td>{outcome.seconds:.0f} s</td><td>{status}</td><td>{cells}</td>"
            f"<td><a href='{html.escape(outcome.executed.name)}'>executed copy</a></td></tr>")


def write_report(outcomes: Sequence[NotebookOutcome], path: Path,
                 about: dict[str, str] | None = None) -> Path:
    """Write the HTML report of ``outcomes`` to ``path`` (``about``: the machine, default
    :func:`machine`); returns ``path``."""
    about = machine() if about is None else about
    ready = all(o.ok for o in outcomes)
    facts = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in about.items())
    rows = "".join(_row(o) for o in outcomes)
    verdict = ("ready: every notebook ran top to bottom" if ready else
               f"not ready: {sum(not o.ok for o in outcomes)} of {len(outcomes)} notebooks failed")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>workbench run: "
            f"{verdict}</title></head><body><h1>workbench run</h1><p><b>{verdict}</b>, in "
            f"{sum(o.seconds for o in outcomes):.0f} s</p><ul>{facts}</ul>"
            f"<table border='1' cellpadding='4'><tr><th>notebook</th><th>outcome</th>"
            f"<th>time</th><th>what happened</th><th>slowest cells</th><th></th></tr>{rows}"
            f"</table></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
