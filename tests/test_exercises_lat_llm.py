"""Notebook 05's checks pass on the notebook's answers (read from its master) and on the
package's own, and each broken variant (no projection, the wrong layer, the loss over the
prompt tokens, ...) fails with the message that names its mistake, and no other mistake's."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
import torch

from workbench.exercises import run_checks

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05_lat_llm.py"


@pytest.fixture(scope="module")
def checks():
    """The checks of notebook 05, with the notebook's poisoned base in the cache: the notebook
    trains it before its exercises, and from an empty cache that takes longer than a check
    may (a check that times out names the learner's function, not the set-up)."""
    from workbench.exercises import nb05_lat_llm

    nb05_lat_llm._base_backbone()
    return nb05_lat_llm


@pytest.fixture(scope="module")
def answers(checks):
    """The notebook's own answers: its exercise cells, run with the names the notebook
    imports (its import cell, which imports keras-hub)."""
    cells = jupytext.read(NOTEBOOK).cells
    imports = next(c.source for c in cells
                   if c.cell_type == "code" and "from workbench.lat.residual import" in c.source)
    namespace: dict = {}
    exec(imports.replace("device = start(seed=0)", ""), namespace)
    for cell in cells:
        if "exercise" in cell.metadata.get("tags", []):
            exec(cell.source, namespace)
    return namespace


def _failures(name, fn):
    return [r for r in run_checks(name, fn) if not r.passed]


@pytest.mark.parametrize("name", ["residual_attack", "lat_llm_loss"])
def test_the_notebooks_answers_pass_every_check(name, answers):
    assert _failures(name, answers[name]) == []


def test_the_packages_references_pass_every_check(checks):
    assert _failures("residual_attack", checks.reference_residual_attack) == []
    assert _failures("lat_llm_loss", checks.reference_lat_llm_loss) == []


def _mistakes():
    from workbench.exercises import nb05_lat_llm as checks

    return ([("residual_attack", m, w) for m, w in checks.ATTACK_MISTAKES]
            + [("lat_llm_loss", m, w) for m, w in checks.LOSS_MISTAKES])


MISTAKES = _mistakes()


@pytest.mark.parametrize("name, message, wrong", MISTAKES, ids=[m[1][:40] for m in MISTAKES])
def test_each_mistake_fails_naming_itself(name, message, wrong, checks):
    failed = _failures(name, wrong)
    assert failed, "a known mistake passed every check"
    others = {m for _, m, _ in MISTAKES} - {message}
    for result in failed:
        assert message in result.message, (result.check, result.message)
        assert not any(other in result.message for other in others), result.message


def test_the_probes_tell_every_mistake_from_the_answer(checks, answers):
    for name, probes, mistakes in (
            ("residual_attack", checks.ATTACK_PROBES, checks.ATTACK_MISTAKES),
            ("lat_llm_loss", checks.LOSS_PROBES, checks.LOSS_MISTAKES)):
        for message, wrong in mistakes:
            differs = False
            for probe in probes:
                args, kwargs = probe()
                mine = torch.as_tensor(answers[name](*args, **kwargs)).detach()
                args, kwargs = probe()
                theirs = torch.as_tensor(wrong(*args, **kwargs)).detach()
                differs |= not torch.allclose(mine, theirs, atol=1e-5)
            assert differs, message


def test_a_loss_returned_as_a_float_is_told_to_return_the_tensor(answers):
    def as_float(*args, **kwargs):
        return answers["lat_llm_loss"](*args, **kwargs).item()

    failed = _failures("lat_llm_loss", as_float)
    assert failed and all("no .item()" in r.message for r in failed)


def test_a_perturbation_of_the_wrong_shape_says_so(answers):
    def one_token(*args, **kwargs):
        return answers["residual_attack"](*args, **kwargs)[:, :1]

    failed = _failures("residual_attack", one_token)
    assert failed and all("the stream is (N, T, D)" in r.message for r in failed)
