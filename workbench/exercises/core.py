"""Exercises and their checks: the same checks run in the notebook (``check``) and under the
grader (``workbench grade``).

A check is a function ``check(fn) -> None`` that calls the learner's function on random
inputs, closed-form cases or the real lite model and raises :class:`CheckFailed` with a
message that names the likely mistake. Each notebook's check module (``nb02_fgsm``...)
imports this one and registers its exercises with :func:`exercise`; this module imports none
of them. :mod:`workbench.exercises.registry` imports them all, so that looking an exercise up
by name (``get_exercise``, ``check``) finds it.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

CHECK_TIMEOUT_S = 60.0


class CheckFailed(AssertionError):
    """The learner's function gave a wrong answer; the message says what is likely wrong."""


class CheckTimedOut(CheckFailed):
    """The learner's function did not return within the check's time limit."""


class LearnerRaised(Exception):
    """The learner's function, run in their kernel by the grader, raised ``type_name``;
    ``where`` says in which cell and line."""

    def __init__(self, type_name: str, message: str, where: str = ""):
        super().__init__(message)
        self.type_name, self.where = type_name, where

    def describe(self) -> str:
        return (f"your function raised {self.type_name}: {self.args[0]}"
                + (f" ({self.where})" if self.where else ""))


class Spy:
    """A function a check hands to the learner's function, which records the eps of every
    call: ``Spy(respond)`` calls ``respond(model, x, y, eps)``; ``Spy()`` returns ``x``
    unchanged. A module-level ``respond`` keeps it picklable, so the grader can send it to the
    learner's kernel, and its calls come back (``__workbench_state__``)."""

    def __init__(self, respond: Callable | None = None):
        self.respond = respond
        self.calls: list[float] = []

    def __call__(self, model, x, y, eps):
        self.calls.append(float(eps))
        return x.clone() if self.respond is None else self.respond(model, x, y, eps)

    def __workbench_state__(self) -> list[float]:
        return list(self.calls)

    def __workbench_restore__(self, calls) -> None:
        self.calls = [float(c) for c in calls]


@dataclass
class Exercise:
    """An exercise: the function the learner writes and the checks it must pass."""

    name: str
    notebook: str
    function: str
    title: str
    checks: list[tuple[str, Callable]] = field(default_factory=list)
    # Dotted paths of the package's own answers to this exercise, switched off while the
    # grader calls the learner's function (an answer that only calls them fails).
    references: tuple[str, ...] = ()


@dataclass
class CheckResult:
    exercise: str
    check: str
    passed: bool
    message: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


EXERCISES: dict[str, Exercise] = {}


def exercise(name: str, *, notebook: str, title: str, function: str | None = None,
             references: tuple[str, ...] = ()):
    """Register an exercise; returns a decorator that adds checks to it, in order::

        fgsm_exercise = exercise("fgsm", notebook="02_fgsm", title="FGSM",
                                 references=("workbench.attacks.fgsm.fgsm",))

        @fgsm_exercise.check("moves every pixel by exactly eps")
        def _(fgsm): ...
    """
    ex = EXERCISES.setdefault(name, Exercise(name, notebook, function or name, title,
                                             references=tuple(references)))

    class _Registrar:
        exercise = ex

        @staticmethod
        def check(description: str):
            def add(fn):
                ex.checks.append((description, fn))
                return fn
            return add

    return _Registrar


# ------------------------------------------------------- helpers shared by the check modules

SMALL_IMAGE_SHAPE = (3, 4, 4)  # (C, H, W) of the small images of closed-form and random checks


def as_tensor(result, what: str):
    """The learner's ``result`` as a detached tensor, or CheckFailed saying what to return
    (``what`` names it, e.g. "x_adv")."""
    import torch  # here, not at the top: the grader imports this module before it needs torch

    if result is None:
        raise CheckFailed(f"your function returned None: end it with `return {what}`")
    if not isinstance(result, torch.Tensor):
        raise CheckFailed(f"your function returned a {type(result).__name__}; return the tensor "
                          f"{what}")
    return result.detach()


def as_adversarial(result, x):
    """The learner's ``x_adv`` as a detached tensor shaped like the images x (N, C, H, W), or
    CheckFailed saying what to return."""
    out = as_tensor(result, "x_adv")
    if out.shape != x.shape:
        raise CheckFailed(f"x_adv has shape {tuple(out.shape)}, x has {tuple(x.shape)}: return "
                          f"one adversarial image per input image")
    return out


# A check sees only its own case, so its guesses at the cause of a wrong answer can contradict
# another check's (an answer that adds the clipped delta was told "did you forget .sign()?" by
# the direction check). Instead each exercise has one diagnosis: its known mistakes, each a
# small wrong function, tried on a few probes; every check that fails reports the mistake that
# the learner's function reproduces exactly, and only without one its own neutral message.

def diagnosed(diagnose: Callable[[Callable], str | None], fn: Callable,
              message: str) -> CheckFailed:
    """The CheckFailed a check raises when ``fn`` got its case wrong: ``diagnose(fn)``'s
    message when it names a known mistake, else the check's own ``message``.

    The diagnosis runs the learner's code; when that code raises, there is no diagnosis (the
    check's message stands), but a time-out still stops the check.
    """
    try:
        found = diagnose(fn)
    except CheckTimedOut:
        raise
    except Exception:
        found = None
    return CheckFailed(found or message)


def _outputs(fn: Callable, probes) -> list | None:
    import torch

    outputs = []
    for probe in probes:
        args, kwargs = probe()
        out = fn(*args, **kwargs)
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            out = torch.tensor(float(out))
        if not isinstance(out, torch.Tensor):
            return None
        outputs.append(out.detach().float())
    return outputs


def known_mistake(fn: Callable, probes, mistakes, *, atol: float = 1e-5) -> str | None:
    """The message of the first known mistake that ``fn`` reproduces, or None.

    ``probes``: zero-argument callables returning ``(args, kwargs)``, called afresh for every
    function run on them (in-place changes and model state cannot leak from one to the next).
    ``mistakes``: ``(message, wrong_fn)`` pairs, in order; ``fn`` reproduces ``wrong_fn`` when
    their results have the same shape and agree within ``atol`` on every probe. The probes must
    tell each wrong function apart from the right answer (the tests of each exercise hold that).
    """
    import torch

    mine = _outputs(fn, probes)
    if mine is None:
        return None
    for message, wrong in mistakes:
        theirs = _outputs(wrong, probes)
        if theirs is not None and all(
                a.shape == b.shape and torch.allclose(a, b, atol=atol, equal_nan=True)
                for a, b in zip(mine, theirs)):
            return message
    return None


# ----------------------------------------------------------------------------- running checks

@contextmanager
def time_limit(seconds: float):
    """Raise CheckTimedOut in the main thread when the block runs longer than ``seconds``.

    Uses SIGALRM, which interrupts Python loops (a learner's ``while True``); elsewhere (other
    threads, Windows) it runs the block without a limit and the grader's process limit holds.
    """
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def _raise(signum, frame):
        raise CheckTimedOut(
            f"no answer after {seconds:.0f} s: does your function loop forever, or run the "
            f"attack many times?")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_check_deadline = float("inf")  # time.monotonic() by which the running check must end


def time_left() -> float:
    """Seconds left for the running check (a call in the learner's kernel waits no longer)."""
    return _check_deadline - time.monotonic()


# A function served from the learner's kernel stops its own calls at the check's deadline;
# the alarm is then only a safety net for the grader's side.
REMOTE_GRACE_S = 30.0


def run_checks_list(name: str, checks: list[tuple[str, Callable]], fn: Callable, *,
                    timeout: float = CHECK_TIMEOUT_S) -> list[CheckResult]:
    """Run the given (description, check) pairs on ``fn``, each within ``timeout`` seconds."""
    global _check_deadline
    results = []
    alarm = timeout + (REMOTE_GRACE_S if getattr(fn, "served_from_kernel", False) else 0.0)
    for description, check_fn in checks:
        start = time.perf_counter()
        _check_deadline = time.monotonic() + timeout
        try:
            with time_limit(alarm):
                check_fn(fn)
        except CheckFailed as failure:
            results.append(CheckResult(name, description, False, str(failure)))
        except NotImplementedError:
            results.append(CheckResult(name, description, False,
                                       "not implemented yet: replace `raise NotImplementedError`"))
        except LearnerRaised as err:  # in the learner's kernel: it says where
            results.append(CheckResult(name, description, False, err.describe()))
        except Exception as err:  # the learner's code crashed: show where
            frames = traceback.extract_tb(err.__traceback__)
            where = next((f"line {f.lineno} of {f.name}" for f in reversed(frames)
                          if "workbench" not in f.filename), "")
            results.append(CheckResult(name, description, False,
                                       f"your function raised {type(err).__name__}: {err}"
                                       + (f" ({where})" if where else "")))
        else:
            results.append(CheckResult(name, description, True))
        finally:
            _check_deadline = float("inf")
        results[-1].seconds = round(time.perf_counter() - start, 3)
    return results


def format_results(results: list[CheckResult]) -> str:
    """Results as lines: a tick or a cross, the check, and the message of a failure."""
    lines = []
    for r in results:
        lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.check}")
        if not r.passed:
            lines.append(f"      -> {r.message}")
    passed = sum(r.passed for r in results)
    lines.append(f"{passed}/{len(results)} checks passed"
                 + (": well done." if passed == len(results) else "."))
    return "\n".join(lines)
