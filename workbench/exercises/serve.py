"""The kernel side of a graded call: runs in the learner's kernel, never in the grader.

After the learner's notebook has run, the grader calls :func:`serve_call` in the same kernel
once per call of the learner's function. It forks: the child has everything the notebook
defined (imports, helpers, ``EPS``, ``device``), runs the one call with the package's reference
answers to the exercise switched off, writes the result and what changed in the arguments as
data (:mod:`workbench.exercises.transport`) and exits; the parent waits at most ``timeout``
seconds, kills the child past it, and writes a status file. Each call starts from the state the
notebook left, and a hang, an ``os._exit`` or a crash ends one child, not the kernel.
"""

from __future__ import annotations

import io
import json
import linecache
import os
import signal
import sys
import time
import traceback

REFERENCE_MARK = "workbench grade: reference switched off"
_exit_process = os._exit  # the child ends through this; the learner's code sees a stand-in


class _ExitCalled(BaseException):
    """Raised in the child instead of leaving the process through ``os._exit``."""


def _blocked_code(function, dotted: str):
    """A code object for ``function`` that records the call and raises, with the same free
    variables (so it can replace ``function.__code__``), or None when that is not possible."""
    free = function.__code__.co_freevars
    message = (f"{REFERENCE_MARK}: your answer called {dotted}, the package's own answer to "
               f"this exercise")
    lines = ["def _outer():"] + [f"    {name} = None" for name in free] + [
        "    def _blocked(*args, **kwargs):",
        f"        ({', '.join(free)},)" if free else "        pass",
        f"        __import__('sys').__dict__.setdefault('_workbench_reference_calls', [])"
        f".append({dotted!r})",
        f"        raise RuntimeError({message!r})",
        "    return _blocked"]
    namespace: dict = {}
    exec("\n".join(lines), namespace)
    code = namespace["_outer"]().__code__
    return code if code.co_freevars == free else None


def block_references(references) -> None:
    """Switch off each function named by a dotted path ("workbench.attacks.fgsm.fgsm") for the
    rest of this process: however the learner's code reaches it (``from ... import`` done
    earlier included), calling it raises."""
    import importlib

    for dotted in references:
        module_name, _, attribute = dotted.rpartition(".")
        function = getattr(importlib.import_module(module_name), attribute)
        code = _blocked_code(function, dotted)
        if code is not None:
            function.__code__ = code


def _location(tb) -> dict | None:
    """The last traceback frame in a notebook cell: its execution count, line and text."""
    try:
        cells = get_ipython().compile._filename_map  # noqa: F821 (the kernel's IPython)
    except Exception:
        return None
    for frame in reversed(traceback.extract_tb(tb)):
        if frame.filename in cells:
            return {"execution_count": cells[frame.filename], "line": frame.lineno,
                    "text": linecache.getline(frame.filename, frame.lineno).strip()}
    return None


def _call(function: str, request: str, references) -> dict:
    """Run the learner's function on the request's arguments; the response as data."""
    import torch

    from workbench.exercises import transport

    namespace = get_ipython().user_ns  # noqa: F821 (the kernel's IPython)
    fn = namespace.get(function)
    if not callable(fn):
        return {"error": {"kind": "missing", "type": type(fn).__name__}}
    args, kwargs = transport.open_request(torch.load(request, weights_only=False))  # trusted
    arguments = transport.tracked((args, kwargs))
    before = [transport.snapshot(obj) for obj in arguments]
    block_references(references)

    def no_exit(code=0):
        raise _ExitCalled(code)

    os._exit = no_exit
    error = None
    result = None
    try:
        result = fn(*args, **kwargs)
    except SystemExit as err:
        error = {"kind": "exit", "how": f"sys.exit({err.code!r})"}
    except _ExitCalled as err:
        error = {"kind": "exit", "how": f"os._exit({err.args[0]!r})"}
    except BaseException as err:  # the learner's code raised: say what and where
        error = {"kind": "raised", "type": type(err).__name__, "message": str(err)[:600],
                 "where": _location(err.__traceback__)}
    reference_calls = sys.__dict__.get("_workbench_reference_calls")
    if reference_calls:
        error = {"kind": "reference", "called": reference_calls[0]}
    response = {"error": error,
                "changes": [transport.changes(obj, b) for obj, b in zip(arguments, before)]}
    if error is None:
        response["result"] = transport.encode_result(result, arguments)
    return response


def _child(function: str, request: str, response: str, references) -> None:
    import torch

    torch.set_num_threads(1)  # OpenMP's threads do not survive a fork
    sys.stdout = sys.stderr = io.StringIO()  # the kernel's output streams belong to its parent
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        payload = _call(function, request, references)
    except BaseException as err:  # the grader's side of the call failed in this kernel
        payload = {"error": {"kind": "serve", "type": type(err).__name__,
                             "message": str(err)[:600]}}
    partial = response + ".part"
    torch.save(payload, partial)
    os.rename(partial, response)


def serve_call(function: str, request: str, response: str, timeout: float,
               references=()) -> None:
    """Call the learner's ``function`` once, in a forked child, within ``timeout`` seconds.

    ``request``: the grader's pickled ``(args, kwargs)``; ``response``: where the child writes
    its answer; ``response + ".status"`` gets, in JSON, how the child ended: "returned",
    "timeout" (killed) or "exited" (gone without an answer), with its exit code.
    """
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(function, request, response, references)
        finally:
            _exit_process(0)
    status = "timeout"
    code = None
    while time.monotonic() - start < timeout:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(wait_status)
            status = "returned" if os.path.exists(response) else "exited"
            break
        time.sleep(0.002)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with open(response + ".status", "w") as sink:
        json.dump({"status": status, "code": code,
                   "seconds": round(time.monotonic() - start, 3)}, sink)
