"""``workbench grade``: run learners' notebooks, then check their exercises.

For each submission:

1. The notebook runs top to bottom in lite mode in a fresh kernel, in a scratch copy of its
   folder, with a per-cell and a total time limit (:class:`~workbench.exercises.kernel.
   KernelSession`).
2. Each exercise's checks run here, in the grader's process, which never runs the learner's
   code: the learner's function is called in their kernel (with everything the notebook
   defined before it), one forked child per call, with the package's answers to that exercise
   switched off; only data comes back (:mod:`~workbench.exercises.transport`). A call that does
   not return within the check's time limit fails that check, and the exercise's later checks
   fail at once.

:func:`grade_all` grades many submissions, each in a child process of its own, up to ``jobs``
at a time, and :func:`write_gradebook` writes the class's CSV and JSON. An interrupt (Ctrl-C,
SIGTERM) stops every child and kernel and removes the temporary files.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from workbench.exercises.core import (CHECK_TIMEOUT_S, CheckFailed, CheckResult, CheckTimedOut,
                                      LearnerRaised)

# Per cell: above the longest cell of the course, notebook 05's experiment from an empty cache
# (4 to 5.5 minutes on 2 cores), so that a notebook inside its budget is never cut short.
CELL_TIMEOUT_S = 600
TOTAL_TIMEOUT_S = 1200
CHILD_MARGIN_S = 120  # beyond its notebook's and checks' limits, a grading child is killed


class NotANotebook(ValueError):
    """The file is empty, not JSON, or JSON that is not a Jupyter notebook."""


@dataclass
class GradeReport:
    notebook: str
    ran: bool
    run_message: str
    results: list[CheckResult] = field(default_factory=list)
    status: str = "graded"  # or: empty, not a notebook, not a course notebook, timed out, ...

    @property
    def passed(self) -> bool:
        return self.ran and bool(self.results) and all(r.passed for r in self.results)

    def exercise_scores(self) -> dict[str, tuple[int, int]]:
        """(checks passed, checks) per exercise, in order."""
        scores: dict[str, tuple[int, int]] = {}
        for r in self.results:
            passed, total = scores.get(r.exercise, (0, 0))
            scores[r.exercise] = (passed + r.passed, total + 1)
        return scores

    def as_dict(self) -> dict:
        exercises = {}
        for r in self.results:
            exercises.setdefault(r.exercise, []).append(r.as_dict())
        return {
            "notebook": self.notebook,
            "status": self.status,
            "passed": self.passed,
            "run": {"passed": self.ran, "message": self.run_message},
            "exercises": [{"name": name, "passed": all(c["passed"] for c in checks),
                           "checks": checks} for name, checks in exercises.items()],
        }

    @classmethod
    def from_dict(cls, data: dict) -> GradeReport:
        results = [CheckResult(**check) for exercise in data["exercises"]
                   for check in exercise["checks"]]
        return cls(data["notebook"], data["run"]["passed"], data["run"]["message"], results,
                   data.get("status", "graded"))

    def table(self) -> str:
        rows = [("notebook runs top to bottom", self.ran, self.run_message)]
        rows += [(f"{r.exercise}: {r.check}", r.passed, r.message) for r in self.results]
        width = max(len(name) for name, _, _ in rows)
        lines = [f"{'check'.ljust(width)}  result", f"{'-' * width}  ------"]
        for name, ok, message in rows:
            lines.append(f"{name.ljust(width)}  {'PASS' if ok else 'FAIL'}")
            if not ok and message:
                lines.append(f"{''.ljust(width)}    {message}")
        passed = sum(ok for _, ok, _ in rows)
        lines.append(f"{passed}/{len(rows)} passed: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def check_limits(**limits: float) -> None:
    """ValueError naming the first limit that is not a positive number of seconds."""
    for name, value in limits.items():
        if not value > 0:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be a positive number of seconds, got {value}")


# ----------------------------------------------------------------------------- reading

def read_notebook(path: Path):
    """A notebook from .ipynb or a jupytext .py master, with a python3 kernelspec.
    NotANotebook when the file is empty or not a notebook."""
    import jupytext
    import nbformat

    path = Path(path)
    if path.stat().st_size == 0:
        raise NotANotebook(f"{path.name} is empty: submit the saved notebook (.ipynb)")
    if path.suffix == ".py":
        notebook = jupytext.read(path)
    else:
        try:
            notebook = nbformat.read(path, as_version=4)
            nbformat.validate(notebook)
        except Exception as err:  # not JSON, or JSON of another kind
            what = "not JSON" if isinstance(err, nbformat.reader.NotJSONError) else (
                "JSON, but not a notebook's")
            raise NotANotebook(f"{path.name} is not a Jupyter notebook ({what}): submit the "
                               f".ipynb file saved from Jupyter or Colab") from None
    if not notebook.metadata.get("kernelspec"):
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                           "language": "python"}
    return notebook


def course_notebook(path: Path, notebook) -> str:
    """The course notebook (stem, "02_fgsm") a submission belongs to: its ``workbench``
    metadata, else its file name."""
    from workbench.notebooks import notebook_stem

    stem = notebook.metadata.get("workbench", {}).get("notebook")
    return stem or notebook_stem(Path(path))


# ----------------------------------------------------------------------------- the learner's function

class RemoteFunction:
    """The learner's function as the checks see it: each call runs in the learner's kernel
    (:meth:`KernelSession.call`) and gives back its result, or raises what a check expects
    (CheckTimedOut, NotImplementedError, LearnerRaised, CheckFailed naming the problem)."""

    served_from_kernel = True

    def __init__(self, session, exercise, run):
        self.session, self.exercise, self.run = session, exercise, run
        self.__name__ = exercise.function
        self.stopped: str | None = None  # set after a hang: later checks fail at once

    def __call__(self, *args, **kwargs):
        from workbench.exercises import transport
        from workbench.exercises.core import time_left
        from workbench.exercises.kernel import KernelStopped

        if self.stopped:
            raise CheckTimedOut(self.stopped)
        left = time_left()
        if left <= 0:
            raise CheckTimedOut("no time left in this check: does your function run the "
                                "attack many times?")
        try:
            status, data = self.session.call(self.exercise.function, args, kwargs,
                                             timeout=left,
                                             references=self.exercise.references)
        except KernelStopped as err:
            self.stopped = f"not run: the notebook's kernel stopped ({err})"
            raise CheckTimedOut(self.stopped) from None
        arguments = transport.tracked((args, kwargs))
        for obj, change in zip(arguments, data.get("changes", [])):
            if change is not None:
                transport.apply_changes(obj, change)
        name = self.exercise.function
        if status["status"] == "timeout":
            self.stopped = (f"not run: your {name} did not return within {left:.0f} s in an "
                            f"earlier check")
            raise CheckTimedOut(f"no answer after {left:.0f} s: does your function loop "
                                f"forever, or run the attack many times?")
        if status["status"] == "exited":
            raise CheckFailed(f"your {name} ended its process (exit code {status['code']}) "
                              f"instead of returning: remove os._exit / sys.exit from it")
        error = data.get("error")
        if error:
            raise self._failure(error)
        return transport.decode_result(data["result"], arguments)

    def _where(self, where: dict | None) -> str:
        if not where:
            return ""
        cell = self.run.cell_of(where["execution_count"])
        if cell is None:
            return f"line {where['line']}: `{where['text']}`"
        return (f"cell {cell.index} (it starts `{cell.first_line[:60]}`), line {where['line']}:"
                f" `{where['text']}`")

    def _failure(self, error: dict) -> Exception:
        name = self.exercise.function
        kind = error["kind"]
        if kind == "raised" and error["type"] == "NotImplementedError":
            return NotImplementedError(error["message"])
        if kind == "raised":
            return LearnerRaised(error["type"], error["message"], self._where(error["where"]))
        if kind == "exit":
            return CheckFailed(f"your {name} called {error['how']}, which ends the program: "
                               f"return the answer instead")
        if kind == "reference":
            return CheckFailed(f"your {name} calls {error['called']}, the package's own answer "
                               f"to this exercise, which is switched off while your answer is "
                               f"graded: write the steps yourself")
        if kind == "missing":
            first = self.run.errors[0] if self.run.errors else None
            why = (f"; cell {first.index} raised {first.error}" if first else "")
            return CheckFailed(f"there is no function `{name}` in your notebook after it ran "
                               f"(found {error['type']}){why}: keep the exercise's function "
                               f"name and run its cell")
        return CheckFailed(f"the grader could not call your {name}: {error.get('type')}: "
                           f"{error.get('message')}")


# ----------------------------------------------------------------------------- one submission

def _report_for_unreadable(path: Path, err: Exception) -> GradeReport:
    status = "empty" if "is empty" in str(err) else (
        "not a notebook" if isinstance(err, NotANotebook) else "not a course notebook")
    return GradeReport(str(path), False, str(err), status=status)


def grade(notebook: str | Path, *, cell_timeout: float = CELL_TIMEOUT_S,
          total_timeout: float = TOTAL_TIMEOUT_S, check_timeout: float = CHECK_TIMEOUT_S,
          as_notebook: str | None = None, pid_dir: Path | None = None,
          keep: Path | None = None) -> GradeReport:
    """Run one notebook in lite mode and check its exercises; see the module docstring.

    ``as_notebook``: the course notebook it is ("02_fgsm"), when neither its metadata nor its
    name says. ``keep``: also write the executed notebook, with its outputs, there. FileNotFoundError when there is no file; an empty file, a file that is not a
    notebook, or one of no course notebook gives a report saying so.
    """
    from workbench.exercises.kernel import KernelSession, KernelStopped
    from workbench.exercises.registry import exercises_for

    check_limits(cell_timeout=cell_timeout, timeout=total_timeout, check_timeout=check_timeout)
    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    try:
        source = read_notebook(path)
        stem = as_notebook or course_notebook(path, source)
        exercises = exercises_for(stem)
        if not exercises:
            raise ValueError(f"notebook {stem} has no graded exercises")
    except ValueError as err:
        return _report_for_unreadable(path, err)
    with tempfile.TemporaryDirectory(prefix="workbench-grade-") as tmp:
        try:
            session = KernelSession(path, Path(tmp), pid_dir=pid_dir)
        except KernelStopped as err:
            return GradeReport(str(path), False, str(err), status="crashed")
        try:
            run = session.execute(source, cell_timeout=cell_timeout, total_timeout=total_timeout)
            if keep is not None:
                import nbformat

                nbformat.write(source, keep)
            report = GradeReport(str(path), run.ok, run.message)
            for exercise in exercises:
                report.results += _check_exercise(session, exercise, run, check_timeout)
        finally:
            session.close()
    return report


def _check_exercise(session, exercise, run, check_timeout: float) -> list[CheckResult]:
    from workbench.exercises.core import run_checks_list

    return run_checks_list(exercise.name, exercise.checks,
                           RemoteFunction(session, exercise, run), timeout=check_timeout)


def execute_notebook(path: Path, *, cell_timeout: float = CELL_TIMEOUT_S,
                     total_timeout: float = TOTAL_TIMEOUT_S,
                     keep: Path | None = None) -> tuple[bool, str]:
    """Run a notebook top to bottom in lite mode in a fresh kernel, in a scratch copy of its
    folder, with a per-cell and a total time limit; its own ``check(...)`` cells run as a
    learner's would. ``keep``: also write the executed notebook, with its outputs, there.

    Returns (True, "") when every cell ran, else (False, what went wrong first).
    """
    run = run_notebook(path, cell_timeout=cell_timeout, total_timeout=total_timeout, keep=keep)
    return run.ok, run.message


def run_notebook(path: Path, *, cell_timeout: float = CELL_TIMEOUT_S,
                 total_timeout: float = TOTAL_TIMEOUT_S, keep: Path | None = None,
                 on_cell: Callable | None = None):
    """:func:`execute_notebook`'s run, whole: a :class:`~workbench.exercises.kernel.NotebookRun`
    with every code cell's outcome and seconds (a kernel that cannot start is a run stopped
    before its first cell). ``on_cell(cell_run)`` is called after each cell."""
    import nbformat

    from workbench.exercises.kernel import KernelSession, KernelStopped, NotebookRun

    check_limits(cell_timeout=cell_timeout, timeout=total_timeout)
    path = Path(path)
    notebook = read_notebook(path)
    with tempfile.TemporaryDirectory(prefix="workbench-run-") as tmp:
        try:
            session = KernelSession(path, Path(tmp), grading=False)
        except KernelStopped as err:
            return NotebookRun(stopped=str(err))
        try:
            run = session.execute(notebook, cell_timeout=cell_timeout,
                                  total_timeout=total_timeout, on_cell=on_cell)
        finally:
            session.close()
    if keep is not None:
        nbformat.write(notebook, keep)
    return run


# ----------------------------------------------------------------------------- a class

def submissions(paths) -> list[Path]:
    """The files to grade: each file given, and every ``.ipynb`` in each folder given (and its
    subfolders, one student per folder is fine), sorted. FileNotFoundError for a missing path."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb")
                            if ".ipynb_checkpoints" not in p.parts and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no notebook or folder at {path}")
    return found


def _child_limit(total_timeout: float, check_timeout: float) -> float:
    from workbench.exercises.registry import EXERCISES

    most_checks = max(sum(len(e.checks) for e in EXERCISES.values() if e.notebook == stem)
                      for stem in {e.notebook for e in EXERCISES.values()})
    return total_timeout + most_checks * check_timeout + CHILD_MARGIN_S


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM a grading child's process group (it stops its kernel), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _kill_kernels(pid_dir: Path) -> None:
    """Kill the process group of every kernel a killed child left behind."""
    for pid_file in pid_dir.glob("kernel-*"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ValueError, OSError):
            pass


class _Child:
    """A grading child: its process, when it started, and what it writes (read by threads, so
    that neither pipe fills up; a report travels by pipe, not through a file a submission's
    kernel could find)."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.started = time.monotonic()
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
                        for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def report(self, path: Path, timed_out: bool, limit: float) -> GradeReport:
        for reader in self.readers:
            reader.join(timeout=10)
        if timed_out:
            return GradeReport(str(path), False, f"grading stopped after {limit:.0f} s",
                               status="timed out")
        try:
            return GradeReport.from_dict(json.loads(b"".join(self.out)))
        except (ValueError, KeyError, TypeError):
            tail = b"".join(self.err).decode(errors="replace").strip().splitlines()[-1:]
            return GradeReport(str(path), False, f"the grader crashed (exit code "
                               f"{self.proc.returncode})" + (f": {tail[0][:300]}" if tail else ""),
                               status="crashed")


def child_environment(jobs: int, environ=None, cores: int | None = None) -> dict[str, str]:
    """The environment of a grading child (and so of its kernel) when ``jobs`` grade at once:
    the cores shared out, ``cores // jobs`` OpenMP threads each (at least one), and threads
    that wait sleep rather than spin. Without this, two notebooks graded side by side on 2
    cores took 362 s where one after the other took 267 s (and 155 s with it). What the
    caller's environment already sets is kept."""
    env = dict(os.environ if environ is None else environ)
    if jobs > 1:
        if cores is None:
            cores = os.cpu_count() or 1
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // jobs)))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def grade_all(paths, *, jobs: int = 1, cell_timeout: float = CELL_TIMEOUT_S,
              total_timeout: float = TOTAL_TIMEOUT_S, check_timeout: float = CHECK_TIMEOUT_S,
              as_notebook: str | None = None, keep: Path | None = None,
              on_report: Callable[[GradeReport], None] | None = None) -> list[GradeReport]:
    """Grade every submission in ``paths`` (files and folders, see :func:`submissions`), each
    in a child process of its own, at most ``jobs`` at a time, sharing the cores out
    (:func:`child_environment`); reports in submission order.
    ``keep``: a folder to write each executed submission to, with its outputs, under its own
    file name (ValueError when two submissions share one).

    A child that crashes or runs past its limit gives a report saying so, and the others are
    still graded. Ctrl-C or SIGTERM stops every child and kernel, removes the temporary files
    and raises KeyboardInterrupt.
    """
    check_limits(cell_timeout=cell_timeout, timeout=total_timeout, check_timeout=check_timeout)
    if int(jobs) < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    files = submissions(paths)
    kept = _kept_paths(files, keep)
    limit = _child_limit(total_timeout, check_timeout)
    env = child_environment(int(jobs))
    reports: dict[int, GradeReport] = {}
    running: dict[int, _Child] = {}
    tmp = Path(tempfile.mkdtemp(prefix="workbench-class-"))
    pid_dir = tmp / "kernels"
    pid_dir.mkdir()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        pending = list(enumerate(files))
        while pending or running:
            while pending and len(running) < jobs:
                index, path = pending.pop(0)
                running[index] = _Child(
                    [sys.executable, "-P", "-m", "workbench.exercises.grader", "one",
                     str(path.resolve()), str(cell_timeout), str(total_timeout),
                     str(check_timeout), as_notebook or "", str(pid_dir), kept[index]], cwd=tmp,
                    env=env)
            for index, child in list(running.items()):
                timed_out = time.monotonic() - child.started > limit
                if child.proc.poll() is None and not timed_out:
                    continue
                if timed_out:
                    _stop_group(child.proc)
                del running[index]
                reports[index] = child.report(files[index], timed_out, limit)
                if on_report is not None:
                    on_report(reports[index])
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for child in running.values():
            _stop_group(child.proc)
        _kill_kernels(pid_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    return [reports[i] for i in range(len(files))]


def _kept_paths(files: list[Path], keep: Path | None) -> list[str]:
    """Where each submission's executed copy goes ("" for nowhere), checked up front."""
    if keep is None:
        return [""] * len(files)
    names = [f.name for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--keep writes each executed notebook under its file name, and "
                         f"several submissions are named {twice}: grade them separately")
    keep = Path(keep)
    keep.mkdir(parents=True, exist_ok=True)
    return [str((keep / name).resolve()) for name in names]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def write_gradebook(reports: list[GradeReport], folder: Path) -> tuple[Path, Path]:
    """``gradebook.csv`` (one row per submission: status, whether it ran, the fraction of each
    exercise's checks passed, the checks passed in all) and ``gradebook.json`` (every check's
    result and message) in ``folder``; returns their paths."""
    from workbench.exercises.registry import EXERCISES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seen = {r.exercise for report in reports for r in report.results}
    exercise_names = [name for name in EXERCISES if name in seen]
    csv_path, json_path = folder / "gradebook.csv", folder / "gradebook.json"
    with open(csv_path, "w", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["submission", "status", "runs", *exercise_names, "checks_passed",
                         "checks", "message"])
        for report in reports:
            scores = report.exercise_scores()
            cells = [(f"{scores[n][0] / scores[n][1]:.2f}" if n in scores else "")
                     for n in exercise_names]
            writer.writerow([report.notebook, report.status, "yes" if report.ran else "no",
                             *cells, sum(r.passed for r in report.results), len(report.results),
                             report.run_message])
    json_path.write_text(json.dumps([r.as_dict() for r in reports], indent=1))
    return csv_path, json_path


def _grade_one(path: str, cell_timeout: str, total_timeout: str, check_timeout: str,
               as_notebook: str, pid_dir: str, keep: str = "") -> None:
    """Child entry point of :func:`grade_all`: grade one submission, print its report."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = grade(path, cell_timeout=float(cell_timeout), total_timeout=float(total_timeout),
                   check_timeout=float(check_timeout), as_notebook=as_notebook or None,
                   pid_dir=Path(pid_dir), keep=Path(keep) if keep else None)
    sys.stdout.write(json.dumps(report.as_dict()))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"one": _grade_one}[command](*arguments)
