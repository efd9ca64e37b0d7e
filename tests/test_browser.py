"""End-to-end: JupyterLab in headless Chromium runs a notebook and reacts to an ipywidgets slider.

Needs Debian's Chromium (/usr/bin/chromium) and the Python package playwright:
``bash scripts/install_browser.sh .venv``. Without them the test is skipped, except under
CI=true, where it fails. Run only these tests with ``pytest -m browser``.
Screenshots go to /tmp/browser_*.png.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from browser_helpers import (
    INSTALL_HINT,
    REPO_ROOT,
    find_slider,
    lab_page,
    missing_browser_requirements,
    run_notebook_and_move_slider,
    screenshot,
    slider_readout,
    start_lab,
)

pytestmark = pytest.mark.browser

SELFTEST_NOTEBOOK = "browser_selftest.ipynb"
SELFTEST_SOURCE = """\
import ipywidgets as widgets
from IPython.display import display

eps = widgets.IntSlider(value=3, min=0, max=20, step=1, description="eps")
out = widgets.HTML(value="<b>double: 6</b>")

def _update(change):
    out.value = f"<b>double: {change['new'] * 2}</b>"

eps.observe(_update, names="value")
display(widgets.VBox([eps, out]))
"""


def _write_selftest_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Browser self-test\nA slider `eps` and its double."),
        nbformat.v4.new_code_cell(SELFTEST_SOURCE),
    ]
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def browser_requirements() -> None:
    missing = missing_browser_requirements()
    if not missing:
        return
    message = f"browser test needs {' and '.join(missing)}: {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def lab_server(browser_requirements, tmp_path_factory):
    """A JupyterLab serving a temporary copy of notebooks/ plus the self-made notebook."""
    base = tmp_path_factory.mktemp("browser")
    root = base / "root"
    root.mkdir()
    if (REPO_ROOT / "notebooks").is_dir():
        shutil.copytree(
            REPO_ROOT / "notebooks",
            root / "notebooks",
            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"),
        )
    _write_selftest_notebook(root / SELFTEST_NOTEBOOK)
    server = start_lab(root, base / "lab", env_extra={"WORKBENCH_MODE": "lite"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(lab_server, tmp_path):
    with lab_page(tmp_path / "chromium-profile") as page:
        yield page


def test_slider_updates_html_output(lab_server, page):
    started = time.monotonic()
    result = run_notebook_and_move_slider(
        page,
        lab_server,
        SELFTEST_NOTEBOOK,
        slider_description="eps",
        output_probe=".widget-html",
        key="ArrowRight",
        presses=2,
        timeout_s=60,
        screenshot_prefix="selftest_",
    )
    assert result.value_before == "3"
    assert result.value_after == "5"
    assert result.output_before == "double: 6"
    assert result.output_after == "double: 10"
    # The repository's lab settings must keep the "Jupyter news?" toast away.
    assert page.get_by_text("official Jupyter news").count() == 0, (
        f"news toast shown, see {screenshot(page, 'selftest_news_toast')}"
    )
    assert time.monotonic() - started < 120


FGSM_NOTEBOOK = "notebooks/solutions/02_fgsm.ipynb"


@pytest.mark.skipif(not (REPO_ROOT / FGSM_NOTEBOOK).exists(), reason=f"{FGSM_NOTEBOOK} not written yet")
def test_fgsm_panel_eps_slider_changes_top5(lab_server, page):
    started = time.monotonic()
    result = run_notebook_and_move_slider(
        page,
        lab_server,
        FGSM_NOTEBOOK,
        slider_description="eps",
        output_probe='.widget-html:has-text("top-5 after")',
        run_until="fgsm_panel(",  # the cells after the panel (the eps sweep) are slow
        key="ArrowRight",
        presses=2,
        timeout_s=90,
        screenshot_prefix="fgsm_",
    )
    assert result.value_after != result.value_before
    assert "top-5 after" in result.output_after
    assert time.monotonic() - started < 120


DEFENSES_NOTEBOOK = "notebooks/solutions/07_defenses.ipynb"


def test_defenses_panel_eps_slider_changes_what_is_fooled(lab_server, page):
    started = time.monotonic()
    result = run_notebook_and_move_slider(
        page,
        lab_server,
        DEFENSES_NOTEBOOK,
        slider_description="eps (L-inf)",
        output_probe='.widget-html:has-text("defended models")',
        run_until="defenses_panel(",  # the three-seed experiment comes after the panel
        key="ArrowRight",
        presses=2,
        timeout_s=150,
        screenshot_prefix="defenses_",
    )
    assert (result.value_before, result.value_after) == ("0.150", "0.200")
    assert "eps = 0.200" in result.output_after and "eps = 0.150" in result.output_before
    assert time.monotonic() - started < 240


LAT_NOTEBOOK = "notebooks/solutions/04_lat.ipynb"


def test_lat_panel_layer_slider_changes_the_perturbation_shown(lab_server, page):
    started = time.monotonic()
    result = run_notebook_and_move_slider(
        page,
        lab_server,
        LAT_NOTEBOOK,
        slider_description="layer",
        run_until="lat_panel(",  # the sweep and the experiment come after the panel
        key="ArrowRight",
        presses=1,
        timeout_s=150,
        screenshot_prefix="lat_",
    )
    assert result.value_after != result.value_before
    assert "||delta|| / ||h||" in result.output_after
    assert time.monotonic() - started < 240


LAT_LLM_NOTEBOOK = "notebooks/solutions/05_lat_llm.ipynb"


def test_lat_llm_sweep_panel_layer_slider_changes_the_point_shown(lab_server, page):
    result = run_notebook_and_move_slider(
        page,
        lab_server,
        LAT_LLM_NOTEBOOK,
        slider_description="layer",
        run_until="sweep_panel(",  # after the experiment: from a cold cache it trains it
        key="ArrowRight",
        presses=1,
        timeout_s=600,
        screenshot_prefix="lat_llm_",
    )
    assert result.value_after != result.value_before
    assert "backdoor success" in result.output_after
    assert result.output_after != result.output_before


SHIELDGEMMA_NOTEBOOK = "notebooks/solutions/01_shieldgemma.ipynb"


def test_shieldgemma_threshold_slider_changes_the_flagged_counts(lab_server, page):
    result = run_notebook_and_move_slider(
        page,
        lab_server,
        SHIELDGEMMA_NOTEBOOK,
        slider_description="threshold",
        run_until="threshold_panel(",  # from an empty cache this trains the lite scorer
        key="ArrowRight",
        presses=10,
        timeout_s=600,
        screenshot_prefix="shieldgemma_",
    )
    assert float(result.value_after) > float(result.value_before)
    assert result.output_after != result.output_before


REDTEAM_NOTEBOOK = "notebooks/solutions/06_redteam.ipynb"


def test_redteam_threshold_slider_changes_the_failure_report(lab_server, page):
    result = run_notebook_and_move_slider(
        page,
        lab_server,
        REDTEAM_NOTEBOOK,
        slider_description="threshold",
        run_until="failure_panel(",  # the experiment of section 7 comes after the panel
        key="ArrowRight",
        presses=2,
        timeout_s=300,
        screenshot_prefix="redteam_",
    )
    assert (result.value_before, result.value_after) == ("0.50", "0.60")
    assert "scored over 0.60" in result.output_after
    assert "scored over 0.50" in result.output_before


PGD_NOTEBOOK = "notebooks/solutions/03_pgd.ipynb"


def test_pgd_panel_eps_and_steps_sliders_change_the_attack_shown(lab_server, page):
    result = run_notebook_and_move_slider(
        page,
        lab_server,
        PGD_NOTEBOOK,
        slider_description="eps",
        run_until="pgd_panel(",
        key="ArrowRight",
        presses=2,
        timeout_s=300,
        screenshot_prefix="pgd_",
    )
    assert float(result.value_after) > float(result.value_before)
    steps = find_slider(page, "steps")
    before, shown = slider_readout(steps), result.output_after
    steps.locator(".noUi-handle").first.focus()
    steps.locator(".noUi-handle").first.press("ArrowLeft")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page.wait_for_timeout(200)
        now = page.locator(".jp-OutputArea-output").filter(has=steps).locator(
            ".widget-html").all_inner_texts()
        if "\n".join(t.strip() for t in now) != shown:
            break
    assert int(slider_readout(steps)) == int(before) - 1
    assert "\n".join(t.strip() for t in now) != shown, "moving steps changed nothing shown"
    screenshot(page, "pgd_4_steps_moved")
