"""A learner's notebook in a kernel of its own: run its cells, then serve calls of its functions.

:class:`KernelSession` copies the notebook's folder to a scratch folder (relative paths in the
notebook touch the copy, not the learner's or the instructor's files), starts a Jupyter kernel
there in lite mode, runs the code cells one by one with a per-cell time limit, and then calls
the learner's functions through :func:`workbench.exercises.serve.serve_call`. Nothing the
learner wrote runs in the process that holds this object. :meth:`KernelSession.close` stops the
kernel and everything it started (its whole process group) and removes the scratch folder.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat

# Files and folders beside a notebook that its scratch copy leaves out.
NOT_COPIED = (".git", ".venv", "__pycache__", ".ipynb_checkpoints", "*.ipynb",
              "workbench-grade-*", "workbench-run-*", "workbench-class-*")  # our own temp files
COPY_LIMIT_BYTES = 200 * 2**20  # a scratch copy stops taking files past this size
INTERRUPT_GRACE_S = 10.0  # after a cell's time limit: how long an interrupt may take
REPLY_GRACE_S = 20.0  # beyond a call's own limit: how long the kernel may take to report back


def kernel_env(grading: bool) -> dict:
    """The environment of the kernel: lite mode, no display. When ``grading``, the notebook's
    own ``check(...)`` cells only say that the grader checks (it does, afterwards), and the
    kernel sees no GPU: each graded call runs in a forked child, and CUDA does not survive a
    fork (lite mode runs on the CPU anyway)."""
    env = dict(os.environ, WORKBENCH_MODE="lite", PYTHONUNBUFFERED="1",
               WORKBENCH_GRADING="1" if grading else "0")
    if grading:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("MPLBACKEND", "Agg")
    return env


@dataclass
class CellRun:
    """How one code cell ran: its index among all cells, execution count and first error."""

    index: int
    execution_count: int | None
    first_line: str
    error: str | None = None
    seconds: float = 0.0


@dataclass
class NotebookRun:
    """How the notebook ran: every code cell run, and whether it finished."""

    cells: list[CellRun] = field(default_factory=list)
    stopped: str | None = None  # why the run stopped before the last cell, if it did

    @property
    def errors(self) -> list[CellRun]:
        return [c for c in self.cells if c.error]

    @property
    def ok(self) -> bool:
        return self.stopped is None and not self.errors

    @property
    def message(self) -> str:
        if self.stopped:
            return self.stopped
        if not self.errors:
            return ""
        first = self.errors[0]
        return (f"{len(self.errors)} cell(s) raised an error; first: cell {first.index}, "
                f"{first.error}")[:400]

    def cell_of(self, execution_count) -> CellRun | None:
        return next((c for c in self.cells if c.execution_count == execution_count), None)


def scratch_copy(notebook: Path, into: Path) -> Path:
    """Copy the notebook's folder to ``into / "notebook"`` and return that: its data files and
    helper modules, without notebooks, VCS or cache folders, and no more than
    :data:`COPY_LIMIT_BYTES` (a notebook saved in a home folder does not copy the home)."""
    folder = into / "notebook"
    excluded = shutil.ignore_patterns(*NOT_COPIED)
    copied = 0

    def ignore(directory, names):
        nonlocal copied
        skip = set(excluded(directory, names))
        skip |= {n for n in names if Path(directory, n).resolve() == into.resolve()}
        for name in sorted(set(names) - skip):
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                copied += path.stat().st_size
                if copied > COPY_LIMIT_BYTES:
                    skip.add(name)
        return skip

    shutil.copytree(notebook.resolve().parent, folder, symlinks=True, ignore=ignore)
    return folder


class KernelStopped(RuntimeError):
    """The kernel is gone (killed after a hang, or it died); nothing more can run in it."""


class KernelSession:
    """A kernel in a scratch copy of a notebook's folder; see the module docstring.

    ``workdir``: a private folder for the scratch copy, the transfer files and the kernel's
    log; ``grading``: see :func:`kernel_env`; ``pid_dir``: where to leave the kernel's process id, so that a parent that has to kill
    this process can stop the kernel too.
    """

    def __init__(self, notebook: Path, workdir: Path, *, grading: bool = True,
                 pid_dir: Path | None = None):
        from jupyter_client import KernelManager

        self.workdir = Path(workdir)
        self.folder = scratch_copy(Path(notebook), self.workdir)
        self.transfer = self.workdir / "transfer"
        self.transfer.mkdir()
        self.log = self.workdir / "kernel.log"
        self._calls = 0
        self.stopped: str | None = None
        ipc = str(self.workdir / "kernel-ipc")
        # Unix sockets (no ports to collide when a class is graded in parallel) have paths of
        # at most 107 bytes; a deep temporary folder falls back to TCP on loopback.
        self.km = (KernelManager(kernel_name="python3", transport="ipc", ip=ipc)
                   if len(ipc) < 90 else KernelManager(kernel_name="python3"))
        self._log_file = open(self.log, "wb")
        self.km.start_kernel(cwd=str(self.folder), env=kernel_env(grading), stdout=self._log_file,
                             stderr=subprocess.STDOUT, independent=False)
        self.pid = self.km.provisioner.process.pid
        self._pid_file = None
        if pid_dir is not None:
            self._pid_file = Path(pid_dir) / f"kernel-{self.pid}"
            self._pid_file.write_text(str(self.pid))
        self.kc = self.km.blocking_client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=120)
        except RuntimeError as err:
            self.close()
            raise KernelStopped(f"the kernel did not start: {err}; {self.log_tail()}") from err

    # ------------------------------------------------------------------------- running cells

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])[-400:]

    def _death(self) -> str:
        code = self.km.provisioner.process.poll() if self.km.provisioner else None
        log = self.log_tail()
        return (f"the kernel exited (code {code}): does the code call os._exit() or exit(), or "
                f"run out of memory?" + (f" Its last words: {log}" if log else ""))

    def _receive(self, get, seconds: float) -> dict | None:
        """The next message ``get`` (a channel's) gives within ``seconds`` (at most 1 s), or
        None; KernelStopped when the kernel has died meanwhile."""
        try:
            return get(timeout=min(seconds, 1.0))
        except queue.Empty:
            if not self.km.is_alive():
                self.stopped = self._death()
                raise KernelStopped(self.stopped) from None
            return None

    def _stop(self, why: str) -> None:
        self.stopped = why
        self.kill()

    def run_cell(self, source: str, timeout: float) -> tuple[list, int | None, str | None]:
        """Run one cell; (its outputs, its execution count, its error or None)."""
        if self.stopped:
            raise KernelStopped(self.stopped)
        msg_id = self.kc.execute(source, store_history=True, allow_stdin=False)
        outputs, error, count = [], None, None
        deadline = time.monotonic() + timeout
        interrupted = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if interrupted:
                    self._stop(f"a cell did not stop within {INTERRUPT_GRACE_S:.0f} s of being "
                               f"interrupted; the kernel was stopped")
                    raise KernelStopped(self.stopped)
                self.km.interrupt_kernel()
                interrupted = True
                error = f"TimeoutError: the cell ran longer than {timeout:.0f} s"
                deadline = time.monotonic() + INTERRUPT_GRACE_S
                continue
            msg = self._receive(self.kc.get_iopub_msg, left)
            if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind == "execute_input":
                count = content.get("execution_count")
            elif kind == "clear_output":
                outputs.clear()
            elif kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append(nbformat.v4.output_from_msg(msg))
                if kind == "error" and not interrupted:
                    error = f"{content['ename']}: {content['evalue']}"
        return outputs, count, error

    def execute(self, notebook, *, cell_timeout: float, total_timeout: float,
                on_cell: Callable[[CellRun], None] | None = None) -> NotebookRun:
        """Run the notebook's code cells in order (outputs go into ``notebook``), each within
        ``cell_timeout`` and all within ``total_timeout`` seconds; errors do not stop the run.
        ``on_cell`` is called with each cell's :class:`CellRun` once it has run."""
        run = NotebookRun()
        start = time.monotonic()
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            left = total_timeout - (time.monotonic() - start)
            if left <= 0:
                run.stopped = (f"the notebook did not finish within {total_timeout:.0f} s: "
                               f"stopped before cell {index}")
                break
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            began = time.monotonic()
            try:
                outputs, count, error = self.run_cell(cell.source, min(cell_timeout, left))
            except KernelStopped as err:
                run.cells.append(CellRun(index, None, first, str(err),
                                         time.monotonic() - began))
                run.stopped = f"the notebook did not finish: cell {index}: {err}"
                break
            cell.outputs, cell.execution_count = outputs, count
            run.cells.append(CellRun(index, count, first, error, time.monotonic() - began))
            if on_cell is not None:
                on_cell(run.cells[-1])
        return run

    # ------------------------------------------------------------------------- serving calls

    def call(self, function: str, args: tuple, kwargs: dict, *, timeout: float,
             references=()) -> tuple[dict, dict]:
        """Call the learner's ``function`` in the kernel (see :mod:`serve`); returns (the
        child's status, its response as data). Raises KernelStopped when the kernel is gone
        or does not report back in time (then it is stopped)."""
        import torch

        from workbench.exercises import transport

        if self.stopped:
            raise KernelStopped(self.stopped)
        self._calls += 1
        stem = self.transfer / f"call-{self._calls}"
        request, response = f"{stem}.request", f"{stem}.response"
        torch.save(transport.request(args, kwargs), request)
        code = ("from workbench.exercises.serve import serve_call as _workbench_serve\n"
                f"_workbench_serve({function!r}, {request!r}, {response!r}, {timeout!r}, "
                f"{tuple(references)!r})\ndel _workbench_serve")
        msg_id = self.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout + REPLY_GRACE_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._stop(f"the kernel did not answer within {timeout + REPLY_GRACE_S:.0f} s")
                raise KernelStopped(self.stopped)
            reply = self._receive(self.kc.get_shell_msg, left)
            if reply is not None and reply["parent_header"].get("msg_id") == msg_id:
                break
        self._drain_iopub()
        content = reply["content"]
        if content.get("status") != "ok":
            return {"status": "serve"}, {"error": {
                "kind": "serve", "type": content.get("ename", "?"),
                "message": content.get("evalue", "")}}
        try:
            status = json.loads(Path(response + ".status").read_text())
        except (OSError, ValueError):
            status = {"status": "exited", "code": None}
        data = {}
        if status["status"] == "returned":
            try:
                data = torch.load(response, weights_only=True)
            except Exception as err:  # not data the grader reads: say so, do not unpickle
                data = {"error": {"kind": "serve", "type": type(err).__name__,
                                  "message": "the answer could not be read as data"}}
        for path in (request, response, response + ".status"):
            Path(path).unlink(missing_ok=True)
        return status, data

    def _drain_iopub(self) -> None:
        while True:
            try:
                self.kc.get_iopub_msg(timeout=0)
            except queue.Empty:
                return

    # ------------------------------------------------------------------------- stopping

    def kill(self) -> None:
        """Stop the kernel and every process in its group at once."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.km.shutdown_kernel(now=True)
        except Exception:  # already gone
            pass

    def close(self) -> None:
        """Stop the kernel and its children, close the channels, remove the scratch folder."""
        try:
            self.kc.stop_channels()
        except Exception:
            pass
        self.kill()
        try:
            self.km.cleanup_resources()
        except Exception:
            pass
        self._log_file.close()
        if self._pid_file is not None:
            self._pid_file.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)
        shutil.rmtree(self.transfer, ignore_errors=True)
