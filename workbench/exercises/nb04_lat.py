"""Notebook 04's exercises: the latent PGD inner loop written with a forward hook
(``latent_attack``) and one step of latent adversarial training (``lat_step``, Algorithm 1 of
Casper et al.). The references are the package's own functions,
:func:`workbench.lat.latent_pgd` and :func:`workbench.lat.lat_loss` followed by an SGD step,
not copies of the notebook's solutions.

The checks run on :class:`LayeredNet`, a tiny ResNet-shaped network over 3 x 8 x 8 images whose
layers have outputs of different shapes (so a perturbation of the wrong layer usually has the
wrong shape) and several of the same shape (so one that has the right shape is still caught),
and once on the notebook's own digits ResNet. Each exercise has one diagnosis
(:func:`diagnose_attack`, :func:`diagnose_step`): the learner's function is tried against
small wrong versions of it, and every failing check names the mistake it reproduces
(``workbench.exercises.core.diagnosed``).

Hooks left behind, in the notebook and under the grader
--------------------------------------------------------
Under ``workbench grade`` the learner's function runs on a pickled copy of the model in their
kernel, and only data comes back: changed weights, buffers, ``.grad``, and the plain public
attributes of every submodule (``training``, ...). A forward hook is not among them, and once
the function has returned nothing runs in the kernel that could notice one. So the models the
checks hand over keep their own count: :func:`count_hooks` replaces each submodule's forward-hook
and forward-pre-hook dicts by a :class:`HookLedger`, a dict that, whenever a hook is added or
removed (``register_forward_hook``, ``handle.remove()``, ``perturbed``...), writes how many the
module holds into a plain int attribute of that module, ``hooks_held``. That attribute *is*
mirrored back, so :func:`hooks_left` reads the same number in the notebook (where the count is
live) and in the grader (where it is the kernel's count at the end of the call, also when the
call raised: the grader applies the changes before it reports the error). The ledger pickles
with the model (a module-level class), so it keeps counting in the kernel. What it cannot see:
hooks registered globally (``torch.nn.modules.module.register_module_forward_hook``), which
belong to no module; the exercise does not ask for those.
"""

from __future__ import annotations

import copy
import functools
import numbers
from collections import OrderedDict
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from workbench.attacks.core import attack_mode
from workbench.attacks.pgd import ascent_step, l2_norms, project, random_in_ball
from workbench.exercises.core import (CheckFailed, LearnerRaised, as_tensor, diagnosed, exercise,
                                      known_mistake)
from workbench.lat.latent import activations, get_layer, perturbed, random_latent, relative_eps
from workbench.lat.latent import latent_pgd as reference_latent_pgd
from workbench.lat.training import lat_loss as reference_lat_loss

IMAGE_SHAPE = (3, 8, 8)
NUM_CLASSES = 5
# A rounding margin: the reference may run only the part of the network above the layer, the
# learner's answer the whole network with a hook; the two agree to about 1e-6.
ATOL = 1e-4


# ----------------------------------------------------------------------------- hook counting

class HookLedger(OrderedDict):
    """A module's ``_forward_hooks`` or ``_forward_pre_hooks`` that, on every change, writes how
    many hooks of either kind its module holds into the module's ``hooks_held`` (a plain int
    attribute, which the grader mirrors back; see the module docstring)."""

    def _recount(self) -> None:
        owner = self.__dict__.get("owner")  # not yet set while unpickling
        if owner is not None:
            owner.__dict__["hooks_held"] = (len(owner.__dict__.get("_forward_hooks", ()))
                                            + len(owner.__dict__.get("_forward_pre_hooks", ())))

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._recount()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._recount()

    def pop(self, *args):
        value = super().pop(*args)
        self._recount()
        return value

    def popitem(self, last=True):
        item = super().popitem(last)
        self._recount()
        return item

    def clear(self):
        super().clear()
        self._recount()

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self._recount()

    def setdefault(self, key, default=None):
        value = super().setdefault(key, default)
        self._recount()
        return value


def count_hooks(model: nn.Module) -> nn.Module:
    """Make every submodule of ``model`` count its forward hooks (:class:`HookLedger`);
    returns ``model``."""
    for module in model.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks"):
            ledger = HookLedger(module.__dict__[name])
            ledger.owner = module
            module.__dict__[name] = ledger
        ledger._recount()
    return model


def hooks_left(model: nn.Module) -> int:
    """How many forward hooks and pre-hooks the modules of a :func:`count_hooks` model hold."""
    return sum(module.__dict__.get("hooks_held", 0) for module in model.modules())


# ----------------------------------------------------------------------------- models and cases

class LayeredNet(nn.Module):
    """A seeded ResNet-shaped classifier: (N, 3, 8, 8) -> logits (N, 5).

    Layers (output shape per example): ``conv1`` (6, 8, 8), ``bn1``, ``relu``, ``layer1`` (conv,
    BatchNorm, ReLU; 6, 8, 8), ``layer2`` (stride-2 conv, BatchNorm, ReLU; 8, 4, 4), ``drop``
    (Dropout, off unless ``dropout``), ``fc``. Random BatchNorm statistics, so train and eval
    mode differ. Built in eval mode, counting its hooks (:func:`count_hooks`).
    """

    def __init__(self, seed: int = 0, *, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                    nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * 4 * 4, NUM_CLASSES)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    fan_in = module.weight[0].numel()
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                        * 1.5 / fan_in ** 0.5)
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                elif isinstance(module, nn.BatchNorm2d):
                    c = module.num_features
                    module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                    module.bias.copy_(torch.randn(c, generator=generator) * 0.2)
                    module.running_mean.copy_(torch.randn(c, generator=generator) * 0.3)
                    module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
        count_hooks(self)
        self.eval()

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.drop(x).flatten(1))


def _batch(seed: int, n: int, shape=IMAGE_SHAPE, classes: int = NUM_CLASSES):
    generator = torch.Generator().manual_seed(1000 + seed)
    return (torch.rand((n, *shape), generator=generator),
            torch.randint(0, classes, (n,), generator=generator))


def _stale_grads(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter a ``.grad`` left from before (as after an earlier backward pass)."""
    generator = torch.Generator().manual_seed(2000 + seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)
    return model


@functools.lru_cache(maxsize=1)
def _digits_base() -> nn.Module:
    from workbench.lat.models import digits_resnet

    return digits_resnet(seed=0).eval()  # about 1 s to initialise: built once per process


def _digits_model() -> nn.Module:
    """A fresh copy of the notebook's lite digits ResNet (eval mode), counting its hooks."""
    return count_hooks(copy.deepcopy(_digits_base()))


def _attack_case(seed: int, layer: str, *, n: int = 6, fraction: float = 0.3, steps: int = 4,
                 dropout: float = 0.0, train: bool = False, digits: bool = False):
    """``(make_model, (layer, x, y), options)`` of one latent attack: ``make_model()`` builds
    the same fresh model each time (in train mode when ``train``); eps is ``fraction`` of the
    mean activation norm at the layer; options hold eps, steps and a generator seeded by
    ``seed`` (a new one each time ``options()`` is called)."""
    if digits:
        x, y = _batch(seed, n, shape=(1, 16, 16), classes=10)
        make_model = _digits_model
    else:
        x, y = _batch(seed, n)

        def make_model():
            return LayeredNet(seed, dropout=dropout).train(train)
    eps = relative_eps(make_model(), layer, x, fraction)

    def options():
        return {"eps": eps, "steps": steps, "generator": torch.Generator().manual_seed(seed)}
    return make_model, (layer, x, y), options


def _reference_attack(make_model, args, options) -> torch.Tensor:
    return reference_latent_pgd(make_model(), *args, **options())


def _learner_error(err: Exception) -> str:
    """What the learner's function raised, as the grader or the notebook saw it."""
    if isinstance(err, LearnerRaised):
        return err.describe()
    return f"your function raised {type(err).__name__}: {err}"


# ----------------------------------------------------------------------------- latent_attack

attack_exercise = exercise(
    "latent_attack", notebook="04_lat",
    title="latent PGD with a forward hook, latent_attack(model, layer, x, y, eps=, steps=)",
    references=("workbench.lat.latent.latent_pgd",))

TRAIN_MODE = ("you attacked the model in train mode (BatchNorm on the batch's statistics, "
              "Dropout random): run the attack inside `with attack_mode(model):`, which puts "
              "the model in eval mode and back")
NO_PROJECTION = ("you did not project: after each step bring delta back into the ball, delta "
                 "= project(delta + ascent_step(grad, eps / steps, 'l2'), eps, 'l2')")
LINF_BALL = ("you used the L-inf ball (uniform start, sign steps or clamping): LAT's ball is "
             "L2 over all of an example's activations; pass 'l2' to random_in_ball, "
             "ascent_step and project")
DESCENDS = ("you stepped against the gradient, which lowers the loss: the attack ascends it, "
            "delta + ascent_step(grad, eps / steps, 'l2')")
STEP_EPS = ("each step had size eps: the step size is eps / steps, "
            "ascent_step(grad, eps / steps, 'l2')")
NO_RANDOM_START = ("you started from delta = 0: start at a random point of the ball drawn "
                   "from the generator, random_in_ball(hidden, eps, 'l2', generator)")
LAYER_INPUT = ("you perturbed the layer's input (a forward pre-hook): add delta to its "
               "output, module.register_forward_hook(lambda module, inputs, output: output + "
               "delta)")
RETURNS_PERTURBED = ("you returned the perturbed activations hidden + delta: return the "
                     "perturbation delta itself, delta.detach()")
UNUSED_GENERATOR = ("the generator was not used: draw the random start from it, "
                    "random_in_ball(hidden, eps, 'l2', generator), so that the same seed gives "
                    "the same attack")
MODE_CHANGED = ("your function left the model in eval mode, but its caller had it in train "
                "mode: `with attack_mode(model):` puts each module's mode back when the block "
                "ends (model.eval() alone does not)")
GRAD_CHANGED = ("the parameters' .grad changed: take the gradient of delta alone, "
                "torch.autograd.grad(loss, delta), inside `with attack_mode(model):` (which "
                "freezes the parameters), not loss.backward() or model.zero_grad()")
STATS_MOVED = ("BatchNorm's running statistics moved: part of the attack ran the model in "
               "train mode; compute the activations and run every step inside "
               "`with attack_mode(model):`")
HOOK_LEFT = ("a forward hook is still on the model after your function returned: keep the "
             "handle, handle = module.register_forward_hook(...), and call handle.remove() in "
             "a `finally:` block")
HOOK_LEFT_ON_ERROR = ("a forward hook stayed on the model when your function raised (here y "
                      "had the wrong length): call handle.remove() in a `finally:` block, so "
                      "that it runs also when a step fails")


def _layer_input(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = module.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _wrong_attack(*, eval_mode=True, project_=True, direction=1, random_start=True, norm="l2",
                  step_eps=False, layer_input=False, returns_perturbed=False,
                  activations_first=False):
    """The latent attack with known mistakes: in train mode, without projection, stepping
    down, in the L-inf ball, with steps of eps, from zero, perturbing the layer's input,
    returning hidden + delta, or computing the activations before the model is in eval
    mode (which moves BatchNorm's statistics before the attack)."""
    def latent_attack(model, layer, x, y, *, eps, steps, generator=None):
        module = get_layer(model, layer)
        if activations_first:
            activations(model, layer, x)
        with attack_mode(model) if eval_mode else nullcontext():
            hidden = (_layer_input(model, module, x) if layer_input
                      else activations(model, layer, x))
            delta = (random_in_ball(hidden, eps, norm, generator) if random_start
                     else torch.zeros_like(hidden))
            if layer_input:
                handle = module.register_forward_pre_hook(lambda _, inputs: inputs[0] + delta)
            else:
                handle = module.register_forward_hook(lambda _, __, output: output + delta)
            alpha = eps if step_eps else eps / steps
            try:
                for _ in range(steps):
                    delta.requires_grad_(True)
                    loss = F.cross_entropy(model(x), y, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, delta)
                    delta = delta.detach() + direction * ascent_step(grad, alpha, norm)
                    if project_:
                        delta = project(delta, eps, norm)
            finally:
                handle.remove()
        return (hidden + delta).detach() if returns_perturbed else delta.detach()
    return latent_attack


def _attack_probe(seed, layer, **case):
    make_model, args, options = _attack_case(seed, layer, **case)

    def make():
        return (make_model(), *args), options()
    return make


ATTACK_PROBES = (
    _attack_probe(50, "layer1", fraction=0.5, steps=5),
    _attack_probe(51, "layer2", fraction=0.5, steps=3, train=True),  # a caller's train mode
)
ATTACK_MISTAKES = (
    (TRAIN_MODE, _wrong_attack(eval_mode=False)),
    (NO_PROJECTION, _wrong_attack(project_=False)),
    (LINF_BALL, _wrong_attack(norm="linf")),
    (DESCENDS, _wrong_attack(direction=-1)),
    (STEP_EPS, _wrong_attack(step_eps=True)),
    (NO_RANDOM_START, _wrong_attack(random_start=False)),
    (LAYER_INPUT, _wrong_attack(layer_input=True)),
    (RETURNS_PERTURBED, _wrong_attack(returns_perturbed=True)),
    (STATS_MOVED, _wrong_attack(activations_first=True)),
)


def diagnose_attack(latent_attack) -> str | None:
    """The known mistake ``latent_attack`` makes, as the message every failing check of the
    exercise gives, or None when it makes none of them."""
    return known_mistake(latent_attack, ATTACK_PROBES, ATTACK_MISTAKES, atol=ATOL)


def _attack_fail(latent_attack, message: str) -> CheckFailed:
    return diagnosed(diagnose_attack, latent_attack, message)


def _delta(latent_attack, result, expected: torch.Tensor, layer: str) -> torch.Tensor:
    """The learner's answer as a tensor shaped like ``expected`` (the layer's output)."""
    out = as_tensor(result, "delta")
    if out.shape != expected.shape:
        raise _attack_fail(latent_attack, f"delta has shape {tuple(out.shape)}, but the output "
                                          f"of {layer} has shape {tuple(expected.shape)}: "
                                          f"return one perturbation of the output of "
                                          f"get_layer(model, layer)")
    return out.float()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=ATOL)


def _run(latent_attack, model, args, options: dict):
    """``latent_attack(model, *args, **options)``; when it raises because it cannot follow a
    dotted layer path, or because the hook adds delta to a module whose output has another
    shape, CheckFailed saying so (other errors propagate as they are)."""
    layer = args[0]
    try:
        return latent_attack(model, *args, **options)
    except (CheckFailed, NotImplementedError):
        raise
    except Exception as err:
        raised = err.type_name if isinstance(err, LearnerRaised) else type(err).__name__
        if "." in layer and raised == "AttributeError":
            raise CheckFailed(f"with the dotted path layer={layer!r}, {_learner_error(err)}: "
                              f"find the module with get_layer(model, layer) (or "
                              f"model.get_submodule(layer)), which follows dotted paths; "
                              f"getattr(model, layer) does not") from None
        if raised == "RuntimeError" and "must match the size" in str(err):
            raise CheckFailed(f"with layer={layer!r}, {_learner_error(err)}: delta is shaped "
                              f"like the output of that layer (activations(model, layer, x)); "
                              f"hook the module get_layer(model, layer) names, and no "
                              f"other") from None
        raise


def _attacked(latent_attack, make_model, args, options, expected: torch.Tensor, message,
              model: nn.Module | None = None) -> None:
    """Run the learner's attack on a fresh model (or ``model``); CheckFailed with ``message``
    (a string, or a function of the learner's delta that returns one), or the diagnosis's,
    unless its delta matches ``expected``. A dotted layer path that the learner's lookup
    cannot follow, and a generator left unused, get messages of their own."""
    layer = args[0]
    given = options()
    before = given["generator"].get_state()
    out = _delta(latent_attack, _run(latent_attack, make_model() if model is None else model,
                                     args, given), expected, layer)
    if _close(out, expected):
        return
    if torch.equal(given["generator"].get_state(), before):
        raise _attack_fail(latent_attack, UNUSED_GENERATOR)
    raise _attack_fail(latent_attack, message if isinstance(message, str) else message(out))


@attack_exercise.check("returns a tensor shaped like the layer's output")
def _attack_shape(latent_attack):
    make_model, args, options = _attack_case(1, "layer2", n=4, steps=2)
    expected = _reference_attack(make_model, args, options)
    _delta(latent_attack, _run(latent_attack, make_model(), args, options()), expected, "layer2")


@attack_exercise.check("keeps every example inside the L2 ball of radius eps")
def _attack_ball(latent_attack):
    make_model, args, options = _attack_case(2, "layer1", n=8, fraction=0.5, steps=8)
    expected = _reference_attack(make_model, args, options)
    out = _delta(latent_attack, _run(latent_attack, make_model(), args, options()), expected,
                 "layer1")
    eps = options()["eps"]
    norms = l2_norms(out).flatten()
    if (norms > eps * (1 + 1e-5) + 1e-6).any():
        raise _attack_fail(latent_attack, f"delta's L2 norms go up to {norms.max():.3f}, more "
                                          f"than eps = {eps:.3f}: project after every step, "
                                          f"delta = project(delta + ascent_step(grad, eps / "
                                          f"steps, 'l2'), eps, 'l2')")


@attack_exercise.check("perturbs the layer it is given (dotted paths too), not another")
def _attack_layer(latent_attack):
    for layer in ("conv1", "layer1", "layer2.0"):
        make_model, args, options = _attack_case(3, layer, steps=3)
        expected = _reference_attack(make_model, args, options)

        def which_layer(out, layer=layer, make_model=make_model, args=args, options=options):
            model = make_model()
            x = args[1]
            same_shape = [name for name, _ in model.named_modules() if name not in ("", layer)
                          and activations(model, name, x).shape == out.shape]
            hit = next((name for name in same_shape
                        if _close(out, reference_latent_pgd(make_model(), name, *args[1:],
                                                            **options()))), None)
            return (f"with layer={layer!r} your delta is the attack on the output of {hit!r} "
                    f"instead: hook the module get_layer(model, layer) names" if hit else
                    f"with layer={layer!r} your delta differs from latent PGD at that layer")
        _attacked(latent_attack, make_model, args, options, expected, which_layer)


@attack_exercise.check("matches the reference latent PGD on random networks (same generator)")
def _attack_random(latent_attack):
    for seed, layer, fraction, steps in ((4, "layer1", 0.3, 3), (5, "layer2", 0.6, 5),
                                         (6, "conv1", 0.2, 2)):
        make_model, args, options = _attack_case(seed, layer, fraction=fraction, steps=steps)
        _attacked(latent_attack, make_model, args, options,
                  _reference_attack(make_model, args, options),
                  f"differs from latent PGD (seed {seed}, layer {layer}, {steps} steps): start "
                  f"at random_in_ball(hidden, eps, 'l2', generator), then take steps of "
                  f"ascent_step(grad, eps / steps, 'l2') on the summed cross-entropy, each "
                  f"projected onto the ball")


@attack_exercise.check("attacks in eval mode and leaves the model's mode, statistics and .grad "
                       "as they were")
def _attack_side_effects(latent_attack):
    make_model, args, options = _attack_case(7, "layer1", dropout=0.5, train=True, steps=3)
    expected = _reference_attack(make_model, args, options)
    model = _stale_grads(make_model(), 7)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    _attacked(latent_attack, make_model, args, options, expected,
              "with the model in train mode (as a training loop leaves it), your delta differs "
              "from the attack on the model in eval mode: Dropout and BatchNorm must act as at "
              "inference, `with attack_mode(model):`", model=model)
    if not all(module.training for module in model.modules()):
        raise CheckFailed(MODE_CHANGED)
    params = dict(model.named_parameters())
    if any(params[name].grad is None or not torch.equal(params[name].grad, grad)
           for name, grad in grads.items()):
        raise CheckFailed(GRAD_CHANGED)
    now = dict(model.named_buffers())
    if any(not torch.equal(now[name], b) for name, b in buffers.items()):
        raise CheckFailed(STATS_MOVED)


@attack_exercise.check("removes its hook, also when it raises")
def _attack_hooks(latent_attack):
    make_model, (layer, x, y), options = _attack_case(8, "layer1", steps=2)
    model = make_model()
    latent_attack(model, layer, x, y, **options())
    if hooks_left(model):
        raise CheckFailed(HOOK_LEFT)
    model = make_model()
    try:
        latent_attack(model, layer, x, y[:-1], **options())  # one label short: a step fails
    except (CheckFailed, NotImplementedError):
        raise
    except Exception:
        pass
    if hooks_left(model):
        raise CheckFailed(HOOK_LEFT_ON_ERROR)


@attack_exercise.check("matches the reference on the notebook's digits ResNet (net.layer2)")
def _attack_digits(latent_attack):
    make_model, args, options = _attack_case(9, "net.layer2", n=8, fraction=0.25, steps=3,
                                             digits=True)
    expected = _reference_attack(make_model, args, options)
    model = make_model()
    _attacked(latent_attack, make_model, args, options, expected,
              "on the digits ResNet at net.layer2 your delta differs from latent PGD's",
              model=model)
    if hooks_left(model):
        raise CheckFailed(HOOK_LEFT)


# ----------------------------------------------------------------------------- lat_step

step_exercise = exercise(
    "lat_step", notebook="04_lat",
    title="one LAT training step, lat_step(model, optimizer, layer, x, y, eps=, steps=)",
    references=("workbench.lat.training.lat_loss",))

LR = 0.1

FT_STEP = ("your step is a clean fine-tuning step: compute the loss under the latent "
           "perturbation, inside `with perturbed(model, layer, delta):`")
RANDOM_DELTA = ("you perturbed the layer with a random delta (the RLP control): LAT's is the "
                "adversarial one, delta = latent_pgd(model, layer, x, y, eps=eps, steps=steps, "
                "generator=generator)")
NO_ZERO_GRAD = ("the step added the .grad left from before: call optimizer.zero_grad() before "
                "loss.backward()")
EVAL_STEP = ("you took the step in eval mode (BatchNorm's running statistics did not move): "
             "call model.train() after the attack; latent_pgd gives the model back in the mode "
             "it had")
SUM_LOSS = ("you trained on the summed loss (the attack's reduction='sum'): the training loss is "
            "the batch mean, F.cross_entropy(model(x), y)")
NO_STEP = "the parameters did not move: call optimizer.step() after loss.backward()"
CLEAN_LOSS = ("you returned the clean loss (a forward pass without the perturbation, which also "
              "moved BatchNorm's statistics once more): return the loss you stepped on, the one "
              "computed under the perturbation, loss.item()")
STEP_HOOK_LEFT = ("a forward hook is still on the model after your step: add the perturbation "
                  "with `with perturbed(model, layer, delta):`, or remove your hook's handle in "
                  "a `finally:` block")


def _step_case(seed: int, layer: str, *, stale: bool = True, digits: bool = False,
               fraction: float = 0.3, steps: int = 3):
    """``(make, options)``: ``make()`` builds a fresh (model, SGD optimizer) pair, the model in
    eval mode (as an attack or an evaluation leaves it), with stale ``.grad`` when ``stale``;
    ``options()`` the keyword arguments (eps, steps, a new generator seeded by ``seed``)."""
    make_model, (_, x, y), options = _attack_case(seed, layer, n=8, fraction=fraction,
                                                  steps=steps, digits=digits)

    def make():
        model = make_model().eval()
        if stale:
            _stale_grads(model, seed)
        return model, torch.optim.SGD(model.parameters(), lr=LR)
    return make, (layer, x, y), options


def _reference_step(make, args, options):
    """The reference LAT step on a fresh model: (the model after it, the loss it stepped on)."""
    model, optimizer = make()
    layer, x, y = args
    model.train()
    loss = reference_lat_loss(model, x, y, layer=layer, **options())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return model, loss.item()


def _wrong_step(*, perturbation="lat", train=True, zero_grad=True, step=True,
                reduction="mean"):
    """The LAT step with known mistakes: no perturbation (FT), a random one (RLP, or a random
    point of the ball), in eval mode, without zero_grad or optimizer.step(), on the summed
    loss."""
    def lat_step(model, optimizer, layer, x, y, *, eps, steps, generator=None):
        if perturbation == "lat":
            delta = reference_latent_pgd(model, layer, x, y, eps=eps, steps=steps,
                                         generator=generator)
        elif perturbation == "rlp":
            delta = random_latent(model, layer, x, eps=eps, generator=generator)
        elif perturbation == "ball":
            delta = random_in_ball(activations(model, layer, x), eps, "l2", generator)
        if train:
            model.train()
        with perturbed(model, layer, delta) if perturbation else nullcontext():
            loss = F.cross_entropy(model(x), y, reduction=reduction)
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        if step:
            optimizer.step()
        return loss.item()
    return lat_step


def _loss_value(result) -> float:
    """The learner's returned loss as a float, or CheckFailed saying what to return."""
    if result is None:
        raise CheckFailed("your function returned None: end it with `return loss.item()`")
    if isinstance(result, torch.Tensor):
        raise CheckFailed("your function returned a tensor: return loss.item(), a float (a "
                          "training loop that keeps the tensors keeps every step's graph)")
    if isinstance(result, numbers.Real) and not isinstance(result, bool):
        return float(result)
    if type(result).__module__ == "numpy" and getattr(result, "size", 0) == 1:
        return float(result)
    raise CheckFailed(f"your function returned a {type(result).__name__}: return loss.item(), "
                      f"a float")


def _state_vector(model: nn.Module) -> torch.Tensor:
    """Every parameter and buffer of ``model``, flattened into one float vector."""
    return torch.cat([t.detach().float().flatten() for t in model.state_dict().values()])


def _after_step(lat_step):
    """``lat_step`` as a function whose result is what the step did: the returned loss
    followed by the model's parameters and buffers afterwards (for :func:`known_mistake`)."""
    def observed(model, optimizer, *args, **kwargs):
        loss = _loss_value(lat_step(model, optimizer, *args, **kwargs))
        return torch.cat([torch.tensor([loss]), _state_vector(model)])
    return observed


def _step_probe(seed, layer):
    make, args, options = _step_case(seed, layer)

    def probe():
        return (*make(), *args), options()
    return probe


STEP_PROBES = (_step_probe(60, "layer1"), _step_probe(61, "layer2"))
STEP_MISTAKES = (
    (FT_STEP, _wrong_step(perturbation=None)),
    (RANDOM_DELTA, _wrong_step(perturbation="rlp")),
    (RANDOM_DELTA, _wrong_step(perturbation="ball")),
    (NO_ZERO_GRAD, _wrong_step(zero_grad=False)),
    (EVAL_STEP, _wrong_step(train=False)),
    (SUM_LOSS, _wrong_step(reduction="sum")),
    (NO_STEP, _wrong_step(step=False)),
)


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _buffers(model: nn.Module) -> torch.Tensor:
    return torch.cat([b.detach().float().flatten() for b in model.buffers()])


def _clean_loss(model: nn.Module, x, y) -> float:
    """The loss without perturbation, as a forward pass in train mode computes it (BatchNorm on
    the batch's statistics, so the running ones do not matter)."""
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def diagnose_step(lat_step) -> str | None:
    """The known mistake ``lat_step`` makes, as the message every failing check of the
    exercise gives, or None when it makes none of them."""
    found = known_mistake(_after_step(lat_step), STEP_PROBES,
                          [(message, _after_step(wrong)) for message, wrong in STEP_MISTAKES])
    if found:
        return found
    # The step itself is right, but the number returned is the loss without the perturbation
    # (at the weights before the step or after it).
    make, args, options = _step_case(62, "layer1")
    model, optimizer = make()
    before = copy.deepcopy(model)
    loss = _loss_value(lat_step(model, optimizer, *args, **options()))
    reference, reference_loss = _reference_step(make, args, options)
    _, x, y = args
    if (torch.allclose(_params(model), _params(reference), atol=1e-5)
            and abs(loss - reference_loss) > 1e-4
            and any(abs(loss - _clean_loss(m, x, y)) < 1e-4 for m in (before, reference))):
        return CLEAN_LOSS
    return None


def _step_fail(lat_step, message: str) -> CheckFailed:
    return diagnosed(diagnose_step, lat_step, message)


@step_exercise.check("returns the loss under the perturbation, as a float")
def _step_loss(lat_step):
    make, args, options = _step_case(10, "layer1", stale=False)
    _, expected = _reference_step(make, args, options)
    loss = _loss_value(lat_step(*make(), *args, **options()))
    if abs(loss - expected) > 1e-4 * max(1.0, abs(expected)):
        raise _step_fail(lat_step, f"your function returned {loss:.5f}, but the loss under "
                                   f"the LAT perturbation is {expected:.5f}: return "
                                   f"loss.item() of the loss you stepped on")


@step_exercise.check("steps the parameters as the reference LAT step does (SGD, same "
                     "generator)")
def _step_params(lat_step):
    for seed, layer in ((11, "layer1"), (12, "layer2")):
        make, args, options = _step_case(seed, layer, stale=False)
        reference, _ = _reference_step(make, args, options)
        model, optimizer = make()
        lat_step(model, optimizer, *args, **options())
        if not torch.allclose(_params(model), _params(reference), atol=1e-5):
            raise _step_fail(lat_step, (
                f"the parameters after your step (layer {layer}) differ from the LAT step's: "
                f"delta = latent_pgd(model, layer, x, y, eps=eps, steps=steps, "
                f"generator=generator), then in train mode the mean cross-entropy under "
                f"`with perturbed(model, layer, delta):`, optimizer.zero_grad(), "
                f"loss.backward(), optimizer.step()"))


@step_exercise.check("trains in train mode: BatchNorm's statistics move as in the reference "
                     "step")
def _step_statistics(lat_step):
    make, args, options = _step_case(13, "layer1", stale=False)
    reference, _ = _reference_step(make, args, options)
    model, optimizer = make()  # in eval mode, as the attack or an evaluation leaves it
    lat_step(model, optimizer, *args, **options())
    if not torch.allclose(_buffers(model), _buffers(reference), atol=1e-5):
        raise _step_fail(lat_step, "BatchNorm's running statistics after your step differ "
                                   "from the LAT step's: one forward pass in train mode, "
                                   "under the perturbation (model.train() after the attack)")


@step_exercise.check("clears old gradients before the backward pass (optimizer.zero_grad())")
def _step_zero_grad(lat_step):
    make, args, options = _step_case(14, "layer1", stale=True)
    reference, _ = _reference_step(make, args, options)
    model, optimizer = make()  # every parameter holds a .grad from an earlier step
    lat_step(model, optimizer, *args, **options())
    if not torch.allclose(_params(model), _params(reference), atol=1e-5):
        raise _step_fail(lat_step, "with .grad left on the parameters from an earlier step, "
                                   "your step differs from the LAT step: call "
                                   "optimizer.zero_grad() before loss.backward()")


@step_exercise.check("leaves no hook on the model")
def _step_hooks(lat_step):
    make, args, options = _step_case(15, "layer2", stale=False)
    model, optimizer = make()
    lat_step(model, optimizer, *args, **options())
    if hooks_left(model):
        raise CheckFailed(STEP_HOOK_LEFT)


@step_exercise.check("takes the reference step on the notebook's digits ResNet (net.layer2)")
def _step_digits(lat_step):
    make, args, options = _step_case(16, "net.layer2", stale=False, digits=True,
                                     fraction=0.25, steps=2)
    reference, expected = _reference_step(make, args, options)
    model, optimizer = make()
    loss = _loss_value(lat_step(model, optimizer, *args, **options()))
    if not torch.allclose(_params(model), _params(reference), atol=1e-5):
        raise _step_fail(lat_step, "on the digits ResNet at net.layer2 the parameters after "
                                   "your step differ from the LAT step's")
    if abs(loss - expected) > 1e-4 * max(1.0, abs(expected)):
        raise _step_fail(lat_step, f"on the digits ResNet your function returned {loss:.5f}, "
                                   f"the LAT step's loss is {expected:.5f}")
    if hooks_left(model):
        raise CheckFailed(STEP_HOOK_LEFT)
