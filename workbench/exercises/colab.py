"""Grading the notebook a learner has open, from inside it: Colab, JupyterLab or a saved file.

``grade_this_notebook()`` finds the notebook: in Colab it asks the Colab frontend for the open
notebook's contents (what File > Download .ipynb would save, outputs included) and writes them
to a temporary file; in JupyterLab it reads ``$JPY_SESSION_NAME``, the path Jupyter Server gives
the kernel (save first: the file on disk is what is graded). Then it grades that file as
``workbench grade`` does, in a kernel of its own (the learner's kernel is left alone), and
prints the table.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

COLAB_TIMEOUT_S = 30  # how long to wait for Colab's frontend to send the notebook


def _from_colab(folder: Path) -> Path | None:
    """The open Colab notebook written to ``folder``, or None outside Colab."""
    if "google.colab" not in sys.modules:
        return None
    from google.colab import _message  # Colab's frontend channel, present only in Colab

    reply = _message.blocking_request("get_ipynb", timeout_sec=COLAB_TIMEOUT_S)
    if not reply or "ipynb" not in reply:
        raise RuntimeError("Colab did not send the open notebook: save it (File > Save) and "
                           "run this cell again, or download it (File > Download .ipynb) and "
                           "grade the file with `workbench grade FILE`")
    notebook = reply["ipynb"]
    stem = notebook.get("metadata", {}).get("workbench", {}).get("notebook", "notebook")
    path = folder / f"{stem}.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


def find_this_notebook(folder: Path) -> Path:
    """The notebook this kernel runs: from Colab (written into ``folder``), else
    ``$JPY_SESSION_NAME``. RuntimeError saying what to do when neither says."""
    path = _from_colab(folder)
    if path is not None:
        return path
    session = os.environ.get("JPY_SESSION_NAME")
    if session and Path(session).suffix == ".ipynb" and Path(session).is_file():
        return Path(session)
    raise RuntimeError("cannot tell which notebook this is (not Colab, and Jupyter did not set "
                       "JPY_SESSION_NAME): pass its path, grade_this_notebook('05_lat_llm.ipynb'),"
                       " or run `workbench grade NOTEBOOK` in a terminal")


def grade_this_notebook(path: str | Path | None = None, **limits):
    """Grade the open notebook (or ``path``) as ``workbench grade`` would and print the table;
    returns the :class:`~workbench.exercises.grader.GradeReport` (None when the grader itself
    runs this cell). ``limits``: ``cell_timeout``, ``total_timeout``, ``check_timeout``
    (seconds), as :func:`~workbench.exercises.grader.grade`."""
    from workbench.exercises.grader import grade

    if os.environ.get("WORKBENCH_GRADING") == "1":  # this cell, run by the grader itself
        print("grade_this_notebook: skipped while `workbench grade` runs the notebook")
        return None
    with tempfile.TemporaryDirectory(prefix="workbench-this-") as tmp:
        notebook = Path(path) if path is not None else find_this_notebook(Path(tmp))
        print(f"grading {notebook.name} in a kernel of its own (a few minutes)...")
        report = grade(notebook, **limits)
    print(report.table() if report.status == "graded" else report.run_message)
    return report
