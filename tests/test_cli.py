"""The command line and the import-time promises: `import workbench` is cheap, `workbench
doctor` answers in under 3 seconds, `workbench build --check` reports drift."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_import_workbench_is_fast_and_pulls_in_no_heavy_library():
    code = ("import sys, time; t = time.perf_counter(); import workbench, workbench.config; "
            "import workbench.models.registry; "
            "print(time.perf_counter() - t); "
            "print([m for m in ('torch', 'keras', 'keras_hub', 'matplotlib', 'tensorflow', "
            "'timm', 'torchvision') if m in sys.modules])")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    seconds, loaded = out.stdout.strip().splitlines()
    assert loaded == "[]"
    assert float(seconds) < 0.5


def test_doctor_reports_mode_device_versions_and_weights_quickly():
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "doctor"], capture_output=True,
                         text=True, timeout=30, env={**__import__("os").environ,
                                                     "WORKBENCH_MODE": "lite"})
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert elapsed < 3.0, f"doctor took {elapsed:.1f} s"
    text = out.stdout
    assert "mode:    lite ($WORKBENCH_MODE=lite)" in text
    assert "device:  cpu" in text
    assert "torch" in text and "torchvision" in text
    assert "[present] (all, lite)" in text
    for name in ("mobilenet_v2", "resnet50", "efficientnet_b0", "efficientnet_b0_advprop"):
        assert name in text
    assert "to get mobilenet_v2" in text or "[present] mobilenet_v2" in text


def test_doctor_says_how_to_fix_a_bad_mode():
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "doctor"], capture_output=True,
                         text=True, timeout=30, env={**__import__("os").environ,
                                                     "WORKBENCH_MODE": "fast"})
    assert out.returncode == 2
    assert "'fast'" in out.stderr and "lite" in out.stderr


def test_build_check_reports_drift(tmp_path):
    master = tmp_path / "01_demo.py"
    master.write_text("# %%\ndef f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n")
    args = [sys.executable, "-m", "workbench.cli", "build", "--dir", str(tmp_path)]
    first = subprocess.run([*args, "--check"], capture_output=True, text=True, timeout=60)
    assert first.returncode == 1 and "out of date" in first.stdout
    assert subprocess.run(args, capture_output=True, timeout=60).returncode == 0
    assert (tmp_path / "student" / "01_demo.ipynb").exists()
    again = subprocess.run([*args, "--check"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout
    student = json.loads((tmp_path / "student" / "01_demo.ipynb").read_text())
    assert "raise NotImplementedError" in "".join(student["cells"][0]["source"])


def test_grade_and_run_reject_a_missing_notebook():
    for command in ("grade", "run"):
        out = subprocess.run([sys.executable, "-m", "workbench.cli", command, "nope.ipynb"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "no notebook" in out.stderr and "nope.ipynb" in out.stderr


def test_lab_command_serves_the_notebooks_folder(tmp_path):
    """The README's first command ends in `workbench lab`: JupyterLab must start on notebooks/
    with the options dev.sh passes (--allow-root as root) and any the user adds."""
    import os
    import secrets
    import signal
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(8)
    args = [sys.executable, "-m", "workbench.cli", "lab", "--no-browser", f"--port={port}",
            "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 60
        listing = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/api/contents?token={token}"
                with urllib.request.urlopen(url, timeout=2) as response:
                    listing = json.load(response)
                break
            except OSError:
                time.sleep(0.5)
        assert listing is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        names = {item["name"] for item in listing["content"]}
        assert {"02_fgsm.py", "student", "solutions"} <= names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# ------------------------------------------------------------ workbench experiment shieldgemma

SHIELDGEMMA_ROW_KEYS = {"harm_type", "auroc", "auroc_std", "auroc_min", "auroc_by_seed",
                        "auroc_unseen", "auroc_unseen_std", "auroc_unseen_min",
                        "auroc_unseen_by_seed"}


def test_experiment_shieldgemma_passes_its_options(monkeypatch, capsys):
    """Parsing only: the experiment is replaced by a recorder returning a canned result."""
    import workbench.safety.evaluation as evaluation
    from workbench.cli import main

    calls = []
    canned = {"rows": [{"harm_type": "harassment", "auroc": 0.9, "auroc_std": 0.01,
                        "auroc_min": 0.89, "auroc_unseen": 0.85, "auroc_unseen_std": 0.02,
                        "auroc_unseen_min": 0.83}], "seeds": [4, 7]}

    def record(**kwargs):
        calls.append(kwargs)
        return canned

    monkeypatch.setattr(evaluation, "run_shieldgemma_experiment", record)
    assert main(["experiment", "shieldgemma", "--json", "--no-cache", "--seeds", "4", "7"]) == 0
    assert calls[-1] == {"cache": False, "progress": False, "seeds": (4, 7)}
    assert json.loads(capsys.readouterr().out) == canned
    assert main(["experiment", "shieldgemma"]) == 0
    assert calls[-1] == {"cache": True, "progress": False}  # the experiment's default seeds
    table = capsys.readouterr().out
    assert "harassment" in table and "0.900 +- 0.010 (0.890)" in table
    assert "0.850 +- 0.020 (0.830)" in table


def test_experiment_shieldgemma_rejects_bad_seeds(capsys):
    from workbench.cli import main

    for argv, message in ((["--seeds", "-1"], "non-negative"), (["--seeds", "x"], "got x"),
                          (["--seeds", "0", "0"], "repeats a seed"), (["--seeds"], "expected")):
        with pytest.raises(SystemExit) as exit_:
            main(["experiment", "shieldgemma", *argv])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_parsing_experiment_options_imports_no_framework():
    code = ("import sys\nfrom workbench.cli import main\n"
            "try:\n    main(['experiment', 'shieldgemma', '--seeds', '1', '1'])\n"
            "except SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'keras', 'keras_hub', 'tensorflow') "
            "if m in sys.modules])")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_experiment_shieldgemma_json_from_the_cached_models(shieldgemma_experiment, capsys):
    """The real command, in-process, on seed 0's cached lite model: the numbers the session's
    three-seed experiment measured for seed 0."""
    from workbench.cli import main
    from workbench.safety import HarmType

    capsys.readouterr()
    started = time.monotonic()
    assert main(["experiment", "shieldgemma", "--json", "--seeds", "0"]) == 0
    seconds = time.monotonic() - started
    result = json.loads(capsys.readouterr().out)
    with capsys.disabled():
        print(f"\nworkbench experiment shieldgemma --json --seeds 0: {seconds:.1f} s from the "
              "cache")
    assert result["seeds"] == [0] and result["std"] == "sample (ddof=1)"
    assert [row["harm_type"] for row in result["rows"]] == [h.value for h in HarmType]
    for row, three_seeds in zip(result["rows"], shieldgemma_experiment["rows"]):
        assert set(row) == SHIELDGEMMA_ROW_KEYS
        for key in ("auroc", "auroc_unseen"):
            assert row[f"{key}_by_seed"] == three_seeds[f"{key}_by_seed"][:1]
            assert row[key] == row[f"{key}_min"] == pytest.approx(row[f"{key}_by_seed"][0],
                                                                  abs=5e-5)
            assert row[f"{key}_std"] == 0.0


# ------------------------------------------------------------------ the table of experiments


def test_every_experiment_of_the_table_resolves_to_its_functions():
    """Without running any: each row's run and format functions import and are callable, and
    the run function takes the keywords the command passes."""
    import inspect

    from workbench.experiment_table import EXPERIMENTS

    assert set(EXPERIMENTS) >= {"advprop", "shieldgemma"}
    for name, row in EXPERIMENTS.items():
        assert row.name == name and row.help and "\n" not in row.help
        run, format_result = row.functions()
        assert callable(run) and callable(format_result), name
        parameters = inspect.signature(run).parameters
        assert {"seeds", "cache", "progress"} <= set(parameters), (name, list(parameters))
        assert len(inspect.signature(format_result).parameters) == 1, name


def test_experiment_help_lists_every_experiment_of_the_table():
    from workbench.experiment_table import EXPERIMENTS

    out = subprocess.run([sys.executable, "-m", "workbench.cli", "experiment", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for row in EXPERIMENTS.values():
        assert row.name in out.stdout and row.help[:40] in " ".join(out.stdout.split())
    top = subprocess.run([sys.executable, "-m", "workbench.cli", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert all(name in top.stdout for name in EXPERIMENTS)


def test_an_unknown_experiment_lists_the_known_ones(capsys):
    from workbench.cli import main
    from workbench.experiment_table import get_experiment

    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "trades"])
    assert exit_.value.code == 2
    assert "advprop" in capsys.readouterr().err
    with pytest.raises(ValueError, match="known: .*shieldgemma"):
        get_experiment("trades")


# ------------------------------------------------------ one way to summarise seeds, in both


def test_mean_std_is_the_sample_standard_deviation():
    import statistics

    from workbench.stats import STD, mean_std

    assert STD == "sample (ddof=1)"
    values = [0.80, 0.90, 0.85, 0.70]
    mean, std = mean_std(values)
    assert mean == pytest.approx(0.8125)
    assert std == pytest.approx(statistics.stdev(values)) == pytest.approx(0.0853912, abs=1e-7)
    assert std != pytest.approx(statistics.pstdev(values))  # not the population std
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


PER_SEED = {0: 0.80, 1: 0.90, 2: 0.70}  # made-up per-seed values, the same for both experiments


def test_the_advprop_experiment_reports_the_sample_std(monkeypatch):
    """Its summary of seeds, on made-up per-seed results: no model trains."""
    import workbench.experiments as experiments
    from workbench.stats import STD, mean_std

    monkeypatch.setattr(experiments, "load_digits_split", lambda: (None, None, None, None))
    monkeypatch.setattr(experiments, "train_or_load", lambda method, seed, **kwargs: seed)
    curve = list(experiments.CURVE_EPS)
    monkeypatch.setattr(experiments, "_evaluate", lambda model, x, y, *, seed, **kwargs: {
        "seed": seed, "clean_acc": 1.0 - PER_SEED[seed] / 10, "robust_acc": PER_SEED[seed],
        "pgd10_acc": PER_SEED[seed] + 0.05, "robust_attack": "worst case",
        "fgsm_curve": [0.5] * len(curve), "pgd_curve": [0.4] * len(curve)})
    # In this process (the fakes do not reach workers) and not cached (nor read from a cache).
    result = experiments.run_advprop_experiment(seeds=tuple(PER_SEED), workers=1, cache=False)
    assert result["std"] == STD
    for row in result["rows"]:
        assert (row["robust_acc"], row["robust_acc_std"]) == mean_std(list(PER_SEED.values()))


def test_the_shieldgemma_experiment_reports_the_sample_std(monkeypatch):
    """Its summary of seeds, on made-up AUROCs: no scorer is built, keras is not imported."""
    import types

    import workbench.safety.evaluation as evaluation
    from workbench.safety import HarmType
    from workbench.stats import STD, mean_std

    fake_lite = types.ModuleType("workbench.safety.lite")
    fake_lite.load_lite_scorer = lambda seed, **kwargs: seed
    monkeypatch.setitem(sys.modules, "workbench.safety.lite", fake_lite)
    monkeypatch.setattr(evaluation, "auroc_by_harm_type",
                        lambda seed, rows: {harm: PER_SEED[seed] for harm in HarmType})
    result = evaluation.run_shieldgemma_experiment(seeds=tuple(PER_SEED))
    assert result["std"] == STD
    for row in result["rows"]:
        for key in ("auroc", "auroc_unseen"):
            assert (row[key], row[f"{key}_std"]) == mean_std(list(PER_SEED.values()))


def test_run_writes_executed_copies_and_a_report_of_each_notebooks_time_and_outcome(tmp_path):
    """`workbench run` is the check that a room is ready: every notebook runs, the executed
    copies and an HTML report (time, outcome, the failing cell) are written, and the exit code
    says whether all ran."""
    import nbformat

    folder = tmp_path / "course"
    folder.mkdir()
    for name, source in (("01_fine.ipynb", "x = 6 * 7\nprint(x)"),
                         ("02_broken.ipynb", "raise RuntimeError('no weights here')")):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nbformat.write(nb, folder / name)
    out = tmp_path / "executed"
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "run", str(folder), "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "01_fine.ipynb: ran top to bottom" in done.stdout
    assert "RuntimeError: no weights here" in done.stdout
    executed = nbformat.read(out / "01_fine.ipynb", 4)
    assert executed.cells[0].outputs[0]["text"] == "42\n"
    report = (out / "report.html").read_text()
    assert "not ready: 1 of 2 notebooks failed" in report
    assert "01_fine.ipynb" in report and "02_broken.ipynb" in report and "no weights here" in report
    assert "torch" in report and "cores" in report
    assert "cell" in done.stderr  # the progress bar counts cells
