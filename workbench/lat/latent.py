"""Perturbing a hidden layer: the latent attack of latent adversarial training (LAT).

Casper et al. (TMLR 2025, Algorithm 1) attack a layer's *activations* instead of the input: a
perturbation ``delta``, shaped like the layer's output, is added to that output, and PGD finds
the ``delta`` in a per-example ball that raises the loss most. The pieces are those of input
PGD (:mod:`workbench.attacks.pgd`): a random start in the ball, :func:`ascent_step`,
:func:`project`; only what they act on changes.

* :func:`get_layer` finds a module by its dotted path ("layer2", "layer3.0"), and
  :func:`perturbed` adds a perturbation to its output through a forward hook (removed however
  the block ends).
* :func:`latent_pgd` runs the network below the layer once per batch, then only the part
  above it for each step (when that part depends on the layer's output alone; else it runs
  the whole network with the hook each step).
* :func:`relative_eps` turns "a tenth of the activation's size" into the absolute radius the
  attack takes.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from workbench.attacks.core import attack_mode, check_budget, check_eps, check_generator
from workbench.attacks.pgd import ascent_step, l2_norms, project, random_in_ball

LATENT_NORMS = ("l2", "linf")


# ----------------------------------------------------------------------------- layers

def _root(model: nn.Module) -> nn.Module:
    """Where layer names start: the network inside a workbench Classifier (``model.net``),
    so that "layer2" names the ResNet's layer2 whether or not it is wrapped."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


def layer_names(model: nn.Module) -> list[str]:
    """The names :func:`get_layer` takes at the top level ("conv1", "layer1"...), in order."""
    return [name for name, _ in _root(model).named_children()]


def get_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module at dotted path ``layer`` ("layer2", "layer3.0", "net.layer2"); ValueError
    listing the valid top-level names otherwise."""
    for root in (_root(model), model):
        try:
            return root.get_submodule(layer)
        except AttributeError:
            continue
    raise ValueError(f"no layer {layer!r} in {type(_root(model)).__name__}; valid names: "
                     f"{', '.join(layer_names(model))} (or dotted paths below them, like "
                     f"{layer_names(model)[-2] if len(layer_names(model)) > 1 else 'a'}.0)")


@contextmanager
def perturbed(model: nn.Module, layer: str, delta: torch.Tensor):
    """Within the block, ``delta`` is added to the output of ``layer`` on every forward pass.

    ``delta`` must have that output's shape (N, ...); a forward with another batch shape
    raises ValueError. The hook is removed when the block ends, also on an exception.
    """
    module = get_layer(model, layer)

    def add(_, __, output):
        if output.shape != delta.shape:
            raise ValueError(f"the perturbation has shape {tuple(delta.shape)} but {layer}'s "
                             f"output has shape {tuple(output.shape)}")
        return output + delta.to(output.dtype)

    handle = module.register_forward_hook(add)
    try:
        yield model
    finally:
        handle.remove()


class _Captured(Exception):
    """Stops a forward pass once the layer's output is captured: nothing above it runs."""


def activations(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The output of ``layer`` for ``x`` (N, C, H, W), detached, computed without running the
    network above the layer. Shape: that of the layer's output, (N, ...)."""
    module = get_layer(model, layer)
    captured = []

    def capture(_, __, output):
        captured.append(output.detach())
        raise _Captured

    handle = module.register_forward_hook(capture)
    try:
        with torch.no_grad():
            model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"{layer} did not run in the forward pass of {type(model).__name__}")
    return captured[0]


def relative_eps(model: nn.Module, layer: str, x: torch.Tensor, fraction: float, *,
                 norm: str = "l2") -> float:
    """``fraction`` of the mean per-example norm of the activations at ``layer`` on ``x``: the
    absolute radius :func:`latent_pgd` takes for a perturbation that size relative to them.
    ``norm`` "l2" (over all of an example's activations) or "linf" (their largest |value|)."""
    _check_norm(norm)
    if not (isinstance(fraction, (int, float)) and fraction >= 0):
        raise ValueError(f"fraction must be a number >= 0, got {fraction!r}")
    with attack_mode(model):
        h = activations(model, layer, x).float()
    sizes = l2_norms(h).flatten() if norm == "l2" else h.flatten(1).abs().amax(1)
    return float(fraction) * sizes.mean().item()


# ----------------------------------------------------------------------------- the part above

_tails: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _trace_tail(model: nn.Module, layer: str) -> Callable | None:
    """The network above ``layer`` as a function of the layer's output, when torch.fx can
    trace the model and nothing above the layer reads a value from below it (a skip
    connection across the layer); else None. Shares the model's own modules and weights."""
    qualified = layer if layer in dict(model.named_modules()) else f"net.{layer}"

    class StopAtLayer(torch.fx.Tracer):  # the layer stays one call, whatever it contains
        def is_leaf_module(self, module, name):
            return name == qualified or super().is_leaf_module(module, name)

    try:
        graph_module = torch.fx.GraphModule(model, StopAtLayer().trace(model))
    except Exception:  # not traceable (data-dependent control flow): no shortcut
        return None
    nodes = list(graph_module.graph.nodes)
    at = [n for n in nodes if n.op == "call_module" and n.target == qualified]
    if len(at) != 1:
        return None
    cut = nodes.index(at[0])
    below = set(nodes[:cut])
    above = nodes[cut + 1:]
    if any(source in below and source.op != "get_attr" for n in above
           for source in n.all_input_nodes):
        return None
    graph = torch.fx.Graph()
    env = {at[0]: graph.placeholder("hidden")}
    for node in above:
        env[node] = graph.node_copy(node, lambda n: env[n] if n in env else graph.node_copy(n))
    return torch.fx.GraphModule(graph_module, graph)


def tail_of(model: nn.Module, layer: str) -> Callable | None:
    """:func:`_trace_tail`, traced once per model and layer."""
    per_model = _tails.setdefault(model, {})
    if layer not in per_model:
        per_model[layer] = _trace_tail(model, layer)
    return per_model[layer]


# ----------------------------------------------------------------------------- the attack

def _check_norm(norm: str) -> None:
    if norm not in LATENT_NORMS:
        raise ValueError(f"norm must be one of {LATENT_NORMS}, got {norm!r}")


def latent_pgd(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               steps: int, alpha: float | None = None, norm: str = "l2",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The perturbation of ``layer``'s output that raises the loss on (x, y) most (PGD).

    Args:
        model: classifier returning logits; ``layer`` a dotted path in it (:func:`get_layer`).
        x: (N, C, H, W) inputs as the model takes them. y: (N,) labels whose cross-entropy
            the attack raises (the training loss of Algorithm 1).
        eps: radius of each example's ball, in the layer's own units (absolute; see
            :func:`relative_eps`), over all of that example's activations: a float, or an
            (N,) tensor, one radius per example (a panel attacks every radius at once).
        steps: PGD steps. alpha: step size (default ``eps / steps``, the reference code's),
            a float or (N,).
        norm: "l2" (default, as in Casper et al.) or "linf".
        generator: draws the random start inside the ball.

    Returns:
        delta, shaped like the layer's output (N, ...), float32, detached, with
        ``||delta_i|| <= eps`` for every example. The attack runs in eval mode with frozen
        parameters; the model's mode and its parameters' ``.grad`` are as they were after it.
    """
    _check_norm(norm)
    check_generator(generator)
    eps = check_budget(eps, len(x), norm="l2")  # latents are not pixels: no upper bound
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    alpha = eps / steps if alpha is None else check_budget(alpha, len(x), name="alpha",
                                                            norm="l2")
    with attack_mode(model):
        hidden = activations(model, layer, x)
        tail = tail_of(model, layer)
        delta = random_in_ball(hidden, eps, norm, generator)
        for _ in range(steps):
            delta.requires_grad_(True)
            if tail is not None:
                logits = tail(hidden + delta.to(hidden.dtype))
            else:
                with perturbed(model, layer, delta):
                    logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = project(delta.detach() + ascent_step(grad, alpha, norm), eps, norm)
    return delta.detach()


def random_latent(model: nn.Module, layer: str, x: torch.Tensor, *, eps: float,
                  norm: str = "l2", generator: torch.Generator | None = None) -> torch.Tensor:
    """A random perturbation of ``layer``'s output with norm exactly ``eps`` per example (the
    RLP control: the size of a LAT perturbation, none of its aim). Shape (N, ...), float32."""
    _check_norm(norm)
    eps = check_eps(eps, norm="l2")
    with attack_mode(model):
        hidden = activations(model, layer, x)
    direction = random_in_ball(hidden, 1.0, norm, generator)
    if norm == "linf":
        return eps * direction.sign()
    return eps * direction / l2_norms(direction)
