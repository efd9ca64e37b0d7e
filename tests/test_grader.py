"""`workbench grade` as an instructor uses it on a class: every submission isolated, graded
into a gradebook, nothing of the learner's or the instructor's touched, nothing left behind."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from submissions import EXPECTED, HANG, IMPORTS, notebook, write_class

ROOT = Path(__file__).resolve().parent.parent
CHECK_S = 30


def _workbench(*args, env=None, timeout=600, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """A class folder of honest and hostile submissions, graded by the CLI with 2 jobs into a
    gradebook; (folder, gradebook folder, the JSON printed, the finished process)."""
    root = tmp_path_factory.mktemp("class")
    folder = root / "submissions"
    write_class(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    tmp = root / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    # 30 s per check: the lite-model check of a correct answer must not time out on a loaded
    # 2-core machine, and the hanging submission costs one such limit.
    done = _workbench("grade", str(folder), "--jobs", "2", "--check-timeout", str(CHECK_S),
                      "--gradebook", str(root / "out"), "--json", "--keep", str(root / "kept"),
                      env=env)
    return folder, root / "out", json.loads(done.stdout), done, before, tmp


@pytest.mark.notebook
def test_a_class_grades_into_the_right_gradebook(graded_class):
    folder, out, reports, done, _, _ = graded_class
    assert done.returncode == 1, done.stderr  # not everyone passes
    rows = {Path(row["submission"]).name: row
            for row in csv.DictReader(open(out / "gradebook.csv"))}
    assert set(rows) == set(EXPECTED)
    for name, (status, exercises) in EXPECTED.items():
        row = rows[name]
        assert row["status"] == status, (name, row)
        for exercise, passes in exercises.items():
            assert (row[exercise] == "1.00") == passes, (name, exercise, row)
    assert rows["correct.ipynb"]["checks_passed"] == rows["correct.ipynb"]["checks"] == "12"
    book = json.loads((out / "gradebook.json").read_text())
    assert [Path(r["notebook"]).name for r in book] == [Path(r["notebook"]).name
                                                        for r in reports]
    assert all(c["message"] for r in book for e in r["exercises"] for c in e["checks"]
               if not c["passed"])


def _messages(reports, name: str, exercise: str) -> list[str]:
    report = next(r for r in reports if Path(r["notebook"]).name == name)
    return [c["message"] for e in report["exercises"] if e["name"] == exercise
            for c in e["checks"]]


@pytest.mark.notebook
def test_each_failure_says_why(graded_class):
    _, _, reports, _, _, _ = graded_class
    assert all("workbench.attacks.fgsm.fgsm, the package's own answer" in m
               for m in _messages(reports, "delegates.ipynb", "fgsm"))
    assert all("accuracy_and_confidence_curve" in m
               for m in _messages(reports, "delegates.ipynb", "sweep_eps"))
    hang = _messages(reports, "hangs.ipynb", "fgsm")
    assert "loop forever" in hang[0] and all("earlier check" in m for m in hang[1:])
    assert all("sys.exit(0)" in m for m in _messages(reports, "exits.ipynb", "fgsm"))
    assert all("os._exit(3)" in m for m in _messages(reports, "exits.ipynb", "sweep_eps"))
    raised = _messages(reports, "raises.ipynb", "fgsm")[0]
    assert "NameError" in raised and "cell 2" in raised and "line 3" in raised, raised
    assert "undefined_name" in raised
    assert any("clamp" in m for m in _messages(reports, "wrong.ipynb", "fgsm"))
    assert any("percent" in m for m in _messages(reports, "wrong.ipynb", "sweep_eps"))
    assert all("kernel" in m for m in _messages(reports, "forges_in_default.ipynb", "fgsm"))


@pytest.mark.notebook
def test_keep_wrote_each_executed_submission_with_its_outputs(graded_class):
    folder, out, _, _, _, _ = graded_class
    kept = folder.parent / "kept"
    executed = nbformat.read(kept / "correct.ipynb", 4)
    assert [c.execution_count for c in executed.cells] == [1, 2, 3, 4]  # every cell ran
    graded = {name for name, (status, _) in EXPECTED.items() if status == "graded"}
    assert {p.name for p in kept.glob("*.ipynb")} == graded  # nothing to run in the others
    assert not (folder / "correct.ipynb").read_text() == (kept / "correct.ipynb").read_text()


@pytest.mark.notebook
def test_hang_costs_about_one_check_time_limit(graded_class):
    _, _, reports, _, _, _ = graded_class
    report = next(r for r in reports if Path(r["notebook"]).name == "hangs.ipynb")
    seconds = [c["seconds"] for e in report["exercises"] if e["name"] == "fgsm"
               for c in e["checks"]]
    assert CHECK_S - 1 < seconds[0] < CHECK_S + 5 and sum(seconds[1:]) < 10, seconds


@pytest.mark.notebook
def test_submissions_touch_only_their_scratch_copy(graded_class):
    folder, _, _, _, before, tmp = graded_class
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after == before  # data.txt not deleted, notes.txt not overwritten, nothing added
    assert not (folder.parent / "gradebook.csv").exists()
    assert list(tmp.glob("workbench-*")) == []  # no temporary files left


def _descendants_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(
            f"/proc/{pid}").exists() else "X"
        if status != "Z":
            alive.append(pid)
    return alive


@pytest.mark.notebook
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_grade_stops_its_kernels_and_removes_its_files(tmp_path, sig):
    path = tmp_path / "02_fgsm.ipynb"
    nbformat.write(notebook(IMPORTS, HANG), path)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "grade", str(path),
                             "--check-timeout", "60"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp)))
    deadline = time.monotonic() + 120
    kernels = []
    while time.monotonic() < deadline and not kernels:
        kernels = list(tmp.glob("workbench-class-*/kernels/kernel-*"))
        time.sleep(0.2)
    assert kernels, "the kernel never started"
    kernel_pid = int(kernels[0].read_text())
    time.sleep(3)  # into the checks: the kernel is serving the hanging fgsm
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    time.sleep(0.5)
    assert _descendants_alive([kernel_pid]) == []
    assert list(tmp.glob("workbench-*")) == []


def test_time_limits_and_jobs_must_be_positive(tmp_path):
    path = tmp_path / "02_fgsm.ipynb"
    nbformat.write(notebook(IMPORTS), path)
    for flag, value in (("--check-timeout", "0"), ("--timeout", "-5"), ("--cell-timeout", "nan"),
                        ("--jobs", "0")):
        done = _workbench("grade", str(path), flag, value)
        assert done.returncode == 2 and flag in done.stderr + done.stdout, (flag, done.stderr)
    from workbench.exercises.grader import grade, grade_all

    with pytest.raises(ValueError, match="--check-timeout must be a positive"):
        grade(path, check_timeout=0)
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        grade_all([path], jobs=0)


def test_empty_files_and_non_notebooks_are_named(tmp_path):
    from workbench.exercises.grader import grade

    (tmp_path / "02_fgsm.ipynb").write_text("")
    report = grade(tmp_path / "02_fgsm.ipynb")
    assert report.status == "empty" and "empty" in report.run_message and not report.passed
    (tmp_path / "02_fgsm.ipynb").write_text('{"cells": 3}')
    report = grade(tmp_path / "02_fgsm.ipynb")
    assert report.status == "not a notebook" and "not a Jupyter notebook" in report.run_message
    (tmp_path / "02_fgsm.ipynb").write_text("print('hello')")
    assert "not JSON" in grade(tmp_path / "02_fgsm.ipynb").run_message
    done = _workbench("run", str(tmp_path / "02_fgsm.ipynb"))
    assert done.returncode == 2 and "not a Jupyter notebook" in done.stderr
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "essay.ipynb")  # of no course notebook
    report = grade(tmp_path / "essay.ipynb")
    assert report.status == "not a course notebook" and "02_fgsm.ipynb" in report.run_message


def test_a_folder_without_notebooks_and_a_missing_path_are_errors(tmp_path):
    done = _workbench("grade", str(tmp_path))
    assert done.returncode == 2 and "no notebooks" in done.stderr
    done = _workbench("grade", str(tmp_path / "missing"))
    assert done.returncode == 2 and "no notebook or folder" in done.stderr


def test_keep_refuses_two_submissions_of_the_same_name(tmp_path):
    from workbench.exercises.grader import grade_all

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        nbformat.write(notebook(IMPORTS), tmp_path / folder / "02_fgsm.ipynb")
    with pytest.raises(ValueError, match="several submissions are named"):
        grade_all([tmp_path / "a" / "02_fgsm.ipynb", tmp_path / "b" / "02_fgsm.ipynb"],
                  keep=tmp_path / "kept")


def test_the_command_grades_with_the_graders_own_time_limits(tmp_path, monkeypatch):
    import workbench.exercises.grader as grader
    from workbench.cli import main
    from workbench.exercises.core import CHECK_TIMEOUT_S

    calls = []
    monkeypatch.setattr(grader, "grade_all", lambda paths, **kwargs: calls.append(kwargs) or [])
    main(["grade", str(tmp_path)])
    assert (calls[0]["cell_timeout"], calls[0]["total_timeout"], calls[0]["check_timeout"]) == (
        grader.CELL_TIMEOUT_S, grader.TOTAL_TIMEOUT_S, CHECK_TIMEOUT_S)
    # A notebook inside its budget is never cut short by the per-cell limit.
    from test_notebooks import BUDGET_S

    assert grader.CELL_TIMEOUT_S > max(BUDGET_S.values())


def test_children_graded_side_by_side_share_the_cores_and_keep_what_the_caller_set():
    from workbench.exercises.grader import child_environment

    alone = child_environment(1, {"PATH": "/bin"}, cores=2)
    assert alone == {"PATH": "/bin"}  # one at a time: every core, the caller's settings
    two = child_environment(2, {"PATH": "/bin"}, cores=2)
    assert two == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert child_environment(2, {}, cores=8)["OMP_NUM_THREADS"] == "4"
    assert child_environment(3, {}, cores=2)["OMP_NUM_THREADS"] == "1"  # never 0
    assert child_environment(2, {"OMP_NUM_THREADS": "2"}, cores=2)["OMP_NUM_THREADS"] == "2"


@pytest.mark.notebook
def test_a_kernel_graded_beside_another_runs_torch_on_its_share_of_the_cores(tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    probe = notebook("import torch\nprint('threads', torch.get_num_threads())")
    for name in ("a.ipynb", "b.ipynb"):
        nbformat.write(probe, folder / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    done = _workbench("grade", str(folder), "--jobs", "2", "--keep", str(tmp_path / "kept"),
                      env=env)
    assert done.returncode == 1, done.stderr  # no exercise answered: graded, not passed
    cores = os.cpu_count() or 1
    for name in ("a.ipynb", "b.ipynb"):
        cell = nbformat.read(tmp_path / "kept" / name, 4).cells[0]
        assert cell.outputs[0]["text"].strip() == f"threads {max(1, cores // 2)}"
