"""Grading the open notebook from inside it (Colab, JupyterLab), and Colab's secrets."""

from __future__ import annotations

import json
import sys
import types

import nbformat
import pytest

from workbench.exercises import colab


@pytest.fixture
def fake_colab(monkeypatch):
    """A stand-in for Colab's frontend channel that sends back ``sent["ipynb"]``."""
    sent = {}
    message = types.ModuleType("google.colab._message")
    message.blocking_request = lambda request, timeout_sec: (
        {"ipynb": sent["ipynb"]} if request == "get_ipynb" and "ipynb" in sent else None)
    package = types.ModuleType("google.colab")
    package._message = message
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", package)
    monkeypatch.setitem(sys.modules, "google.colab._message", message)
    return sent


def test_in_colab_the_open_notebook_is_written_under_its_course_name(fake_colab, tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    notebook.metadata["workbench"] = {"notebook": "07_defenses"}
    fake_colab["ipynb"] = json.loads(nbformat.writes(notebook))
    path = colab.find_this_notebook(tmp_path)
    assert path == tmp_path / "07_defenses.ipynb"
    assert nbformat.read(path, 4).cells[0].source == "x = 1"


def test_colab_that_sends_nothing_says_what_to_do(fake_colab, tmp_path):
    with pytest.raises(RuntimeError, match="File > Download .ipynb"):
        colab.find_this_notebook(tmp_path)


def test_in_jupyter_the_session_path_is_used(tmp_path, monkeypatch):
    notebook = tmp_path / "04_lat.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), notebook)
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))
    assert colab.find_this_notebook(tmp_path) == notebook
    monkeypatch.delenv("JPY_SESSION_NAME")
    with pytest.raises(RuntimeError, match="workbench grade NOTEBOOK"):
        colab.find_this_notebook(tmp_path)


def test_grading_this_notebook_prints_the_report(tmp_path, capsys):
    essay = tmp_path / "essay.ipynb"  # of no course notebook: graded without a kernel
    nbformat.write(nbformat.v4.new_notebook(), essay)
    report = colab.grade_this_notebook(essay)
    assert report.status == "not a course notebook"
    assert report.run_message in capsys.readouterr().out


def test_under_the_grader_the_cell_does_not_grade_itself(monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_GRADING", "1")
    assert colab.grade_this_notebook() is None
    assert "skipped" in capsys.readouterr().out


def test_colab_secrets_fill_the_kaggle_credentials_kagglehub_reads(monkeypatch):
    from workbench.config import use_colab_secrets

    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_KEY", "already-set")
    assert use_colab_secrets() == []  # outside Colab: nothing
    secrets = {"KAGGLE_USERNAME": "learner", "KAGGLE_KEY": "from-the-panel"}
    userdata = types.ModuleType("google.colab.userdata")
    userdata.get = secrets.__getitem__
    package = types.ModuleType("google.colab")
    package.userdata = userdata
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", package)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    assert use_colab_secrets() == ["KAGGLE_USERNAME"]
    import os

    assert os.environ["KAGGLE_USERNAME"] == "learner"
    assert os.environ["KAGGLE_KEY"] == "already-set"  # what the learner set wins
    assert use_colab_secrets(("HF_TOKEN",)) == []  # a secret not added is skipped
