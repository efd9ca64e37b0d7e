"""The ``workbench`` command: doctor, lab, run, build, grade, experiment."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

# The table names its functions by dotted path: parsing imports neither torch nor keras.
from workbench.experiment_table import EXPERIMENTS, get_experiment

DEFAULT_RUN = "notebooks/solutions"  # what `workbench run` runs when given nothing
VERSIONED = ["torch", "torchvision", "timm", "numpy", "ipywidgets", "jupyterlab", "matplotlib",
             "scikit-image", "scikit-learn", "keras", "keras-hub"]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def doctor_report() -> tuple[str, int]:
    """Mode, device, versions and weights as text, and the exit code (1 when the lite weights
    are missing). Imports torch only when a GPU driver is present, to ask whether CUDA works."""
    from workbench.config import MODE_ENV, cuda_available, get_mode
    from workbench.models.registry import weights_status

    try:
        mode = get_mode()
    except ValueError as err:
        return f"error: {err}", 2
    cuda = cuda_available()
    how_mode = f"${MODE_ENV}={os.environ[MODE_ENV]}" if os.environ.get(MODE_ENV) else (
        "default: a CUDA GPU is present" if cuda else "default: no CUDA GPU")
    lines = [f"mode:    {mode} ({how_mode})",
             f"device:  {'cuda' if cuda else 'cpu'}",
             f"python:  {platform.python_version()} ({sys.executable})"]
    lines += [f"  {package:<13} {_version(package)}" for package in VERSIONED]
    lines.append("weights:")
    rows = weights_status()
    missing = [row for row in rows if not row["present"]]
    for row in rows:
        state = "present" if row["present"] else "missing"
        lines.append(f"  [{state:>7}] {row['name']:<24} {row['weights']}")
    lines += [f"  to get {row['name']}: {row['how']}" for row in missing]
    if any(r["mode"] == "full" for r in missing):
        lines.append(f"Full-mode weights download on first use in full mode (needs network); "
                     f"offline, use {MODE_ENV}=lite, which needs none of them.")
    return "\n".join(lines), 1 if any(r["mode"] == "lite" for r in missing) else 0


def doctor(args) -> int:
    text, code = doctor_report()
    print(text, file=sys.stderr if code == 2 else sys.stdout)
    return code


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def lab(args) -> int:
    """Open JupyterLab on notebooks/ with the workbench's settings (no news pop-up)."""
    root = repo_root()
    settings = root / "jupyter" / "lab"  # turns off JupyterLab's "news" pop-up
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings / "user-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(settings / "workspaces"))
    command = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={root / 'notebooks'}",
               *args.extra]
    os.execvpe(command[0], command, env)
    return 0  # not reached


def run(args) -> int:
    """Execute notebooks top to bottom in lite mode, keep the executed copies and write an HTML
    report of each one's time and outcome (is this machine ready for the workshop?)."""
    from workbench.exercises.grader import NotANotebook, submissions
    from workbench.exercises.readiness import run_notebooks, write_report

    given = args.notebooks or ([DEFAULT_RUN] if Path(DEFAULT_RUN).is_dir() else [])
    if not given:
        print(f"error: name the notebooks to run (no {DEFAULT_RUN}/ here to run by default)",
              file=sys.stderr)
        return 2
    try:
        paths = submissions(given)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: no notebooks in {', '.join(given)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        outcomes = run_notebooks(paths, out, cell_timeout=args.cell_timeout,
                                 total_timeout=args.timeout, progress=not args.quiet)
    except NotANotebook as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for outcome in outcomes:
        print(f"{outcome.path}: " + ("ran top to bottom in lite mode" if outcome.ok
                                     else outcome.run.message)
              + f" ({outcome.seconds:.0f} s)")
    report = write_report(outcomes, Path(args.report) if args.report else out / "report.html")
    print(f"executed copies in {out}/, report: {report}")
    return 0 if all(o.ok for o in outcomes) else 1


def build(args) -> int:
    """Write notebooks/student/ and notebooks/solutions/ from the masters."""
    from workbench.notebooks import build as build_notebooks

    try:
        stale = build_notebooks(Path(args.dir) if args.dir else None, check_only=args.check)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    if args.check and stale:
        print("run `workbench build` and commit the result", file=sys.stderr)
        return 1
    if not stale:
        print("all generated notebooks are up to date")
    return 0


def grade(args) -> int:
    """Grade one or many notebooks (files or folders); print a table, or the report as JSON,
    and write a gradebook when asked. Exit 0 only when every submission passes."""
    from workbench.exercises.grader import grade_all, write_gradebook

    many = len(args.notebooks) > 1 or any(Path(p).is_dir() for p in args.notebooks)

    def progress(report) -> None:
        if many:
            passed = sum(r.passed for r in report.results)
            print(f"graded {report.notebook}: {report.status}, {passed}/{len(report.results)} "
                  f"checks passed", file=sys.stderr, flush=True)

    try:
        reports = grade_all(args.notebooks, jobs=args.jobs, cell_timeout=args.cell_timeout,
                            total_timeout=args.timeout, check_timeout=args.check_timeout,
                            as_notebook=args.as_notebook, on_report=progress,
                            keep=Path(args.keep) if args.keep else None)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every kernel was stopped and the temporary files removed",
              file=sys.stderr)
        return 130
    if not reports:
        print("error: no notebooks (.ipynb) to grade there", file=sys.stderr)
        return 2
    if args.gradebook:
        for path in write_gradebook(reports, Path(args.gradebook)):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        data = [r.as_dict() for r in reports]
        print(json.dumps(data if many else data[0], indent=2))
    else:
        for report in reports:
            if many:
                print(f"\n== {report.notebook} ({report.status})")
            print(report.table() if report.status == "graded" else report.run_message)
    return 0 if all(r.passed for r in reports) else 1


def experiment(args) -> int:
    """Train (or load from the cache) and evaluate an experiment's models; print the results."""
    run_experiment, format_result = get_experiment(args.name).functions()
    kwargs = {"cache": not args.no_cache, "progress": sys.stderr.isatty()}
    if args.seeds is not None:
        kwargs["seeds"] = tuple(args.seeds)
    result = run_experiment(**kwargs)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def _seconds(value: str) -> float:
    """A time limit: a positive number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"a time limit is a positive number of seconds, got "
                                         f"{value}")
    return seconds


def _jobs(value: str) -> int:
    """--jobs: a whole number, at least 1."""
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"--jobs is a whole number, at least 1, got {value}")
    return jobs


def _seed(value: str) -> int:
    """A seed for ``--seeds``: a non-negative int."""
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"seeds are non-negative integers, got {value}")
    return seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="mode, device, versions, weights").set_defaults(fn=doctor)
    p = sub.add_parser("lab", help="open JupyterLab on notebooks/ (other options go to "
                                   "jupyter lab, e.g. --no-browser --port 8890)")
    p.set_defaults(fn=lab)
    for name, fn, text in (("run", run, "execute a notebook in lite mode"),
                           ("grade", grade, "grade notebooks' exercises: files, or folders of "
                                            "submissions")):
        p = sub.add_parser(name, help=text)
        if name == "run":
            p.add_argument("notebooks", nargs="*", metavar="NOTEBOOK_OR_FOLDER",
                           help=f"notebooks or folders of them (default: {DEFAULT_RUN}/)")
            p.add_argument("--out", default="workbench-run",
                           help="folder for the executed copies and the report")
            p.add_argument("--report", help="where to write the HTML report "
                                            "(default: OUT/report.html)")
            p.add_argument("--quiet", action="store_true", help="no progress bar")
        else:
            p.add_argument("notebooks", nargs="+", metavar="NOTEBOOK_OR_FOLDER")
        p.add_argument("--cell-timeout", type=_seconds, default=600,  # grader.CELL_TIMEOUT_S
                       help="seconds per cell")
        p.add_argument("--timeout", type=_seconds, default=1200,
                       help="seconds for the notebook to run")
        if name == "grade":
            p.add_argument("--check-timeout", type=_seconds, default=60,
                           help="seconds per check of an exercise")
            p.add_argument("--jobs", type=_jobs, default=1,
                           help="submissions graded at once (each in its own processes)")
            p.add_argument("--gradebook", metavar="FOLDER",
                           help="write gradebook.csv and gradebook.json there")
            p.add_argument("--as", dest="as_notebook", metavar="NOTEBOOK",
                           help="grade every submission as this course notebook (e.g. 02_fgsm) "
                                "when neither its metadata nor its name says")
            p.add_argument("--json", action="store_true", help="print the report(s) as JSON")
            p.add_argument("--keep", metavar="FOLDER",
                           help="also write each executed notebook, with its outputs, there")
        p.set_defaults(fn=fn)
    p = sub.add_parser("build", help="write student and solution notebooks")
    p.add_argument("--check", action="store_true", help="only report out-of-date notebooks")
    p.add_argument("--dir", help="notebooks folder (default: the repository's)")
    p.set_defaults(fn=build)
    p = sub.add_parser("experiment", help="train (or load) models and measure them: "
                                          + ", ".join(EXPERIMENTS),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="experiments:\n" + "\n".join(
                           f"  {e.name:<13} {e.help}" for e in EXPERIMENTS.values()))
    p.add_argument("name", choices=list(EXPERIMENTS), help="the experiment to run (see above)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-cache", action="store_true", help="train again, ignore cached weights")
    p.add_argument("--seeds", type=_seed, nargs="+", metavar="SEED",
                   help="train one model per seed (default: 0 1 2)")
    p.set_defaults(fn=experiment)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "lab":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "seeds", None) and len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds repeats a seed: {' '.join(map(str, args.seeds))}")
    args.extra = extra  # lab passes them on to jupyter lab
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
