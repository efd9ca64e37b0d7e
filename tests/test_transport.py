"""What comes back from the learner's kernel is data, and checks see the call's effects: the
transport between the grader's checks and a served call, and the switched-off references."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from workbench.exercises import transport
from workbench.exercises.core import Spy


def _over_the_wire(data):
    """``data`` saved as the kernel saves it and read as the grader reads it."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _kernel_copy(obj):
    """The kernel's own copy of an argument (it arrives pickled)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()


def test_in_place_changes_mode_statistics_and_grads_reach_the_graders_arguments():
    model, x, generator, spy = _net(), torch.rand(5, 4), torch.Generator().manual_seed(1), Spy()
    args = ((model, x), {"generator": generator, "attack": spy})
    theirs = _kernel_copy(args)
    tracked = transport.tracked(theirs)
    before = [transport.snapshot(obj) for obj in tracked]
    kernel_model, kernel_x = theirs[0]
    kernel_model.train()  # the learner's mistakes, made in the kernel
    kernel_model(kernel_x).sum().backward()
    kernel_x.mul_(0)
    torch.rand(3, generator=theirs[1]["generator"])
    theirs[1]["attack"](None, kernel_x, None, 0.25)
    changes = _over_the_wire([transport.changes(o, b) for o, b in zip(tracked, before)])
    for obj, change in zip(transport.tracked(args), changes):
        assert change is not None
        transport.apply_changes(obj, change)
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, kernel_model[1].running_mean)
    assert torch.equal(model[0].weight.grad, kernel_model[0].weight.grad)
    assert torch.equal(x, torch.zeros(5, 4))
    assert torch.equal(generator.get_state(), theirs[1]["generator"].get_state())
    assert spy.calls == [0.25]


def test_an_untouched_argument_reports_no_change():
    model, x = _net(), torch.rand(2, 4)
    tracked = transport.tracked((model, x))
    before = [transport.snapshot(obj) for obj in tracked]
    with torch.no_grad():
        model(x)
    assert [transport.changes(o, b) for o, b in zip(tracked, before)] == [None, None]


def test_a_returned_loss_carries_its_kernel_gradient_to_the_graders_model():
    model, x = _net(), torch.rand(6, 4)
    kernel_model, kernel_x = _kernel_copy((model, x))
    loss = kernel_model(kernel_x).pow(2).mean()
    data = _over_the_wire(transport.encode_result(loss, transport.tracked((kernel_model,
                                                                           kernel_x))))
    returned = transport.decode_result(data, transport.tracked((model, x)))
    assert returned.requires_grad and torch.allclose(returned.detach(), loss.detach())
    returned.backward()
    expected = torch.autograd.grad(model(x).pow(2).mean(), list(model.parameters()))
    for param, grad in zip(model.parameters(), expected):
        assert torch.allclose(param.grad, grad, atol=1e-6)


def test_a_detached_result_has_no_gradient():
    data = _over_the_wire(transport.encode_result(torch.tensor(2.0), []))
    assert not transport.decode_result(data, []).requires_grad


def test_results_come_back_as_the_same_kinds_of_data():
    value = (torch.ones(2), 3, 0.5, "text", None, [1, 2], {"a": torch.zeros(1)},
             np.arange(3, dtype=np.float32))
    back = transport.decode_result(_over_the_wire(transport.encode_result(value, [])), [])
    assert isinstance(back, tuple) and back[1:6] == (3, 0.5, "text", None, [1, 2])
    assert torch.equal(back[0], torch.ones(2)) and torch.equal(back[6]["a"], torch.zeros(1))
    assert isinstance(back[7], np.ndarray) and back[7].tolist() == [0, 1, 2]


def test_an_object_the_grader_does_not_read_keeps_only_its_class_name():
    class AttackResult:
        pass

    back = transport.decode_result(
        _over_the_wire(transport.encode_result(AttackResult(), [])), [])
    assert type(back).__name__ == "AttackResult" and "returned by your function" in repr(back)


def test_the_grader_refuses_to_unpickle_objects():
    buffer = io.BytesIO()
    torch.save({"result": Spy()}, buffer)  # what a forged response could hold
    buffer.seek(0)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(buffer, weights_only=True)


def test_a_switched_off_reference_raises_however_it_was_imported():
    # In a process of its own: switching a reference off is for the rest of the process.
    code = (
        "import sys, torch\n"
        "from workbench.attacks import fgsm as imported_before\n"
        "import importlib\n"
        "pgd = importlib.import_module('workbench.attacks.pgd')  # the module, not pgd()\n"
        "from workbench.exercises.serve import REFERENCE_MARK, block_references\n"
        "block_references(['workbench.attacks.fgsm.fgsm', 'workbench.attacks.pgd.project'])\n"
        "for call in (lambda: imported_before(None, None, None, 0.1),\n"
        "             lambda: pgd.project(torch.zeros(1, 2), 1.0, 'l2')):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as err:\n"
        "        assert REFERENCE_MARK in str(err), err\n"
        "    else:\n"
        "        raise SystemExit('the reference still runs')\n"
        "assert sys._workbench_reference_calls == ['workbench.attacks.fgsm.fgsm',\n"
        "                                          'workbench.attacks.pgd.project']\n"
        "assert pgd.l2_norms(torch.ones(1, 4)).flatten().tolist() == [2.0]  # not blocked\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_models_old_gradients_reach_the_kernel():
    model = _net()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    args, kwargs = transport.open_request(_kernel_copy(transport.request((model,), {})))
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in args[0].parameters())
