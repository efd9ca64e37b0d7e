"""Notebook 07's checks pass on the notebook's answers (read from its master) and on the
package's own, and each broken variant fails with the message that names its mistake, and no
other mistake's."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
import torch
from torch import nn

from workbench.attacks import pgd
from workbench.defenses.squeezing import bit_depth
from workbench.exercises import nb07_defenses as checks
from workbench.exercises import run_checks


NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "07_defenses.py"


def _notebook_answers() -> dict:
    """The notebook's own answers: its exercise cells, run with the names they import."""
    namespace = {"nn": nn, "pgd": pgd, "bit_depth": bit_depth}
    for cell in jupytext.read(NOTEBOOK).cells:
        if "exercise" in cell.metadata.get("tags", []):
            exec(cell.source, namespace)
    return namespace


ANSWERS = _notebook_answers()
bpda_attack = ANSWERS["bpda_attack"]
attack_through_autoencoder = ANSWERS["attack_through_autoencoder"]


def _failures(name, fn):
    return [r for r in run_checks(name, fn) if not r.passed]


@pytest.mark.parametrize("name, fn", [
    ("bpda_attack", bpda_attack), ("bpda_attack", checks.reference_bpda_attack),
    ("attack_through_autoencoder", attack_through_autoencoder),
    ("attack_through_autoencoder", checks.reference_attack_through_autoencoder)])
def test_the_answers_pass_every_check(name, fn):
    assert _failures(name, fn) == []


MISTAKES = [("bpda_attack", message, wrong) for message, wrong in checks.BPDA_MISTAKES] + [
    ("attack_through_autoencoder", message, wrong)
    for message, wrong in checks.AUTOENCODER_MISTAKES]


@pytest.mark.parametrize("name, message, wrong", MISTAKES,
                         ids=[m[1][:40] for m in MISTAKES])
def test_each_mistake_fails_naming_itself(name, message, wrong):
    failed = _failures(name, wrong)
    assert failed, "a known mistake passed every check"
    others = {m for _, m, _ in MISTAKES} - {message}
    for result in failed:
        assert message in result.message, (result.check, result.message)
        assert not any(other in result.message for other in others), result.message


def test_a_detached_squeeze_is_caught_with_the_zero_gradient_message():
    """``bit_depth(x, bits)`` alone, without the straight-through step: autograd's gradient
    through the rounding is zero, so PGD stays at its random start."""
    def no_straight_through(model, x, y, *, bits, eps, alpha, steps, generator=None):
        class BitDepth(nn.Module):
            def forward(self, x):
                return bit_depth(x, bits)

        return pgd(nn.Sequential(BitDepth(), model), x, y, eps=eps, alpha=alpha, steps=steps,
                   generator=generator).x_adv

    failed = _failures("bpda_attack", no_straight_through)
    assert failed and all(checks.ZERO_GRADIENT in r.message for r in failed)


def test_the_probes_tell_every_mistake_from_the_answer():
    for probes, mistakes, answer in ((checks.BPDA_PROBES, checks.BPDA_MISTAKES, bpda_attack),
                                     (checks.AUTOENCODER_PROBES, checks.AUTOENCODER_MISTAKES,
                                      attack_through_autoencoder)):
        for message, wrong in mistakes:
            differs = False
            for probe in probes:
                args, kwargs = probe()
                mine = answer(*args, **kwargs)
                args, kwargs = probe()
                differs |= not torch.allclose(mine, wrong(*args, **kwargs), atol=1e-5)
            assert differs, message
