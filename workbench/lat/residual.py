"""Perturbing the residual stream of a keras-hub decoder: the latent attack of notebook 05.

Casper et al.'s LAT code for Llama (thestephencasper/latent_adversarial_training,
``lat_model.py``) adds a perturbation to the hidden states entering decoder layer L
(``hidden_states += perturbation`` when ``perturb_layer == i``); L = 0 perturbs the embedding
output, which is embedding-space adversarial training. The ball is L2, one per example over
the whole (sequence x hidden) block; the attack starts at a random point of it and takes
``steps`` steps of ``eps / steps`` along the L2-normalised gradient, the model in eval mode.

keras-hub's decoders are keras functional models; here they run layer by layer, explicitly,
on the torch backend, so that the stream can be cut anywhere:

* :func:`hidden_states`: token ids -> the stream entering block L (the embedding output
  for L = 0, as the backbone feeds it to block 0: Gemma's is scaled by sqrt(hidden_dim));
* :func:`logits_from`: that stream -> blocks L.., the final norm, the reverse embedding
  (with Gemma's final soft cap, which lives in the reverse embedding) -> logits. With
  nothing added it gives the model's own logits.

:func:`residual_pgd` runs the part below L once per batch (a cache) and only the part above it
in the inner loop, with :func:`~workbench.attacks.pgd.random_in_ball`,
:func:`~workbench.attacks.pgd.ascent_step` and :func:`~workbench.attacks.pgd.project`, the
pieces of input PGD. Padding positions are not in the ball: their perturbation is exactly 0.
:func:`random_residual` is the RLP control (random, the same size) and
:func:`relative_residual_eps` turns "a tenth of the stream's size" into a radius.

Supported backbones: ``keras_hub.models.LlamaBackbone`` (and subclasses: Llama3Backbone)
and ``keras_hub.models.GemmaBackbone`` (Gemma and Gemma 2), tiny or preset, any dtype (the
perturbation is float32, added in the stream's dtype). Layers are 0..:func:`num_blocks`.

This module imports keras-hub (and TensorFlow, seconds) on the torch backend: import it
only when a language model is attacked; ``workbench.lat`` does not.
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable, NamedTuple

import torch

from workbench.attacks.core import check_budget, check_eps, check_generator, per_example
from workbench.attacks.pgd import ascent_step, l2_norms, project, random_in_ball
from workbench.safety.scoring import import_keras_hub

keras, keras_hub = import_keras_hub()

# The keyword each family's decoder block takes the (N, T) padding mask under.
_MASK_KEYWORD = {"gemma": "padding_mask", "llama": "decoder_padding_mask"}


# ----------------------------------------------------------------------------- the forward

def _family(backbone) -> str:
    """"gemma" or "llama" (whose layout the explicit forward follows); TypeError otherwise."""
    if isinstance(backbone, keras_hub.models.GemmaBackbone):
        return "gemma"
    if isinstance(backbone, keras_hub.models.LlamaBackbone):
        return "llama"
    raise TypeError(f"residual-stream attacks support keras_hub LlamaBackbone (and its "
                    f"subclasses) and GemmaBackbone, got {type(backbone).__name__}")


def num_blocks(backbone) -> int:
    """The number of decoder blocks; :func:`hidden_states` takes layers 0..num_blocks."""
    _family(backbone)
    return len(backbone.transformer_layers)


def _check_layer(backbone, layer) -> int:
    last = num_blocks(backbone)
    if isinstance(layer, bool) or not isinstance(layer, Integral) or not 0 <= layer <= last:
        raise ValueError(f"layer must be a whole number from 0 (the embedding output) to "
                         f"{last} (after the last block, before the final norm), got {layer!r}")
    return int(layer)


def _check_mask(padding_mask, shape: tuple[int, int]) -> torch.Tensor:
    """The (N, T) padding mask as int32 (1 = real token, 0 = padding); ValueError when it is
    not shaped like the tokens or the stream, ``shape``."""
    mask = torch.as_tensor(padding_mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"padding_mask must be shaped (N, T) = {tuple(shape)} like the "
                         f"token ids and the hidden states, got {tuple(mask.shape)}")
    return mask.to(torch.int32)


def _check_tokens(token_ids, padding_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids as int64 (N, T), padding mask as int32 (N, T)); ValueError otherwise."""
    ids = torch.as_tensor(token_ids)
    if ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"token_ids must be integer ids shaped (N, T), got "
                         f"{tuple(ids.shape)} of {ids.dtype}")
    return ids.long(), _check_mask(padding_mask, ids.shape)


def _blocks(backbone, x: torch.Tensor, mask: torch.Tensor, start: int, stop: int):
    """Decoder blocks start..stop-1 on the stream x (N, T, D), without dropout."""
    keyword = _MASK_KEYWORD[_family(backbone)]
    for block in backbone.transformer_layers[start:stop]:
        x = block(x, **{keyword: mask}, training=False)
    return x


def hidden_states(backbone, token_ids, padding_mask, *, layer: int) -> torch.Tensor:
    """The residual stream entering decoder block ``layer``: (N, T) ids -> (N, T, D).

    ``layer`` 0 is the embedding output as block 0 receives it (Gemma's times sqrt(D));
    ``num_blocks(backbone)`` the stream after the last block, before the final norm.
    ``padding_mask`` (N, T): 1 for real tokens, 0 for padding. Differentiable with respect
    to the weights below ``layer``; call it under ``torch.no_grad()`` for a cache. Units: the
    stream's own (the backbone's compute dtype).
    """
    layer = _check_layer(backbone, layer)
    ids, mask = _check_tokens(token_ids, padding_mask)
    x = backbone.token_embedding(ids)
    if _family(backbone) == "gemma":  # as GemmaBackbone does before its first block
        x = x * keras.ops.cast(keras.ops.sqrt(backbone.hidden_dim), x.dtype)
    return _blocks(backbone, x, mask, 0, layer)


def logits_from(backbone, h: torch.Tensor, padding_mask, *, layer: int) -> torch.Tensor:
    """The logits (N, T, V) from the stream ``h`` (N, T, D) entering block ``layer``: blocks
    ``layer``.. end, the final norm, the reverse embedding (Gemma's soft cap included).

    ``h`` is a torch tensor (e.g. ``hidden_states(...) + delta``); the gradient flows back to
    it. ``logits_from(b, hidden_states(b, ids, m, layer=L), m, layer=L)`` equals the causal
    LM's logits for every L. No dropout (eval).
    """
    layer = _check_layer(backbone, layer)
    if not isinstance(h, torch.Tensor) or h.dim() != 3:
        raise ValueError(f"h must be a torch tensor shaped (N, T, D), got "
                         f"{getattr(h, 'shape', type(h).__name__)}")
    mask = _check_mask(padding_mask, h.shape[:2])
    x = backbone.layer_norm(_blocks(backbone, h, mask, layer, num_blocks(backbone)))
    return backbone.token_embedding(x, reverse=True)


# ----------------------------------------------------------------------------- the balls

def _real(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The padding mask (N, T) as float32 (N, T, 1) on like's device: 1 at real tokens."""
    return mask.to(device=like.device, dtype=torch.float32)[..., None]


def random_start(like: torch.Tensor, real: torch.Tensor, eps, generator) -> torch.Tensor:
    """PGD's random start in each ball of ``like`` (B, ...): :func:`random_in_ball`'s point
    with the padding coordinates (``real`` 0) set to 0, which keeps it in the ball. float32."""
    return random_in_ball(like, eps, "l2", generator) * real


def random_on_sphere(like: torch.Tensor, real: torch.Tensor, eps, generator) -> torch.Tensor:
    """A random point of each ball's sphere over the real coordinates of ``like`` (B, ...):
    a direction uniform over them (an isotropic draw, restricted, is still uniform), length
    exactly ``eps``, 0 where ``real`` is. float32."""
    kept = random_in_ball(like, eps, "l2", generator) * real
    return kept / l2_norms(kept) * per_example(eps, kept)


class _Stream(NamedTuple):
    """A batch's cached stream and its balls: ``h`` (N, T, D) entering the layer, ``mask``
    (N, T) int32, ``real`` (N, T, 1) float32 (1 at real tokens), ``eps`` per ball: a float,
    or a tensor (N,) one per example, (N * T,) with ``per_token``."""

    h: torch.Tensor
    mask: torch.Tensor
    real: torch.Tensor
    eps: object
    per_token: bool

    def balls(self, t: torch.Tensor) -> torch.Tensor:
        """t (N, T, D) as the batch the PGD pieces act on, one ball a row: t itself (a ball
        per example) or (N * T, D) (a ball per token)."""
        return t.reshape(-1, t.shape[-1]) if self.per_token else t

    def per_ball(self, value):
        """A float budget as it is; an (N,) one repeated for each token with ``per_token``."""
        if isinstance(value, torch.Tensor) and self.per_token:
            return value.repeat_interleave(self.h.shape[1])
        return value

    def random(self, draw, generator) -> torch.Tensor:
        """``draw`` (:func:`random_start` or :func:`random_on_sphere`) in every ball,
        (N, T, D) float32."""
        return draw(self.balls(self.h), self.balls(self.real), self.eps,
                    generator).view(self.h.shape)


def _stream(backbone, token_ids, padding_mask, *, layer, eps, per_token, generator) -> _Stream:
    """Checked inputs and the stream entering ``layer``, computed once, without a graph."""
    check_generator(generator)
    ids, mask = _check_tokens(token_ids, padding_mask)
    eps = check_budget(eps, len(ids), norm="l2")  # the stream is not pixels: no upper bound
    with torch.no_grad():
        h = hidden_states(backbone, ids, mask, layer=layer)
    stream = _Stream(h, mask, _real(mask, h), eps, bool(per_token))
    return stream._replace(eps=stream.per_ball(eps))


# ----------------------------------------------------------------------------- the attack

def residual_pgd(backbone, token_ids, padding_mask,
                 loss_fn: Callable[[torch.Tensor], torch.Tensor], *, layer: int, eps,
                 steps: int = 6, alpha=None, per_token: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The perturbation of the stream entering block ``layer`` that raises ``loss_fn`` most.

    Args:
        backbone: a keras-hub LlamaBackbone or GemmaBackbone on the torch backend.
        token_ids: (N, T) int ids. padding_mask: (N, T), 1 real token, 0 padding (either
            side).
        loss_fn: (N, T, V) logits -> scalar tensor the attack ascends (e.g. the LM loss on
            the response tokens, summed or meaned).
        layer: 0 (the embedding output) .. ``num_blocks(backbone)``.
        eps: L2 radius, in the stream's units (absolute; see :func:`relative_residual_eps`):
            a float or an (N,) tensor, one per example. The ball is over all real positions x
            hidden of an example, or, with ``per_token``, over each real token's D values.
        steps: PGD steps (the reference's 6). alpha: step size, default ``eps / steps``.
        generator: draws the random start inside the ball.

    Returns:
        delta (N, T, D) float32, detached: ``||delta_i|| <= eps_i`` over the real positions
        (per token with ``per_token``), exactly 0 at padding. The blocks below ``layer`` run
        once; each step runs the blocks above it forward and backward. No dropout; the
        weights' ``.grad`` are not touched (the gradient is taken for delta only). Works
        under ``torch.no_grad()`` and ``torch.inference_mode()`` too.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    with torch.enable_grad(), torch.inference_mode(False):  # also under no_grad / inference
        stream = _stream(backbone, token_ids, padding_mask, layer=layer, eps=eps,
                         per_token=per_token, generator=generator)
        alpha = stream.eps / steps if alpha is None else \
            stream.per_ball(check_budget(alpha, len(stream.h), name="alpha", norm="l2"))
        delta = stream.random(random_start, generator)
        for _ in range(steps):
            delta = _step(backbone, stream, loss_fn, delta, alpha, layer)
    return delta.detach()


def _step(backbone, stream: _Stream, loss_fn, delta: torch.Tensor, alpha, layer: int):
    """One PGD step of delta (N, T, D): ascend ``loss_fn`` by alpha along the normalised
    gradient (zero at padding), then project onto each ball by assignment."""
    delta.requires_grad_(True)
    loss = loss_fn(logits_from(backbone, stream.h + delta.to(stream.h.dtype), stream.mask,
                               layer=layer))
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar tensor, got "
                         f"{getattr(loss, 'shape', type(loss).__name__)}")
    (grad,) = torch.autograd.grad(loss, delta)
    step = ascent_step(stream.balls(grad * stream.real), alpha, "l2")
    return project(stream.balls(delta.detach()) + step, stream.eps, "l2").view(delta.shape)


def random_residual(backbone, token_ids, padding_mask, *, layer: int, eps,
                    per_token: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The RLP control: a random perturbation of the stream entering ``layer`` with L2 norm
    exactly ``eps`` over each example's real positions (each real token's, ``per_token``),
    the size of a :func:`residual_pgd` perturbation, none of its aim. (N, T, D) float32,
    0 at padding, drawn from ``generator``."""
    stream = _stream(backbone, token_ids, padding_mask, layer=layer, eps=eps,
                     per_token=per_token, generator=generator)
    return stream.random(random_on_sphere, generator)


def relative_residual_eps(backbone, token_ids, padding_mask, *, layer: int, fraction: float,
                          per_token: bool = False) -> float:
    """``fraction`` of the stream's size entering ``layer``: the absolute radius
    :func:`residual_pgd` takes for a perturbation that size relative to the hidden states.

    The size is the mean over examples of the L2 norm of an example's real-position block
    (T_real x D), or, with ``per_token``, the mean over real tokens of a token's L2 norm (D):
    pass the same ``per_token`` to the attack.
    """
    fraction = check_eps(fraction, name="fraction", norm="l2")
    ids, mask = _check_tokens(token_ids, padding_mask)
    with torch.no_grad():
        h = hidden_states(backbone, ids, mask, layer=layer).float()
    real = _real(mask, h)
    if per_token:
        sizes = (h * real).norm(dim=-1)[real[..., 0].bool()]
    else:
        sizes = l2_norms(h * real).flatten()
    return fraction * sizes.mean().item()
