"""Helpers for the headless-browser end-to-end test (tests/test_browser.py).

They start a throw-away JupyterLab server, drive it with Playwright in Debian's Chromium
(/usr/bin/chromium; Playwright's own browser download does not work on our machines) and
operate ipywidgets in a notebook like a person would.

Install what they need with ``bash scripts/install_browser.sh .venv``.

The public entry point for tests is :func:`run_notebook_and_move_slider`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # playwright is optional: imported lazily by the functions that need it
    from playwright.sync_api import BrowserContext, Locator, Page, Playwright

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_PATH = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")
# Repository JupyterLab user settings: no "get notified about Jupyter news?" toast.
LAB_SETTINGS_DIR = REPO_ROOT / "jupyter" / "lab" / "user-settings"
INSTALL_HINT = "run `bash scripts/install_browser.sh .venv` (as root) to install Chromium and playwright"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SCREENSHOT_DIR = Path(os.environ.get("WORKBENCH_SCREENSHOT_DIR", "/tmp"))

# What the test reads as "the output": a CSS selector (evaluated inside the notebook output
# that holds the slider, falling back to the whole page) or a function page -> text.
OutputProbe = Union[str, Callable[["Page"], str], None]
DEFAULT_OUTPUT_SELECTOR = ".widget-html, .widget-htmlmath"


# --------------------------------------------------------------------------------------
# What is installed
# --------------------------------------------------------------------------------------
def chromium_available() -> bool:
    return os.path.isfile(CHROMIUM_PATH) and os.access(CHROMIUM_PATH, os.X_OK)


def playwright_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def missing_browser_requirements() -> list[str]:
    missing = []
    if not chromium_available():
        missing.append(f"Chromium ({CHROMIUM_PATH})")
    if not playwright_available():
        missing.append("the Python package playwright")
    return missing


# --------------------------------------------------------------------------------------
# JupyterLab server
# --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    root_dir: Path
    port: int
    token: str
    process: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "<no log>"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and its kernels (they live in the server's process group)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def start_lab(
    root_dir: Path,
    work_dir: Path,
    *,
    env_extra: dict[str, str] | None = None,
    settings_dir: Path = LAB_SETTINGS_DIR,
    startup_timeout: float = 60.0,
) -> LabServer:
    """Start ``jupyter lab`` serving ``root_dir`` and wait until its REST API answers.

    ``work_dir`` receives a copy of the repository's lab user settings, the workspaces dir,
    a private JUPYTER_CONFIG_DIR/RUNTIME dir and the server log, so the test never writes
    into the repository or the user's ~/.jupyter.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    settings_copy = work_dir / "user-settings"
    if settings_dir.is_dir():
        shutil.copytree(settings_dir, settings_copy, dirs_exist_ok=True)
    else:
        settings_copy.mkdir(parents=True, exist_ok=True)
    # Attach every cell to the DOM at once (the default 'contentVisibility' windowing adds them
    # progressively), so cells can be found by their text. Only in this temporary copy.
    tracker = settings_copy / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    if not tracker.exists():
        tracker.parent.mkdir(parents=True, exist_ok=True)
        tracker.write_text('{"windowingMode": "none"}\n')
    for sub in ("workspaces", "config", "runtime"):
        (work_dir / sub).mkdir(exist_ok=True)

    port = free_port()
    token = secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        {
            "JUPYTERLAB_SETTINGS_DIR": str(settings_copy),
            "JUPYTERLAB_WORKSPACES_DIR": str(work_dir / "workspaces"),
            "JUPYTER_CONFIG_DIR": str(work_dir / "config"),
            "JUPYTER_RUNTIME_DIR": str(work_dir / "runtime"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(env_extra or {})
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [
        str(jupyter) if jupyter.exists() else "jupyter",
        "lab",
        "--no-browser",
        # = --ServerApp.token, which jupyter_server 2 deprecates in favour of this name
        f"--IdentityProvider.token={token}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.root_dir={root_dir}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # our dev/CI machines run as root
    log_path = work_dir / "jupyter-lab.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        cmd,
        cwd=root_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # own process group: stop() also ends the kernels
    )
    log.close()
    server = LabServer(root_dir=root_dir, port=port, token=token, process=proc, log_path=log_path)

    deadline = time.monotonic() + startup_timeout
    status_url = server.url("api/status")
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"jupyter lab exited with code {proc.returncode} before answering:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(status_url, timeout=2) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(
                f"jupyter lab did not answer on {server.base_url} within {startup_timeout:.0f} s:\n"
                f"{server.log_tail()}"
            )
        time.sleep(0.25)


# --------------------------------------------------------------------------------------
# Browser
# --------------------------------------------------------------------------------------
def launch_chromium(playwright: Playwright, user_data_dir: Path) -> BrowserContext:
    """Debian's Chromium, headless, with a fresh profile and no background network traffic."""
    user_data_dir.mkdir(parents=True, exist_ok=True)
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=CHROMIUM_PATH,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 900},
    )


def screenshot(page: Page, name: str) -> Path:
    """Save /tmp/browser_<name>.png (directory: $WORKBENCH_SCREENSHOT_DIR) and return its path."""
    path = SCREENSHOT_DIR / f"browser_{name}.png"
    page.screenshot(path=str(path))
    return path


# --------------------------------------------------------------------------------------
# JupyterLab UI
# --------------------------------------------------------------------------------------
def open_notebook(page: Page, server: LabServer, notebook_relpath: str, timeout_s: float = 60) -> Locator:
    """Open ``notebook_relpath`` (relative to the server root) and return its notebook panel."""
    # A workspace of its own: no tabs restored from an earlier page of the same server.
    workspace = f"e2e-{secrets.token_hex(4)}"
    page.goto(
        server.url(f"lab/workspaces/{workspace}/tree/{notebook_relpath}"),
        wait_until="domcontentloaded",
    )
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first
    panel.locator(".jp-Cell").first.wait_for(state="visible", timeout=timeout_s * 1000)
    dismiss_select_kernel_dialog(page)
    return panel


def dismiss_select_kernel_dialog(page: Page, wait_ms: float = 0) -> bool:
    """Press "Select" in a 'Select Kernel' dialog if one is open; True if one was dismissed."""
    dialog = page.locator(".jp-Dialog").filter(has_text="Select Kernel")
    try:
        if wait_ms:
            dialog.first.wait_for(state="visible", timeout=wait_ms)
        elif not dialog.first.is_visible():
            return False
    except Exception:  # playwright TimeoutError: no dialog appeared
        return False
    dialog.first.locator("button.jp-Dialog-button", has_text="Select").first.click()
    dialog.first.wait_for(state="detached", timeout=10_000)
    return True


def kernel_is_idle(page: Page, panel: Locator) -> bool:
    """True when the status bar says '<kernel> | Idle' and no cell of ``panel`` shows [*].

    (The toolbar's execution indicator says 'idle' even before a kernel is connected, so the
    status bar's kernel status is what counts.)
    """
    status = page.locator("#jp-main-statusbar .jp-StatusBar-Item", has_text=re.compile(r"\|\s*Idle\b"))
    if status.count() == 0 or "No Kernel" in status.first.inner_text():
        return False
    prompts = panel.locator(".jp-InputArea-prompt").all_inner_texts()
    return not any("*" in p for p in prompts)


def wait_kernel_idle(page: Page, panel: Locator, timeout_s: float = 60, stable_checks: int = 3) -> None:
    """Wait until the kernel is connected and idle with no queued cell, ``stable_checks`` polls in a row.

    Dismisses a 'Select Kernel' dialog while waiting.
    """
    deadline = time.monotonic() + timeout_s
    in_a_row = 0
    while in_a_row < stable_checks:
        dismiss_select_kernel_dialog(page)
        in_a_row = in_a_row + 1 if kernel_is_idle(page, panel) else 0
        if time.monotonic() > deadline:
            raise TimeoutError(f"kernel not idle after {timeout_s:.0f} s")
        page.wait_for_timeout(150)


def _exact(text: str) -> re.Pattern:
    return re.compile(rf"^\s*{re.escape(text)}\s*$")


def click_menu(page: Page, menu: str, item: str) -> None:
    """Click main-menu ``menu`` then its item ``item`` (exact labels, e.g. Run / Run All Cells)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=_exact(menu)).first.click()
    entry = page.locator(".lm-Menu-item:not(.lm-mod-disabled)").filter(
        has=page.locator(".lm-Menu-itemLabel", has_text=_exact(item))
    ).first
    entry.wait_for(state="visible", timeout=10_000)
    entry.click()


def run_all_cells(page: Page, panel: Locator) -> None:
    """Run > Run All Cells."""
    panel.click(position={"x": 5, "y": 5})  # make sure the notebook is the current widget
    click_menu(page, "Run", "Run All Cells")


def run_cells_until(page: Page, panel: Locator, cell_text: str, timeout_s: float = 60) -> None:
    """Run every cell up to and including the first code cell whose source contains ``cell_text``.

    (Run > Run All Above Selected Cell, then Ctrl+Enter on the selected cell.) Later cells do
    not run, so a slow cell after a widget panel does not hold up the widget's kernel updates.
    """
    cell = panel.locator(".jp-CodeCell").filter(
        has=page.locator(".jp-InputArea-editor", has_text=cell_text)
    ).first
    try:  # the notebook attaches its cells progressively
        cell.wait_for(state="attached", timeout=timeout_s * 1000)
    except Exception:
        raise AssertionError(f"no code cell contains {cell_text!r}") from None
    cell.scroll_into_view_if_needed()
    cell.locator(".jp-InputPrompt").first.click()  # selects the cell, command mode
    page.keyboard.press("Escape")
    click_menu(page, "Run", "Run All Above Selected Cell")
    cell.locator(".jp-InputPrompt").first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("Control+Enter")  # notebook:run-cell, stays on the cell


def find_slider(page: Page, description: str, nth: int = 0) -> Locator:
    """The ipywidgets 8 slider (``.widget-slider``) whose description label is ``description``."""
    return (
        page.locator(".widget-slider")
        .filter(has=page.locator(".widget-label", has_text=_exact(description)))
        .nth(nth)
    )


def slider_readout(slider: Locator) -> str:
    return slider.locator(".widget-readout").first.inner_text().strip()


def _probe_text(page: Page, slider: Locator, probe: OutputProbe) -> str:
    if callable(probe):
        return probe(page)
    selector = probe or DEFAULT_OUTPUT_SELECTOR
    # Prefer the notebook output that contains the slider (the widget panel), else the page.
    scope = page.locator(".jp-OutputArea-output").filter(has=slider)
    target = scope.locator(selector) if scope.count() else page.locator(selector)
    return "\n".join(t.strip() for t in target.all_inner_texts())


def _scroll_to_top(element: Locator) -> None:
    element.evaluate("e => e.scrollIntoView({block: 'start'})")


def _screenshots(page: Page, slider: Locator, name: str) -> list[Path]:
    """The page, plus the whole notebook output holding the slider (may be taller than the page)."""
    shots = [screenshot(page, name)]
    output = page.locator(".jp-OutputArea-output").filter(has=slider)
    if output.count():
        path = SCREENSHOT_DIR / f"browser_{name}_output.png"
        output.first.screenshot(path=str(path))
        shots.append(path)
    return shots


@dataclass
class SliderRunResult:
    value_before: str
    value_after: str
    output_before: str
    output_after: str
    screenshots: list[Path]


def run_notebook_and_move_slider(
    page: Page,
    server: LabServer,
    notebook_relpath: str,
    slider_description: str,
    output_probe: OutputProbe = None,
    *,
    run_until: str | None = None,
    key: str = "ArrowRight",
    presses: int = 2,
    timeout_s: float = 90,
    screenshot_prefix: str = "",
) -> SliderRunResult:
    """Open a notebook, run all cells, move a slider and wait until an output changes.

    * ``notebook_relpath``: path relative to the server's root dir, e.g.
      ``"notebooks/solutions/02_fgsm.ipynb"``.
    * ``slider_description``: the slider's ``description`` (e.g. ``"eps"``); the first such
      IntSlider/FloatSlider on the page is used.
    * ``output_probe``: what must change. ``None`` = the text of the ipywidgets HTML widgets in
      the same notebook output as the slider; a CSS selector string (looked up in that output,
      or in the whole page if the slider is not inside one); or a function ``page -> str``.
    * ``run_until``: ``None`` runs all cells (Run > Run All Cells); a text such as
      ``"fgsm_panel("`` runs only the cells up to and including the first code cell whose
      source contains it (quicker when slow cells follow the panel).
    * The slider handle (noUiSlider ``.noUi-handle``) is focused and ``key`` pressed
      ``presses`` times (ArrowRight/ArrowLeft = one step, PageUp/PageDown = bigger steps);
      if the readout does not change, the handle is dragged a quarter of the track instead.
    * ``timeout_s`` bounds each wait (kernel start, widget appearance, output update).

    Screenshots: ``/tmp/browser_<prefix>1_opened.png``, ``..._2_widgets.png``,
    ``..._3_moved.png`` (page) with ``..._2_widgets_output.png`` and ``..._3_moved_output.png``
    (the whole notebook output holding the slider), and ``..._error.png`` if a step fails.
    Raises AssertionError if the slider value or the output did not change.
    """
    timeout_ms = timeout_s * 1000
    shots: list[Path] = []
    try:
        panel = open_notebook(page, server, notebook_relpath, timeout_s)
        wait_kernel_idle(page, panel, timeout_s)
        shots.append(screenshot(page, f"{screenshot_prefix}1_opened"))

        if run_until is None:
            run_all_cells(page, panel)
        else:
            run_cells_until(page, panel, run_until, timeout_s)
        dismiss_select_kernel_dialog(page)
        slider = find_slider(page, slider_description)
        handle = slider.locator(".noUi-handle").first
        handle.wait_for(state="visible", timeout=timeout_ms)
        wait_kernel_idle(page, panel, timeout_s)  # all cells done: outputs are final
        _scroll_to_top(slider)
        value_before = slider_readout(slider)
        output_before = _probe_text(page, slider, output_probe)
        shots += _screenshots(page, slider, f"{screenshot_prefix}2_widgets")

        handle.focus()
        for _ in range(presses):
            handle.press(key)
        deadline = time.monotonic() + 5
        while slider_readout(slider) == value_before and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        value_after = slider_readout(slider)
        if value_after == value_before:
            # Keyboard did not move it (other widget version?): drag the handle instead.
            box = handle.bounding_box()
            track = slider.locator(".noUi-base, .noUi-target").first.bounding_box()
            assert box and track, "slider handle or track has no size on screen"
            x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move(x0 + track["width"] / 4, y0, steps=10)
            page.mouse.up()
            value_after = slider_readout(slider)
        assert value_after != value_before, (
            f"slider {slider_description!r} did not move (readout stays {value_before!r})"
        )

        # Wait for the kernel to recompute the output.
        deadline = time.monotonic() + timeout_s
        output_after = _probe_text(page, slider, output_probe)
        while output_after == output_before and time.monotonic() < deadline:
            page.wait_for_timeout(100)
            output_after = _probe_text(page, slider, output_probe)
        wait_kernel_idle(page, panel, timeout_s)
        output_after = _probe_text(page, slider, output_probe)
        _scroll_to_top(slider)
        shots += _screenshots(page, slider, f"{screenshot_prefix}3_moved")
        assert output_after != output_before, (
            f"output did not change within {timeout_s:.0f} s after moving {slider_description!r} "
            f"from {value_before} to {value_after}; output stays:\n{output_before}"
        )
        return SliderRunResult(value_before, value_after, output_before, output_after, shots)
    except BaseException:
        with contextlib.suppress(Exception):
            shots.append(screenshot(page, f"{screenshot_prefix}error"))
        raise


@contextlib.contextmanager
def lab_page(profile_dir: Path) -> Iterator[Page]:
    """A page of a new headless Chromium with a fresh profile; closes the browser afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = launch_chromium(pw, profile_dir)
        try:
            context.set_default_timeout(30_000)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()
