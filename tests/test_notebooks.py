"""The notebooks: generated versions match their masters, run top to bottom in lite mode within
their time budget, and grade as a learner's would (solutions pass, student versions fail)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest

from workbench.notebooks import BEGIN, END, build, masters, output_path, render

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
# Seconds each notebook may take to run top to bottom in lite mode on 2 CPU cores.
# 04_lat ran in about 180 s from an empty cache on the machine its budget was set on, and in
# 266 s by hand on 2026-12-03's, over its budget (its experiment trains 24 models); grading
# adds its checks. 05_lat_llm's budget is its issue's: the lite experiment over 3 seeds and
# the notebook that shows it, 6 minutes from an empty cache; 06_redteam's is its issue's, 4
# minutes from an empty cache, notebook 01's lite scorer and the 3-seed experiment included.
BUDGET_S = {"00_setup": 90, "01_shieldgemma": 300, "02_fgsm": 240, "03_pgd": 420,
            "04_lat": 240, "05_lat_llm": 360, "06_redteam": 240, "07_defenses": 240}
# The budgets are measured by hand from an empty cache and reported in each note. CI's
# machines are not all as fast as the one they were measured on, nor is one machine always
# as fast: the unchanged notebook 04 graded in 205, 281, 344 and 483 s in four CI runs, and
# ran by hand in 546 s on 2026-12-02 and in 266 s on 2026-12-03 (an empty cache each time, 2
# cores); a small conv net's training, timed on the same machines, did not follow that
# spread (it ran faster on the day notebook 04 ran slower). So the tests allow MACHINE_SLACK
# times a budget: a notebook whose time grows that much still fails, and each note says how
# long the notebooks took.
MACHINE_SLACK = 2.5


def allowed_s(stem: str) -> float:
    """What a budget test allows ``stem``, in seconds."""
    return BUDGET_S[stem] * MACHINE_SLACK


def test_every_master_has_a_budget_and_a_jupytext_header():
    found = {m.stem for m in masters()}
    assert found == set(BUDGET_S)
    for master in masters():
        assert master.read_text().startswith("# ---\n# jupyter:\n#   jupytext:"), master


def test_generated_notebooks_match_their_masters():
    stale = build(check_only=True)
    assert not stale, f"run `workbench build` and commit: {stale}"


def test_student_versions_hide_answers_and_solutions_keep_them():
    for master in masters():
        student = output_path(master, "student").read_text()
        solution = output_path(master, "solutions").read_text()
        assert BEGIN not in student + solution and END not in student + solution
        answers = master.read_text().count(BEGIN)
        assert student.count("raise NotImplementedError") == answers
    assert "project_l2" in output_path(NOTEBOOKS / "03_pgd.py", "student").read_text()
    fgsm_solution = output_path(NOTEBOOKS / "02_fgsm.py", "solutions").read_text()
    answer_line = "(grad,) = torch.autograd.grad(loss, x_adv)"
    assert answer_line in fgsm_solution
    assert answer_line not in output_path(NOTEBOOKS / "02_fgsm.py", "student").read_text()


def test_generated_notebooks_carry_kernel_metadata():
    for master in masters():
        for variant in ("student", "solutions"):
            notebook = nbformat.read(output_path(master, variant), 4)
            assert notebook.metadata["kernelspec"]["name"] == "python3"
            assert notebook.metadata["language_info"]["name"] == "python"
            assert notebook.metadata["workbench"]["notebook"] == master.stem
            nbformat.validate(notebook)


def test_unbalanced_markers_are_an_error(tmp_path):
    master = tmp_path / "99_bad.py"
    master.write_text("# %%\ndef f():\n    # BEGIN SOLUTION\n    return 1\n")
    with pytest.raises(ValueError, match="never closed"):
        render(master, "student")


def test_first_code_cell_installs_in_colab_without_upgrading_pins():
    for master in masters():
        first = next(c for c in jupytext.read(master).cells if c.cell_type == "code").source
        assert '"google.colab" in sys.modules' in first
        assert "pip" in first and "--upgrade" not in first and " -U" not in first


def _run(*args, timeout):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> Path:
    """Where the budget tests keep each solution notebook they executed, with its outputs:
    the tests that read outputs (:func:`executed_solution`) read these instead of running the
    notebook a second time."""
    return tmp_path_factory.mktemp("kept")


@pytest.mark.notebook
def test_setup_notebook_runs_in_lite_mode_within_budget(kept):
    start = time.monotonic()
    done = _run("run", "notebooks/solutions/00_setup.ipynb", "--out", str(kept),
                "--quiet", timeout=allowed_s("00_setup") + 60)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert elapsed < allowed_s("00_setup"), (
        f"took {elapsed:.0f} s, budget {BUDGET_S['00_setup']} s (x {MACHINE_SLACK})")


EXERCISES = {"01_shieldgemma": ["make_prompt", "yes_probability"],
             "02_fgsm": ["fgsm", "sweep_eps"],
             "03_pgd": ["pgd_linf_step", "project_l2", "targeted_objective", "advprop_loss"],
             "04_lat": ["latent_attack", "lat_step"],
             "05_lat_llm": ["residual_attack", "lat_llm_loss"],
             "06_redteam": ["failing_cases", "finetuning_set"],
             "07_defenses": ["bpda_attack", "attack_through_autoencoder"]}


@pytest.mark.notebook
@pytest.mark.parametrize("stem", sorted(EXERCISES))
def test_solution_runs_within_budget_and_grades_as_passing(stem, kept):
    start = time.monotonic()
    allowed = allowed_s(stem)
    # The grader's own limits follow the budget: on a slow machine a notebook's longest cell
    # (05's experiment) may run past the grader's default per-cell 600 s while the notebook is
    # still inside what this test allows; then the assertion below says how long it took.
    limit = f"{allowed + 60:.0f}"
    done = _run("grade", f"notebooks/solutions/{stem}.ipynb", "--json", "--keep", str(kept),
                "--cell-timeout", limit, "--timeout", limit, timeout=allowed + 600)
    elapsed = time.monotonic() - start
    report = json.loads(done.stdout)
    assert done.returncode == 0, json.dumps(report, indent=1)
    assert report["passed"] and report["run"]["passed"]
    assert [e["name"] for e in report["exercises"]] == EXERCISES[stem]
    assert all(c["passed"] for e in report["exercises"] for c in e["checks"])
    assert elapsed < allowed, (
        f"took {elapsed:.0f} s, budget {BUDGET_S[stem]} s (x {MACHINE_SLACK})")


@pytest.mark.notebook
def test_student_notebooks_grade_as_failing_as_a_class():
    """Every student notebook, graded as an instructor grades a class (2 at a time): each runs,
    and every check of every exercise fails saying that it is not implemented yet."""
    from workbench.exercises.grader import GradeReport

    stems = sorted(EXERCISES)
    done = _run("grade", *[f"notebooks/student/{stem}.ipynb" for stem in stems], "--jobs", "2",
                "--json", timeout=sum(BUDGET_S[stem] for stem in stems) + 300)
    assert done.returncode == 1, done.stderr
    reports = {Path(r["notebook"]).stem: r for r in json.loads(done.stdout)}
    assert sorted(reports) == stems
    for stem, report in reports.items():
        assert not report["passed"], stem
        assert [e["name"] for e in report["exercises"]] == EXERCISES[stem]
        checks = [c for e in report["exercises"] for c in e["checks"]]
        assert checks and not any(c["passed"] for c in checks), stem
        assert all("not implemented yet" in c["message"] for c in checks), stem
    table = GradeReport.from_dict(reports["02_fgsm"]).table()
    assert "NotImplementedError" in table and table.endswith("0/13 passed: FAIL")


def test_the_grade_commands_of_notebook_00_name_files_that_exist():
    # A terminal runs from the repository's folder; a notebook cell's `!` from notebooks/.
    import re

    text = (ROOT / "notebooks" / "00_setup.py").read_text()
    terminal = re.findall(r"^# workbench grade (\S+)", text, flags=re.M)
    cell = re.findall(r"^# !workbench grade (\S+)", text, flags=re.M)
    assert terminal and cell
    assert all((ROOT / path).is_file() for path in terminal), terminal
    assert all((ROOT / "notebooks" / path).is_file() for path in cell), cell


# What a learner must not see in a cell's output: library log lines (TensorFlow, absl,
# oneDNN, CUDA stubs) and bare results that only echo a return value.
LOG_LINE = re.compile(r"^(?:[IWEF]\d{4} |WARNING: All log messages|.*oneDNN custom operations"
                      r"|.*cudart_stub|.*Could not find cuda drivers)", re.M)
LONG_REPR_LINES = 10


def noise_in(notebook) -> list[str]:
    """Where an executed notebook shows library log lines, a stray True/False or a long repr:
    one line per finding, naming the cell."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "stream" and LOG_LINE.search(output.get("text", "")):
                found.append(f"cell {index}: log line {LOG_LINE.search(output['text'])[0]!r}")
            if kind == "execute_result":
                data = output.get("data", {})
                text = data.get("text/plain", "")
                if "application/vnd.jupyter.widget-view+json" in data:
                    continue
                if text in ("True", "False"):
                    found.append(f"cell {index}: a stray {text}")
                elif text.count("\n") >= LONG_REPR_LINES or text.startswith(
                        ("Text(", "<matplotlib", "[<matplotlib")):
                    found.append(f"cell {index}: a repr {text[:60]!r}")
    return found


def test_noise_finder_finds_what_it_looks_for():
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=(
            "WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR\nI0000 00:00:1.0 port.cc:153] oneDNN custom operations are on.\n")),
        nbformat.v4.new_output("execute_result", data={"text/plain": "True"}),
        nbformat.v4.new_output("execute_result", data={"text/plain": "Text(0.5, 0.98, 'a')"}),
        nbformat.v4.new_output("execute_result", data={"text/plain": "\n".join("x" * 12)}),
        nbformat.v4.new_output("stream", name="stdout", text="accuracy 0.93\n"),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    assert len(noise_in(notebook)) == 4


@pytest.fixture(scope="module")
def executed_solution(tmp_path_factory, kept):
    """``executed_solution(stem)``: the solution notebook run top to bottom in lite mode, with
    its outputs: the copy a budget test above kept (graded notebooks ran under the grader,
    whose ``check`` cells say so instead of checking), else run now; each notebook runs once
    for all the tests that read it."""
    from workbench.exercises.grader import execute_notebook

    done = {}

    def run(stem: str):
        if stem not in done:
            executed = kept / f"{stem}.ipynb"
            if not executed.is_file():
                executed = tmp_path_factory.mktemp("executed") / f"{stem}.ipynb"
                ran, message = execute_notebook(NOTEBOOKS / "solutions" / f"{stem}.ipynb",
                                                keep=executed)
                assert ran, message
            done[stem] = nbformat.read(executed, 4)
        return done[stem]

    return run


def _printed(notebook) -> str:
    return "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.notebook
@pytest.mark.parametrize("stem", sorted(BUDGET_S))
def test_solution_outputs_are_quiet(stem, executed_solution):
    assert noise_in(executed_solution(stem)) == []


@pytest.mark.notebook
def test_notebook_04_prints_the_numbers_of_workbench_experiment_lat_vision(executed_solution):
    from workbench.lat.experiment import format_lat_table, run_lat_experiment

    printed = _printed(executed_solution("04_lat"))
    table = format_lat_table(run_lat_experiment())  # from the cache the notebook filled
    assert table in printed
    assert "within their spreads" in printed or "better than" in printed or "worse than" in printed


@pytest.mark.notebook
def test_notebook_07_prints_the_numbers_of_workbench_experiment_defenses(executed_solution):
    from workbench.defense_experiment import (format_defenses_table, reading,
                                              run_defenses_experiment)

    printed = _printed(executed_solution("07_defenses"))
    result = run_defenses_experiment()  # from the cache the notebook filled
    assert format_defenses_table(result) in printed
    assert all(sentence in printed for sentence in reading(result))


@pytest.mark.notebook
def test_notebook_05_prints_the_numbers_of_workbench_experiment_lat_llm(executed_solution):
    from workbench.lat.llm_experiment import (format_lat_llm_table, reading,
                                              run_lat_llm_experiment)

    printed = _printed(executed_solution("05_lat_llm"))
    result = run_lat_llm_experiment()  # from the cache the notebook filled
    assert format_lat_llm_table(result) in printed
    assert all(sentence in printed for sentence in reading(result))
    ft = next(row for row in result["rows"] if row["method"] == "ft")
    assert ft["backdoor_asr"] > 0.5, "the FT control must keep the backdoor"


@pytest.mark.notebook
def test_notebook_06_prints_the_numbers_of_workbench_experiment_redteam(executed_solution):
    from workbench.redteam.experiment import format_redteam_table, reading, run_redteam_experiment

    notebook = executed_solution("06_redteam")
    printed = _printed(notebook)
    result = run_redteam_experiment()  # from the cache the notebook filled
    assert format_redteam_table(result) in printed
    assert all(sentence in printed for sentence in reading(result))
    # the learner's fine-tuning set is the one the experiment's seed 0 trained on
    assert "the experiment's seed-0 fine-tuning set is yours: True" in printed
    html = "".join(o.get("data", {}).get("text/html", "") for c in notebook.cells
                   if c.cell_type == "code" for o in c.get("outputs", []))
    assert "held-out question" in html and "top terms" in html
