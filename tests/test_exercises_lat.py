"""Notebook 04's checks pass on the reference solutions (below: the notebook's answers) and on
the package's own functions, and each broken variant fails exactly the checks it should, every
one of them with a message naming its mistake and none naming another. Hook removal and the
stale ``.grad`` are also checked through the grader's transport (:class:`Served`), where the
learner's function runs on pickled copies and only data comes back."""

from __future__ import annotations

import io
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_named
from workbench.attacks.core import attack_mode
from workbench.attacks.pgd import ascent_step, project, random_in_ball
from workbench.exercises import get_exercise, run_checks, transport
from workbench.exercises import nb04_lat
from workbench.exercises.core import LearnerRaised
from workbench.lat import activations, get_layer, lat_loss, latent_pgd, perturbed, random_latent


# ----------------------------------------------------------------------------- the solutions

def latent_attack(model, layer, x, y, *, eps, steps, generator=None):
    module = get_layer(model, layer)
    with attack_mode(model):  # eval mode, frozen parameters; both restored at the end
        hidden = activations(model, layer, x)
        delta = random_in_ball(hidden, eps, "l2", generator)
        handle = module.register_forward_hook(lambda module, inputs, output: output + delta)
        try:
            for _ in range(steps):
                delta.requires_grad_(True)
                loss = F.cross_entropy(model(x), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, delta)
                delta = project(delta.detach() + ascent_step(grad, eps / steps, "l2"), eps, "l2")
        finally:
            handle.remove()
    return delta.detach()


def lat_step(model, optimizer, layer, x, y, *, eps, steps, generator=None):
    delta = latent_pgd(model, layer, x, y, eps=eps, steps=steps, generator=generator)
    model.train()
    with perturbed(model, layer, delta):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


# The package's functions as answers.

def package_latent_attack(model, layer, x, y, *, eps, steps, generator=None):
    return latent_pgd(model, layer, x, y, eps=eps, steps=steps, generator=generator)


def package_lat_step(model, optimizer, layer, x, y, *, eps, steps, generator=None):
    model.train()
    loss = lat_loss(model, x, y, layer=layer, eps=eps, steps=steps, generator=generator)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


class Served:
    """``fn`` called as ``workbench grade`` calls it (:mod:`workbench.exercises.serve`), without
    a kernel: on copies of the arguments that went through ``torch.save`` / ``torch.load``, and
    only what the transport sends back (read with ``weights_only=True``) reaches the
    originals; what ``fn`` raised comes back as LearnerRaised."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = fn.__name__

    @staticmethod
    def _through_file(obj, *, weights_only):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=weights_only)

    def __call__(self, *args, **kwargs):
        their_args, their_kwargs = transport.open_request(
            self._through_file(transport.request(args, kwargs), weights_only=False))
        theirs = transport.tracked((their_args, their_kwargs))
        before = [transport.snapshot(obj) for obj in theirs]
        error = result = None
        try:
            result = self.fn(*their_args, **their_kwargs)
        except Exception as err:
            error = err
        payload = {"changes": [transport.changes(obj, b) for obj, b in zip(theirs, before)]}
        if error is None:
            payload["result"] = transport.encode_result(result, theirs)
        payload = self._through_file(payload, weights_only=True)
        mine = transport.tracked((args, kwargs))
        for obj, change in zip(mine, payload["changes"]):
            if change is not None:
                transport.apply_changes(obj, change)
        if error is not None:
            raise LearnerRaised(type(error).__name__, str(error))
        return transport.decode_result(payload["result"], mine)


def _failures(name, fn):
    return [(r.check, r.message) for r in run_checks(name, fn) if not r.passed]


@pytest.mark.parametrize("answer", [latent_attack, package_latent_attack,
                                    Served(latent_attack)], ids=["solution", "package", "served"])
def test_latent_attack_answers_pass(answer):
    assert not _failures("latent_attack", answer)


@pytest.mark.parametrize("answer", [lat_step, package_lat_step, Served(lat_step)],
                         ids=["solution", "package", "served"])
def test_lat_step_answers_pass(answer):
    assert not _failures("lat_step", answer)


def test_the_student_versions_fail_every_check_as_not_implemented():
    def latent_attack(model, layer, x, y, *, eps, steps, generator=None):
        raise NotImplementedError

    def lat_step(model, optimizer, layer, x, y, *, eps, steps, generator=None):
        raise NotImplementedError

    for name, student in (("latent_attack", latent_attack), ("lat_step", lat_step)):
        results = run_checks(name, student)
        assert results and all("not implemented yet" in r.message for r in results), name


def test_answers_that_return_nothing_are_told_what_to_return():
    failures = dict(_failures("latent_attack", lambda *a, **k: None))
    assert set(failures) == set(ATTACK_CHECKS.values()) - {ATTACK_CHECKS["hooks"]}
    assert all("return delta" in m for m in failures.values()), failures
    messages = [m for _, m in _failures("lat_step", lambda *a, **k: None)]
    assert any("return loss.item()" in m for m in messages), messages


def test_each_diagnosis_tells_its_known_mistakes_from_each_other_and_from_the_reference():
    for diagnose, mistakes, reference in (
            (nb04_lat.diagnose_attack, nb04_lat.ATTACK_MISTAKES, latent_attack),
            (nb04_lat.diagnose_step, nb04_lat.STEP_MISTAKES, lat_step)):
        assert diagnose(reference) is None, diagnose.__name__
        for message, wrong in mistakes:
            assert diagnose(wrong) == message, (diagnose.__name__, message)


def test_the_checks_are_the_ones_these_tests_name():
    for name, checks in (("latent_attack", ATTACK_CHECKS), ("lat_step", STEP_CHECKS)):
        assert [d for d, _ in get_exercise(name).checks] == list(checks.values())
        assert get_exercise(name).notebook == "04_lat"


def test_the_check_models_count_hooks_and_carry_grads_to_the_kernel():
    model = nb04_lat._stale_grads(nb04_lat.LayeredNet(0), 0)
    (copy,), _ = transport.open_request(
        Served._through_file(transport.request((model,), {}), weights_only=False))
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(),
                                                          copy.parameters()))
    handle = get_layer(copy, "layer2.0").register_forward_hook(lambda *_: None)
    pre = copy.conv1.register_forward_pre_hook(lambda *_: None)
    assert nb04_lat.hooks_left(copy) == 2
    with perturbed(copy, "layer1", torch.zeros(2, 6, 8, 8)):
        assert nb04_lat.hooks_left(copy) == 3
    handle.remove()
    pre.remove()
    assert nb04_lat.hooks_left(copy) == 0


# ----------------------------------------------------------------------------- latent_attack

ATTACK_MISTAKES = {
    "train": "you attacked the model in train mode",
    "projection": "did not project",
    "linf": "L-inf ball",
    "descends": "against the gradient",
    "step_eps": "step size is eps / steps",
    "zero_start": "started from delta = 0",
    "input": "the layer's input",
    "perturbed": "perturbed activations",
    "generator": "generator was not used",
    "layer": "get_layer(model, layer)",
    "mode": "left the model in eval mode",
    "grad": ".grad changed",
    "stats": "running statistics moved",
    "hook": "still on the model after your function returned",
    "hook_on_error": "stayed on the model when your function raised",
}

ATTACK_CHECKS = {
    "shape": "returns a tensor shaped like the layer's output",
    "ball": "keeps every example inside the L2 ball of radius eps",
    "layer": "perturbs the layer it is given (dotted paths too), not another",
    "random": "matches the reference latent PGD on random networks (same generator)",
    "side_effects": "attacks in eval mode and leaves the model's mode, statistics and .grad as "
                    "they were",
    "hooks": "removes its hook, also when it raises",
    "digits": "matches the reference on the notebook's digits ResNet (net.layer2)",
}


def _attack(model, layer, x, y, *, eps, steps, generator=None, find=get_layer,
            project_=True, norm="l2", direction=1, alpha=None, start="random", mode="attack_mode",
            hidden_first=False, backward=False, pre_hook=False, returns="delta",
            remove="finally"):
    """latent_attack written the learner's way, with one of their mistakes."""
    module = find(model, layer)
    if hidden_first:  # the activations computed before the model is put in eval mode
        hidden = activations(model, layer, x)
    with (attack_mode(model) if mode == "attack_mode" else
          nullcontext() if mode == "train" else _ManualEval(model, mode)):
        if pre_hook:
            hidden = torch.zeros(0)
            seen = module.register_forward_pre_hook(
                lambda module, inputs: hidden.set_(inputs[0].detach().clone()))
            with torch.no_grad():
                model(x)
            seen.remove()
        elif not hidden_first:
            hidden = activations(model, layer, x)
        delta = (random_in_ball(hidden, eps, norm, generator) if start == "random" else
                 random_in_ball(hidden, eps, norm) if start == "global" else
                 torch.zeros_like(hidden))
        if pre_hook:
            handle = module.register_forward_pre_hook(lambda module, inputs: inputs[0] + delta)
        else:
            handle = module.register_forward_hook(lambda module, inputs, output: output + delta)
        try:
            for _ in range(steps):
                delta.requires_grad_(True)
                loss = F.cross_entropy(model(x), y, reduction="sum")
                if backward:
                    loss.backward()
                    grad = delta.grad
                else:
                    (grad,) = torch.autograd.grad(loss, delta)
                delta = delta.detach() + direction * ascent_step(grad, alpha or eps / steps, norm)
                if project_:
                    delta = project(delta, eps, norm)
            if remove == "after_loop":
                handle.remove()
        finally:
            if remove == "finally":
                handle.remove()
    return (hidden + delta).detach() if returns == "perturbed" else delta.detach()


class _ManualEval:
    """model.eval() by hand: "keep" never restores the mode; "restore" does, but leaves the
    parameters trainable (so loss.backward() fills their .grad)."""

    def __init__(self, model, how):
        self.model, self.how = model, how

    def __enter__(self):
        self.was = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        if self.how == "restore":
            self.model.train(self.was)
        return False


def no_projection(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, project_=False, **kw)


def attacks_in_train_mode(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, mode="train", **kw)


def linf_ball(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, norm="linf", **kw)


def descends(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, direction=-1, **kw)


def steps_of_eps(model, layer, x, y, *, eps, **kw):
    return _attack(model, layer, x, y, eps=eps, alpha=eps, **kw)


def starts_at_zero(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, start="zero", **kw)


def perturbs_layer_input(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, pre_hook=True, **kw)


def returns_perturbed_activations(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, returns="perturbed", **kw)


def hard_coded_layer(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, find=lambda model, _: get_layer(model, "layer1"), **kw)


def getattr_layer(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, find=getattr, **kw)


def ignores_generator(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, start="global", **kw)


def leaves_eval_mode(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, mode="keep", **kw)


def fills_parameter_grads(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, mode="restore", backward=True, **kw)


def activations_in_train_mode(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, hidden_first=True, **kw)


def keeps_its_hook(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, remove="never", **kw)


def keeps_its_hook_on_error(model, layer, x, y, **kw):
    return _attack(model, layer, x, y, remove="after_loop", **kw)


BROKEN_ATTACKS = {
    no_projection: ({"ball", "layer", "random", "side_effects", "digits"}, {"projection"}),
    attacks_in_train_mode: ({"side_effects"}, {"train"}),
    linf_ball: ({"ball", "layer", "random", "side_effects", "digits"}, {"linf"}),
    descends: ({"layer", "random", "side_effects", "digits"}, {"descends"}),
    steps_of_eps: ({"layer", "random", "side_effects", "digits"}, {"step_eps"}),
    starts_at_zero: ({"layer", "random", "side_effects", "digits"}, {"zero_start"}),
    perturbs_layer_input: ({"shape", "layer", "random", "side_effects", "digits"}, {"input"}),
    returns_perturbed_activations: ({"ball", "layer", "random", "side_effects", "digits"},
                                    {"perturbed"}),
    hard_coded_layer: ({"shape", "layer", "random", "digits"}, {"layer"}),
    getattr_layer: ({"layer", "digits"}, {"layer"}),
    ignores_generator: ({"layer", "random", "side_effects", "digits"}, {"generator"}),
    leaves_eval_mode: ({"side_effects"}, {"mode"}),
    fills_parameter_grads: ({"side_effects"}, {"grad"}),
    activations_in_train_mode: ({"side_effects"}, {"stats"}),  # they moved first
    keeps_its_hook: ({"hooks", "digits"}, {"hook"}),
    keeps_its_hook_on_error: ({"hooks"}, {"hook_on_error"}),
}


@pytest.mark.parametrize("broken", list(BROKEN_ATTACKS), ids=lambda f: f.__name__)
def test_broken_attacks_fail_the_right_checks_each_naming_its_mistake(broken):
    expected_checks, mistakes = BROKEN_ATTACKS[broken]
    assert_named(run_checks("latent_attack", broken), expected_checks, mistakes, ATTACK_CHECKS,
                 ATTACK_MISTAKES)


@pytest.mark.parametrize("broken", [keeps_its_hook, keeps_its_hook_on_error,
                                    fills_parameter_grads, leaves_eval_mode],
                         ids=lambda f: f.__name__)
def test_side_effects_are_seen_through_the_graders_transport(broken):
    expected_checks, mistakes = BROKEN_ATTACKS[broken]
    results = [r for r in run_checks("latent_attack", Served(broken))
               if r.check in (ATTACK_CHECKS["side_effects"], ATTACK_CHECKS["hooks"])]
    expected = {"side_effects", "hooks"} & expected_checks
    assert_named(results, expected, mistakes, ATTACK_CHECKS, ATTACK_MISTAKES)


# ----------------------------------------------------------------------------- lat_step

STEP_MISTAKES = {
    "ft": "clean fine-tuning step",
    "random": "random delta",
    "zero_grad": "optimizer.zero_grad() before",
    "eval": "step in eval mode",
    "sum": "summed loss",
    "no_step": "call optimizer.step()",
    "clean_loss": "returned the clean loss",
    "tensor": "returned a tensor",
    "hook": "hook is still on the model",
}

STEP_CHECKS = {
    "loss": "returns the loss under the perturbation, as a float",
    "params": "steps the parameters as the reference LAT step does (SGD, same generator)",
    "stats": "trains in train mode: BatchNorm's statistics move as in the reference step",
    "zero_grad": "clears old gradients before the backward pass (optimizer.zero_grad())",
    "hooks": "leaves no hook on the model",
    "digits": "takes the reference step on the notebook's digits ResNet (net.layer2)",
}


def _step(model, optimizer, layer, x, y, *, eps, steps, generator=None, delta="lat",
          train=True, reduction="mean", zero_grad=True, step=True, returns="loss",
          hook="perturbed"):
    """lat_step written the learner's way, with one of their mistakes."""
    if delta == "lat":
        delta = latent_pgd(model, layer, x, y, eps=eps, steps=steps, generator=generator)
    elif delta == "rlp":
        delta = random_latent(model, layer, x, eps=eps, generator=generator)
    if train:
        model.train()
    if returns == "clean":
        clean = F.cross_entropy(model(x), y)
    if delta is None:
        loss = F.cross_entropy(model(x), y, reduction=reduction)
    elif hook == "perturbed":
        with perturbed(model, layer, delta):
            loss = F.cross_entropy(model(x), y, reduction=reduction)
    else:  # a hook of its own, never removed
        get_layer(model, layer).register_forward_hook(lambda m, inputs, output: output + delta)
        loss = F.cross_entropy(model(x), y, reduction=reduction)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    if step:
        optimizer.step()
    return {"loss": loss.item(), "tensor": loss,
            "clean": clean.item() if returns == "clean" else None}[returns]


def fine_tuning_step(*args, **kw):
    return _step(*args, delta=None, **kw)


def rlp_step(*args, **kw):
    return _step(*args, delta="rlp", **kw)


def forgets_zero_grad(*args, **kw):
    return _step(*args, zero_grad=False, **kw)


def steps_in_eval_mode(*args, **kw):
    return _step(*args, train=False, **kw)


def summed_loss(*args, **kw):
    return _step(*args, reduction="sum", **kw)


def forgets_optimizer_step(*args, **kw):
    return _step(*args, step=False, **kw)


def returns_clean_loss(*args, **kw):
    return _step(*args, returns="clean", **kw)


def returns_tensor(*args, **kw):
    return _step(*args, returns="tensor", **kw)


def keeps_hook(*args, **kw):
    return _step(*args, hook="own", **kw)


BROKEN_STEPS = {
    fine_tuning_step: ({"loss", "params", "stats", "zero_grad", "digits"}, {"ft"}),
    rlp_step: ({"loss", "params", "stats", "zero_grad", "digits"}, {"random"}),
    forgets_zero_grad: ({"zero_grad"}, {"zero_grad"}),
    steps_in_eval_mode: ({"loss", "params", "stats", "zero_grad", "digits"}, {"eval"}),
    summed_loss: ({"loss", "params", "zero_grad", "digits"}, {"sum"}),
    forgets_optimizer_step: ({"params", "zero_grad", "digits"}, {"no_step"}),
    returns_clean_loss: ({"loss", "stats", "digits"}, {"clean_loss"}),
    returns_tensor: ({"loss", "digits"}, {"tensor"}),
    keeps_hook: ({"hooks", "digits"}, {"hook"}),
}


@pytest.mark.parametrize("broken", list(BROKEN_STEPS), ids=lambda f: f.__name__)
def test_broken_steps_fail_the_right_checks_each_naming_its_mistake(broken):
    expected_checks, mistakes = BROKEN_STEPS[broken]
    assert_named(run_checks("lat_step", broken), expected_checks, mistakes, STEP_CHECKS,
                 STEP_MISTAKES)


@pytest.mark.parametrize("broken", [forgets_zero_grad, keeps_hook], ids=lambda f: f.__name__)
def test_stale_grads_and_hooks_are_seen_through_the_graders_transport(broken):
    expected_checks, mistakes = BROKEN_STEPS[broken]
    results = [r for r in run_checks("lat_step", Served(broken))
               if r.check != STEP_CHECKS["digits"]]
    assert_named(results, expected_checks - {"digits"}, mistakes, STEP_CHECKS, STEP_MISTAKES)
