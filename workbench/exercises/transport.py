"""What crosses between the grader's checks and the learner's kernel, and how.

The checks call the learner's function with tensors, models, generators and spies; the call
runs in the learner's kernel (:mod:`workbench.exercises.serve`). This module is the one place
that says what travels:

- **To the kernel**: the arguments, pickled (the grader trusts what it sends).
- **Back to the grader**: only data: the result (tensors, numbers, strings, tuples, lists and
  dicts of them), and what the call changed in its arguments (a tensor's new values, a
  model's changed weights, buffers, ``.grad`` and mode flags, a generator's state, a spy's
  calls). The grader reads it with ``torch.load(weights_only=True)``, which builds no objects
  of the learner's choosing, and applies it to its own arguments, so a check sees an in-place
  change, a model left in train mode or moved statistics as it would in the notebook.

A scalar result that needs a gradient (a loss) comes back wired to the grader's copies of the
models and tensors it depends on: ``loss.backward()`` in a check fills their ``.grad`` with the
gradient the learner's kernel computed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PRIMITIVES = (bool, int, float, complex, str, bytes, type(None))


# ----------------------------------------------------------------------------- tracked arguments

def tracked(tree) -> list:
    """The arguments whose state a call can change, in a fixed order (depth first through
    tuples, lists and dict values): tensors, modules, generators and objects that say how to
    copy their state (``__workbench_state__``). Both sides walk the same tree, so the i-th
    tracked object in the kernel is the i-th in the grader."""
    found = []

    def walk(node):
        if isinstance(node, (torch.Tensor, nn.Module, torch.Generator)) or hasattr(
                node, "__workbench_state__"):
            found.append(node)
        elif isinstance(node, (tuple, list)):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)

    walk(tree)
    return found


def _module_flags(module: nn.Module) -> dict:
    """Every submodule's plain attributes (``training``, ``use_aux``...), by submodule name."""
    return {name: {key: value for key, value in vars(sub).items()
                   if not key.startswith("_") and isinstance(value, PRIMITIVES)}
            for name, sub in module.named_modules()}


def _grads(module: nn.Module) -> dict:
    return {name: (None if p.grad is None else p.grad.detach().clone())
            for name, p in module.named_parameters()}


def snapshot(obj):
    """A copy of ``obj``'s state before the call, to tell afterwards what the call changed."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, nn.Module):
        return {"state": {k: v.detach().clone() for k, v in obj.state_dict().items()},
                "flags": _module_flags(obj), "grads": _grads(obj)}
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    return obj.__workbench_state__()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
    return a == b


def changes(obj, before) -> dict | None:
    """What the call changed in ``obj`` since ``before`` (see :func:`snapshot`), as data;
    None when nothing changed."""
    if isinstance(obj, torch.Tensor):
        now = obj.detach()
        return None if _same(now, before) else {"tensor": now.clone()}
    if isinstance(obj, nn.Module):
        state = {k: v.detach().clone() for k, v in obj.state_dict().items()
                 if k not in before["state"] or not _same(v.detach(), before["state"][k])}
        flags = {name: {k: v for k, v in attrs.items() if before["flags"].get(name, {}).get(k, v)
                        != v or k not in before["flags"].get(name, {})}
                 for name, attrs in _module_flags(obj).items()}
        flags = {name: attrs for name, attrs in flags.items() if attrs}
        grads = {name: g for name, g in _grads(obj).items()
                 if not _same(g, before["grads"].get(name))}
        return {"state": state, "flags": flags, "grads": grads} if (state or flags or grads) \
            else None
    if isinstance(obj, torch.Generator):
        now = obj.get_state()
        return None if torch.equal(now, before) else {"generator": now}
    now = obj.__workbench_state__()
    return None if now == before else {"object": now}


def apply_changes(obj, change: dict) -> None:
    """Make the grader's ``obj`` show what the call did to the kernel's copy of it."""
    if isinstance(obj, torch.Tensor):
        new = change["tensor"]
        with torch.no_grad():
            if new.shape == obj.shape and new.dtype == obj.dtype:
                obj.copy_(new)
            else:
                obj.data = new.to(obj.device)
    elif isinstance(obj, nn.Module):
        obj.load_state_dict(change["state"], strict=False)
        subs = dict(obj.named_modules())
        for name, attrs in change["flags"].items():
            for key, value in attrs.items():
                if name in subs:
                    setattr(subs[name], key, value)
        params = dict(obj.named_parameters())
        for name, grad in change["grads"].items():
            if name in params:
                params[name].grad = None if grad is None else grad.to(params[name].device)
    elif isinstance(obj, torch.Generator):
        obj.set_state(change["generator"])
    else:
        obj.__workbench_restore__(change["object"])


def request(args: tuple, kwargs: dict) -> tuple:
    """What the grader sends for a call: the arguments, and the ``.grad`` of every tracked
    module's parameters, which pickling a module drops (a check may hand over a model with
    old gradients, to see whether the learner clears them)."""
    grads = [_grads(obj) if isinstance(obj, nn.Module) else None
             for obj in tracked((args, kwargs))]
    return args, kwargs, grads


def open_request(payload: tuple) -> tuple[tuple, dict]:
    """The kernel's side of :func:`request`: the arguments with their modules' ``.grad``."""
    args, kwargs, grads = payload
    for obj, module_grads in zip(tracked((args, kwargs)), grads):
        if module_grads is not None:
            for name, param in obj.named_parameters():
                param.grad = module_grads.get(name)
    return args, kwargs


# ----------------------------------------------------------------------------- results

class _Unreadable:
    """Stands in for a returned object the grader does not read (its class name is kept)."""

    def __repr__(self) -> str:
        return f"<a {type(self).__name__} returned by your function>"


def _gradient_sources(arguments: list) -> list[tuple[int, str, torch.Tensor]]:
    """(index of the tracked argument, parameter name or "", tensor) for every tensor that can
    receive a gradient: module parameters and tensor arguments that require one."""
    sources = []
    for index, obj in enumerate(arguments):
        if isinstance(obj, nn.Module):
            sources += [(index, name, p) for name, p in obj.named_parameters() if p.requires_grad]
        elif isinstance(obj, torch.Tensor) and obj.requires_grad:
            sources.append((index, "", obj))
    return sources


def encode_result(value, arguments: list) -> Any:
    """The learner's result as data the grader can read safely (see the module docstring)."""
    if isinstance(value, torch.Tensor):
        tensor = {"__tensor__": value.detach().clone(), "requires_grad": value.requires_grad}
        if value.requires_grad and value.numel() == 1:
            sources = _gradient_sources(arguments)
            grads = torch.autograd.grad(value.sum(), [t for _, _, t in sources],
                                        allow_unused=True) if sources else []
            tensor["grads"] = [(i, name, None if g is None else g.detach())
                               for (i, name, _), g in zip(sources, grads)]
        return tensor
    if isinstance(value, PRIMITIVES):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [encode_result(v, arguments) for v in value]}
    if isinstance(value, list):
        return [encode_result(v, arguments) for v in value]
    if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
        return {"__dict__": [(k, encode_result(v, arguments)) for k, v in value.items()]}
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        import numpy as np

        array = np.asarray(value)
        if array.dtype.kind in "biuf":
            return {"__numpy__": torch.from_numpy(array.copy())}
    return {"__unreadable__": type(value).__name__}


class _KernelGradient(torch.autograd.Function):
    """A scalar whose gradient with respect to ``inputs`` was computed in the kernel."""

    @staticmethod
    def forward(ctx, value, grads, *inputs):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        return (None, None, *[None if g is None else grad_output * g.to(grad_output.device)
                              for g in ctx.grads])


def decode_result(data, arguments: list):
    """The grader's view of the learner's result; inverse of :func:`encode_result`, with
    ``arguments`` the grader's own tracked arguments (a returned loss's gradient reaches
    them)."""
    if isinstance(data, list):
        return [decode_result(v, arguments) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tuple__" in data:
        return tuple(decode_result(v, arguments) for v in data["__tuple__"])
    if "__dict__" in data:
        return {k: decode_result(v, arguments) for k, v in data["__dict__"]}
    if "__numpy__" in data:
        return data["__numpy__"].numpy()
    if "__unreadable__" in data:
        return type(str(data["__unreadable__"]), (_Unreadable,), {})()
    value = data["__tensor__"]
    if not data["requires_grad"]:
        return value
    inputs, grads = [], []
    for index, name, grad in data.get("grads", []):
        target = arguments[index]
        inputs.append(dict(target.named_parameters())[name] if name else target)
        grads.append(grad)
    if not inputs:
        return value.requires_grad_(True)
    return _KernelGradient.apply(value, grads, *inputs)
