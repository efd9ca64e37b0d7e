"""``workbench grade NOTEBOOK``: run a learner's notebook, then check its exercises.

1. The notebook runs top to bottom in lite mode in a fresh kernel, in a child process with a
   per-cell and a total time limit (the whole process group is killed past the total).
2. For each exercise of that notebook, the learner's function is taken from the last cell that
   defines it (with the notebook's imports) and checked in another child process, with a time
   limit per check and one for the process. The checks are the installed package's, captured
   before the learner's code runs; the kernel's state (where a learner could redefine
   ``check``) plays no part, and a check that reports nothing counts as failed.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from workbench.exercises.core import CHECK_TIMEOUT_S, CheckResult

CELL_TIMEOUT_S = 300
TOTAL_TIMEOUT_S = 1200


@dataclass
class GradeReport:
    notebook: str
    ran: bool
    run_message: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.ran and bool(self.results) and all(r.passed for r in self.results)

    def as_dict(self) -> dict:
        exercises = {}
        for r in self.results:
            exercises.setdefault(r.exercise, []).append(r.as_dict())
        return {
            "notebook": self.notebook,
            "passed": self.passed,
            "run": {"passed": self.ran, "message": self.run_message},
            "exercises": [{"name": name, "passed": all(c["passed"] for c in checks),
                           "checks": checks} for name, checks in exercises.items()],
        }

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


def _child_env() -> dict:
    env = dict(os.environ, WORKBENCH_MODE="lite", PYTHONUNBUFFERED="1")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run_child(args: list[str], timeout: float) -> tuple[bool, str]:
    """Run ``python -m workbench.exercises.grader ARGS`` in its own process group; kill the
    whole group (kernel included) past ``timeout``. Returns (finished, stderr tail)."""
    proc = subprocess.Popen([sys.executable, "-m", "workbench.exercises.grader", *args],
                            env=_child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"stopped after {timeout:.0f} s"
    return proc.returncode == 0, (err or "").strip()[-2000:]


# ----------------------------------------------------------------------------- the learner's code


def _code_cells(notebook) -> list[str]:
    """Code cells' sources with IPython magics and shell lines commented out."""
    cells = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        lines = [("# " + line) if line.lstrip().startswith(("%", "!")) else line
                 for line in cell.source.split("\n")]
        cells.append("\n".join(lines))
    return cells


def learner_source(notebook, function: str) -> str:
    """The code that defines ``function`` in a notebook: every top-level import of the code
    cells up to the defining one, then that cell's function and class definitions and simple
    constant assignments. Raises ValueError when no cell defines it, SyntaxError when it does
    not parse."""
    cells = _code_cells(notebook)
    defining = None
    for index, source in enumerate(cells):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            if f"def {function}(" in source:
                raise
            continue
        if any(isinstance(node, ast.FunctionDef) and node.name == function for node in tree.body):
            defining = index
    if defining is None:
        raise ValueError(f"no cell defines `def {function}(...)`: keep the exercise's "
                         f"function name and signature")
    parts = []
    for index, source in enumerate(cells[: defining + 1]):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            keep = isinstance(node, (ast.Import, ast.ImportFrom))
            if index == defining:
                keep = keep or isinstance(node, (ast.FunctionDef, ast.ClassDef)) or (
                    isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant))
            if keep:
                parts.append(ast.get_source_segment(source, node))
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- the two children


def _execute(path: str, out: str, cell_timeout: str) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    folder = str(Path(path).parent)  # the kernel starts here, so relative paths resolve
    client = NotebookClient(notebook, timeout=int(cell_timeout), kernel_name="python3",
                            allow_errors=True, resources={"metadata": {"path": folder}})
    client.execute()
    nbformat.write(notebook, out)


def _check(name: str, source_file: str, result_file: str, timeout: str) -> None:
    from workbench.exercises.core import run_checks_list
    from workbench.exercises.registry import get_exercise

    exercise = get_exercise(name)
    checks = list(exercise.checks)  # captured before the learner's code runs
    with open(result_file, "w") as sink:
        namespace = {"__name__": "learner"}
        source = Path(source_file).read_text()
        try:
            exec(compile(source, "<your notebook>", "exec"), namespace)
            fn = namespace[exercise.function]
        except Exception as err:
            message = f"your cell does not run on its own: {type(err).__name__}: {err}"
            results = [CheckResult(name, desc, False, message) for desc, _ in checks]
        else:
            results = run_checks_list(name, checks, fn, timeout=float(timeout))
        json.dump([r.as_dict() for r in results], sink)


def grade(notebook: str | Path, *, cell_timeout: int = CELL_TIMEOUT_S,
          total_timeout: int = TOTAL_TIMEOUT_S,
          check_timeout: float = CHECK_TIMEOUT_S) -> GradeReport:
    """Run a notebook in lite mode and check its exercises; see the module docstring."""
    from workbench.exercises.registry import exercises_for
    from workbench.notebooks import notebook_stem

    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    stem = notebook_stem(path)
    exercises = exercises_for(stem)
    if not exercises:
        raise ValueError(f"{path}: notebook {stem} has no graded exercises")
    source_nb = read_notebook(path)
    ran, message = execute_notebook(path, cell_timeout=cell_timeout,
                                    total_timeout=total_timeout)
    report = GradeReport(notebook=str(path), ran=ran, run_message=message)
    with tempfile.TemporaryDirectory(prefix="workbench-grade-") as tmp:
        for exercise in exercises:
            report.results += _grade_exercise(source_nb, exercise, Path(tmp), check_timeout)
    return report


def read_notebook(path: Path):
    """A notebook from .ipynb or a jupytext .py master, with a python3 kernelspec."""
    import jupytext
    import nbformat

    notebook = jupytext.read(path) if path.suffix == ".py" else nbformat.read(path, 4)
    if not notebook.metadata.get("kernelspec"):
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                           "language": "python"}
    return notebook


def execute_notebook(path: Path, *, cell_timeout: int = CELL_TIMEOUT_S,
                     total_timeout: int = TOTAL_TIMEOUT_S,
                     keep: Path | None = None) -> tuple[bool, str]:
    """Run a notebook top to bottom in lite mode in a fresh kernel, in its own folder (so
    relative paths resolve), with a per-cell and a total time limit. ``keep``: also write
    the executed notebook, with its outputs, there.

    Returns (True, "") when every cell ran, else (False, what went wrong first).
    """
    import nbformat

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="workbench-run-") as tmp:
        run_in = path.resolve().parent / f".running-{os.getpid()}-{path.stem}.ipynb"
        executed = Path(tmp) / "executed.ipynb"
        nbformat.write(read_notebook(path), run_in)
        try:
            finished, err = _run_child(["execute", str(run_in), str(executed), str(cell_timeout)],
                                       total_timeout)
        finally:
            run_in.unlink(missing_ok=True)
        if not finished or not executed.exists():
            last = err.splitlines()[-1] if err else "no output"
            return False, f"the notebook did not finish: {last}"
        if keep is not None:
            shutil.copyfile(executed, keep)
        errors = [(i, o) for i, c in enumerate(nbformat.read(executed, 4).cells)
                  if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
    if not errors:
        return True, ""
    index, error = errors[0]
    return False, (f"{len(errors)} cell(s) raised an error; first: cell {index}, "
                   f"{error['ename']}: {error['evalue']}")[:400]


def _grade_exercise(notebook, exercise, tmp: Path, check_timeout: float) -> list[CheckResult]:
    names = [desc for desc, _ in exercise.checks]
    try:
        source = learner_source(notebook, exercise.function)
    except (ValueError, SyntaxError) as err:
        return [CheckResult(exercise.name, d, False, str(err)) for d in names]
    source_file, result_file = tmp / f"{exercise.name}.py", tmp / f"{exercise.name}.json"
    source_file.write_text(source)
    limit = check_timeout * len(names) + 60
    finished, err = _run_child(["check", exercise.name, str(source_file), str(result_file),
                                str(check_timeout)], limit)
    reported = {}
    if result_file.exists() and result_file.stat().st_size:
        try:
            reported = {r["check"]: CheckResult(**r) for r in json.loads(result_file.read_text())}
        except (ValueError, TypeError):
            reported = {}
    missing = "no result: " + ("the checks were stopped after "
                               f"{limit:.0f} s" if not finished else (err or "the check crashed"))
    return [reported.get(d) or CheckResult(exercise.name, d, False, missing[:400]) for d in names]


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"execute": _execute, "check": _check}[command](*arguments)
