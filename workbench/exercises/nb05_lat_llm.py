"""Notebook 05's exercises: latent PGD in a language model's residual stream
(``residual_attack``) and the loss LAT fine-tunes on, on the response tokens only
(``lat_llm_loss``). The references are the package's own functions,
:func:`workbench.lat.residual.residual_pgd` with :func:`workbench.lat.backdoor.response_loss`,
and the same loss under :class:`workbench.lat.backdoor.Adversary`'s perturbation.

The checks run on tiny keras-hub Llamas over the notebook's word vocabulary (2 blocks, 16
wide, weights drawn from a seed: the exercise is about the stream, not what the model knows)
and once on the notebook's own poisoned base, on batches of held-out prompts with their
responses, clean and triggered (so rows have different lengths and padding). Each exercise
has one diagnosis: the learner's function is tried against small wrong versions of it (no
projection, the wrong layer, the loss over the prompt tokens too, ...), and every failing
check names the mistake it reproduces (``workbench.exercises.core.diagnosed``).

Under ``workbench grade`` the learner's function runs on a pickled copy of the backbone in
their kernel; the results come back as data (the perturbation, the loss's value).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from workbench.attacks.pgd import ascent_step, l2_norms, project, random_in_ball
from workbench.exercises.core import CheckFailed, as_tensor, diagnosed, exercise, known_mistake

TINY = {"num_layers": 2, "hidden_dim": 16, "num_query_heads": 2, "num_key_value_heads": 1,
        "intermediate_dim": 32}
ATOL = 1e-5


@functools.lru_cache(maxsize=4)
def _tiny_backbone(seed: int):
    from workbench.lat.backdoor import build_model

    return build_model(seed, **TINY).backbone


@functools.lru_cache(maxsize=1)
def _base_backbone():
    """The notebook's poisoned base of seed 0 (from the cache the notebook filled)."""
    from workbench.lat.llm_experiment import base_model

    return base_model(0).backbone


def _batch(seed: int, n: int = 6):
    """``n`` held-out examples (test split), half of them triggered (one token longer, so the
    clean rows carry padding), encoded as the notebook encodes them."""
    import random

    from workbench.lat.backdoor_data import WordTokenizer, encode_batch, make_splits

    splits = make_splits(0, train_examples=400, heldout={"val": 8, "test": 64})
    rng = random.Random(seed)
    examples = rng.sample(splits.test, n - n // 2) + rng.sample(splits.test_triggered, n // 2)
    rng.shuffle(examples)
    return encode_batch(WordTokenizer(), [e.prompt for e in examples],
                        [e.response for e in examples])


def _real(batch) -> torch.Tensor:
    return batch.padding_mask[..., None].to(torch.float32)


def _stream(backbone, batch, layer: int) -> torch.Tensor:
    from workbench.lat.residual import hidden_states

    with torch.no_grad():
        return hidden_states(backbone, batch.token_ids, batch.padding_mask, layer=layer)


def _logits(backbone, batch, layer: int, h: torch.Tensor) -> torch.Tensor:
    from workbench.lat.residual import logits_from

    return logits_from(backbone, h, batch.padding_mask, layer=layer)


def _shifted(backbone, layer: int, shift: int) -> int:
    """The layer next to ``layer`` (``shift`` -1 or +1), kept in 0..num_blocks."""
    from workbench.lat.residual import num_blocks

    return min(max(layer + shift, 0), num_blocks(backbone))


# ----------------------------------------------------------------------------- losses

def _all_tokens_loss(logits, batch):
    """The mistake: next-token cross-entropy over every real position, prompt included."""
    weights = batch.padding_mask[:, 1:].to(torch.float32)
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch.token_ids[:, 1:],
                         reduction="none")
    return (ce * weights).sum() / weights.sum()


def _unshifted_loss(logits, batch):
    """The mistake: the logits at t scored against token t (not t + 1)."""
    weights = batch.target_mask.to(torch.float32)
    ce = F.cross_entropy(logits.float().transpose(1, 2), batch.token_ids, reduction="none")
    return (ce * weights).sum() / weights.sum()


def _summed_loss(logits, batch):
    """The mistake: the response tokens' cross-entropy summed, not averaged."""
    weights = batch.target_mask[:, :-1].to(torch.float32)
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch.token_ids[:, 1:],
                         reduction="none")
    return (ce * weights).sum()


def _response_loss(logits, batch):
    from workbench.lat.backdoor import response_loss

    return response_loss(logits, batch)


# ----------------------------------------------------------------------------- residual_attack

attack_exercise = exercise(
    "residual_attack", notebook="05_lat_llm",
    title="latent PGD in the residual stream, residual_attack(backbone, batch, *, layer, eps, "
          "steps, generator=None)",
    references=("workbench.lat.residual.residual_pgd",))


def reference_residual_attack(backbone, batch, *, layer, eps, steps, generator=None):
    """The package's residual-stream PGD on the response loss."""
    from workbench.lat.residual import residual_pgd

    return residual_pgd(backbone, batch.token_ids, batch.padding_mask,
                        lambda logits: _response_loss(logits, batch), layer=layer, eps=eps,
                        steps=steps, generator=generator)


def _wrong_attack(*, loss=_response_loss, layer_shift=0, project_onto_ball=True,
                  mask_start=True, random_start=True, norm="l2",
                  step_size=None):
    """residual_attack with known mistakes: the loss over every token, the stream of another
    layer, no projection, a random start that moves the padding, no random start, signed
    (L-inf) steps, steps of eps instead of eps / steps. (A ball per token instead of per
    example is not among them: with the same radius it never binds, so it is no projection.)"""
    def residual_attack(backbone, batch, *, layer, eps, steps, generator=None):
        at = _shifted(backbone, layer, layer_shift)
        h = _stream(backbone, batch, at)
        real = _real(batch)
        delta = random_in_ball(h, eps, "l2", generator) if random_start else torch.zeros_like(h)
        if mask_start:
            delta = delta * real
        alpha = eps / steps if step_size is None else step_size(eps, steps)
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(_logits(backbone, batch, at, h + delta), batch),
                                          delta)
            moved = delta.detach() + ascent_step(grad * real, alpha, norm)
            delta = project(moved, eps, "l2") if project_onto_ball else moved
        return delta.detach()
    return residual_attack


NO_PROJECTION = ("your perturbation leaves the ball: after each step project it back, "
                 "delta = project(delta + ascent_step(grad, eps / steps, 'l2'), eps, 'l2')")
WRONG_LAYER = ("you perturbed the stream of another layer: the stream entering block `layer` "
               "is hidden_states(backbone, ids, mask, layer=layer), and logits_from(..., "
               "layer=layer) runs the blocks from there on")
ALL_TOKENS = ("your attack raises the loss over every token, the prompt's too: the fine-tuning "
              "loss, and so the attack's, is on the response tokens only, "
              "response_loss(logits, batch)")
PADDING_MOVED = ("your random start moves the padding positions: multiply it by the real-token "
                 "mask, batch.padding_mask[..., None] (padding stays exactly 0)")
NO_RANDOM_START = ("you started from zero: PGD starts at a random point of the ball, "
                   "random_in_ball(h, eps, 'l2', generator) (times the real-token mask)")
SIGNED_STEPS = ("your steps are signed (L-inf) steps: in an L2 ball step along the "
                "L2-normalised gradient, ascent_step(grad, eps / steps, 'l2')")
WHOLE_EPS_STEPS = ("each of your steps is eps long: the reference takes `steps` steps of "
                   "eps / steps")

ATTACK_MISTAKES = (
    (NO_PROJECTION, _wrong_attack(project_onto_ball=False)),
    (WRONG_LAYER, _wrong_attack(layer_shift=-1)),
    (WRONG_LAYER, _wrong_attack(layer_shift=1)),
    (ALL_TOKENS, _wrong_attack(loss=_all_tokens_loss)),
    (PADDING_MOVED, _wrong_attack(mask_start=False)),
    (NO_RANDOM_START, _wrong_attack(random_start=False)),
    (SIGNED_STEPS, _wrong_attack(norm="linf")),
    (WHOLE_EPS_STEPS, _wrong_attack(step_size=lambda eps, steps: eps)),
)


def _attack_case(seed: int, layer: int, *, eps: float = 1.5, steps: int = 3, base=False):
    """``(backbone, batch, options)``: ``options()`` the keywords with a fresh generator."""
    backbone = _base_backbone() if base else _tiny_backbone(seed % 2)
    batch = _batch(seed)

    def options():
        return {"layer": layer, "eps": eps, "steps": steps,
                "generator": torch.Generator().manual_seed(seed)}
    return backbone, batch, options


def _probe(seed, layer):
    """A probe for :func:`~workbench.exercises.core.known_mistake`: both exercises take
    ``(backbone, batch)`` and the same keywords. The case is built when the probe runs, not
    when this module is imported: grading notebook 02 must not build a keras-hub model."""
    def probe():
        backbone, batch, options = _attack_case(seed, layer)
        return (backbone, batch), options()
    return probe


ATTACK_PROBES = (_probe(40, 1), _probe(41, 1))


def diagnose_attack(residual_attack) -> str | None:
    """The known mistake ``residual_attack`` makes (the message every failing check of the
    exercise gives), or None."""
    return known_mistake(residual_attack, ATTACK_PROBES, ATTACK_MISTAKES, atol=ATOL)


def _attack_fail(residual_attack, message: str) -> CheckFailed:
    return diagnosed(diagnose_attack, residual_attack, message)


def _delta(residual_attack, backbone, batch, options) -> torch.Tensor:
    out = as_tensor(residual_attack(backbone, batch, **options), "delta")
    shape = (*batch.token_ids.shape, backbone.hidden_dim)
    if tuple(out.shape) != shape:
        raise CheckFailed(f"delta has shape {tuple(out.shape)}; the stream is (N, T, D) = "
                          f"{shape}: one perturbation per position and hidden unit")
    if not out.is_floating_point():
        raise CheckFailed(f"delta is {out.dtype}: return the float perturbation")
    return out.float()


@attack_exercise.check("returns delta shaped like the stream (N, T, D)")
def _attack_shape(residual_attack):
    backbone, batch, options = _attack_case(1, 1)
    _delta(residual_attack, backbone, batch, options())


@attack_exercise.check("stays inside each example's L2 ball of radius eps")
def _attack_ball(residual_attack):
    for seed, layer, eps in ((2, 1, 1.5), (3, 2, 0.5)):
        backbone, batch, options = _attack_case(seed, layer, eps=eps)
        norms = l2_norms(_delta(residual_attack, backbone, batch, options())).flatten()
        if norms.max() > eps * (1 + 1e-4):
            raise _attack_fail(residual_attack, (
                f"an example's perturbation has L2 norm {norms.max():.4f} > eps = {eps}: "
                f"project onto the ball after every step"))


@attack_exercise.check("leaves the padding positions at exactly 0")
def _attack_padding(residual_attack):
    backbone, batch, options = _attack_case(4, 1)
    delta = _delta(residual_attack, backbone, batch, options())
    padded = delta[batch.padding_mask == 0]
    if padded.numel() and padded.abs().max() > 0:
        raise _attack_fail(residual_attack, (
            f"delta is {padded.abs().max():.2e} at a padding position: padding is not part of "
            f"the ball, keep it at 0 (multiply the random start by the real-token mask)"))


@attack_exercise.check("matches the reference residual PGD at blocks 0, 1 and 2 (same "
                       "generator)")
def _attack_reference(residual_attack):
    for seed, layer in ((5, 0), (6, 1), (7, 2)):
        backbone, batch, options = _attack_case(seed, layer)
        mine = _delta(residual_attack, backbone, batch, options())
        expected = reference_residual_attack(backbone, batch, **options())
        if not torch.allclose(mine, expected, atol=ATOL):
            raise _attack_fail(residual_attack, (
                f"at layer {layer} your delta differs from residual PGD's (largest difference "
                f"{(mine - expected).abs().max():.2e}): start at random_in_ball(h, eps, 'l2', "
                f"generator) times the real-token mask, then `steps` steps of "
                f"ascent_step(grad, eps / steps, 'l2') on response_loss, each projected"))


@attack_exercise.check("matches the reference on the notebook's poisoned Llama (block 2)")
def _attack_base(residual_attack):
    backbone, batch, options = _attack_case(8, 2, eps=4.0, steps=6, base=True)
    mine = _delta(residual_attack, backbone, batch, options())
    expected = reference_residual_attack(backbone, batch, **options())
    if not torch.allclose(mine, expected, atol=1e-4):
        raise _attack_fail(residual_attack, "on the notebook's poisoned Llama at block 2 your "
                                            "delta differs from residual PGD's")


# ----------------------------------------------------------------------------- lat_llm_loss

loss_exercise = exercise(
    "lat_llm_loss", notebook="05_lat_llm",
    title="the LAT step's loss on the response tokens, lat_llm_loss(backbone, batch, *, layer, "
          "eps, steps, generator=None)",
    references=("workbench.lat.backdoor.response_loss",))


def reference_lat_llm_loss(backbone, batch, *, layer, eps, steps, generator=None):
    """The package's LAT loss: the response loss under Adversary("lat")'s perturbation."""
    from workbench.lat.backdoor import Adversary, forward

    at, delta = Adversary("lat", layer, eps, steps).perturb(backbone, batch, generator)
    return _response_loss(forward(backbone, batch, layer=at, delta=delta), batch)


def _wrong_loss(*, loss=_response_loss, attack_loss=None, perturbation="lat", layer_shift=0):
    """lat_llm_loss with known mistakes: a loss over every token, unshifted or summed; no
    perturbation (FT); a random one (RLP); the stream of another layer."""
    attack_loss = attack_loss or loss

    def lat_llm_loss(backbone, batch, *, layer, eps, steps, generator=None):
        from workbench.lat.residual import random_residual, residual_pgd

        at = _shifted(backbone, layer, layer_shift)
        h = _stream(backbone, batch, at)
        if perturbation == "lat":
            delta = residual_pgd(backbone, batch.token_ids, batch.padding_mask,
                                 lambda logits: attack_loss(logits, batch), layer=at, eps=eps,
                                 steps=steps, generator=generator)
        elif perturbation == "rlp":
            delta = random_residual(backbone, batch.token_ids, batch.padding_mask, layer=at,
                                    eps=eps, generator=generator)
        else:
            delta = torch.zeros_like(h)
        return loss(_logits(backbone, batch, at, h + delta), batch)
    return lat_llm_loss


LOSS_ALL_TOKENS = ("your loss counts the prompt tokens too: weigh each position by "
                   "batch.target_mask[:, :-1], so that only the response tokens (and <eos>) "
                   "are scored; the prompt is given, not learned")
LOSS_UNSHIFTED = ("your loss scores the logits at t against token t: the logits at t predict "
                  "token t + 1, F.cross_entropy(logits[:, :-1].transpose(1, 2), "
                  "token_ids[:, 1:], reduction='none') weighted by target_mask[:, :-1]")
LOSS_SUMMED = ("your loss is summed over the response tokens: divide by their count, "
               "(ce * weights).sum() / weights.sum()")
LOSS_NO_PERTURBATION = ("your loss is the clean loss (plain fine-tuning): compute it on "
                        "logits_from(backbone, h + delta, mask, layer=layer), with delta from "
                        "residual_pgd")
LOSS_RANDOM = ("your perturbation is random (the RLP control): LAT's is the adversarial one, "
               "delta = residual_pgd(backbone, ids, mask, your_loss, layer=layer, eps=eps, "
               "steps=steps, generator=generator)")
LOSS_WRONG_LAYER = ("you perturbed the stream of another layer: the attack and the loss both "
                    "work on the stream entering block `layer`")
LOSS_ATTACK_ALL_TOKENS = ("the attack you ran raises the loss over every token: give "
                          "residual_pgd the same response-only loss you return")

LOSS_MISTAKES = (
    (LOSS_ALL_TOKENS, _wrong_loss(loss=_all_tokens_loss)),
    (LOSS_UNSHIFTED, _wrong_loss(loss=_unshifted_loss)),
    (LOSS_SUMMED, _wrong_loss(loss=_summed_loss)),
    (LOSS_NO_PERTURBATION, _wrong_loss(perturbation=None)),
    (LOSS_RANDOM, _wrong_loss(perturbation="rlp")),
    (LOSS_WRONG_LAYER, _wrong_loss(layer_shift=-1)),
    (LOSS_WRONG_LAYER, _wrong_loss(layer_shift=1)),
    (LOSS_ATTACK_ALL_TOKENS, _wrong_loss(attack_loss=_all_tokens_loss)),
)


LOSS_PROBES = (_probe(50, 1), _probe(51, 1))


def diagnose_loss(lat_llm_loss) -> str | None:
    """The known mistake ``lat_llm_loss`` makes, or None."""
    return known_mistake(lat_llm_loss, LOSS_PROBES, LOSS_MISTAKES, atol=ATOL)


def _loss_fail(lat_llm_loss, message: str) -> CheckFailed:
    return diagnosed(diagnose_loss, lat_llm_loss, message)


def _loss(lat_llm_loss, backbone, batch, options) -> float:
    out = lat_llm_loss(backbone, batch, **options)
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        raise CheckFailed("your function returned a number: return the loss tensor itself "
                          "(no .item()), so that the training step can back-propagate it")
    out = as_tensor(out, "loss")
    if out.numel() != 1:
        raise CheckFailed(f"your loss has shape {tuple(out.shape)}: return one number for the "
                          f"batch, the mean over its response tokens")
    return float(out)


@loss_exercise.check("returns a scalar loss tensor")
def _loss_scalar(lat_llm_loss):
    backbone, batch, options = _attack_case(10, 1)
    _loss(lat_llm_loss, backbone, batch, options())


@loss_exercise.check("with eps = 0 it is the clean loss on the response tokens only")
def _loss_clean(lat_llm_loss):
    backbone, batch, options = _attack_case(11, 1, eps=0.0)
    mine = _loss(lat_llm_loss, backbone, batch, options())
    with torch.no_grad():
        expected = float(_response_loss(_logits(backbone, batch, 0, _stream(backbone, batch, 0)),
                                        batch))
    if abs(mine - expected) > 1e-4 * max(1.0, abs(expected)):
        raise _loss_fail(lat_llm_loss, (
            f"with eps = 0 your loss is {mine:.5f}, the mean cross-entropy of the response "
            f"tokens is {expected:.5f}: shift by one (logits[:, :-1] against token_ids[:, 1:]) "
            f"and weigh by target_mask[:, :-1]"))


@loss_exercise.check("is the response loss under the LAT perturbation at blocks 1 and 2 "
                     "(same generator)")
def _loss_reference(lat_llm_loss):
    for seed, layer in ((12, 1), (13, 2)):
        backbone, batch, options = _attack_case(seed, layer)
        mine = _loss(lat_llm_loss, backbone, batch, options())
        expected = float(reference_lat_llm_loss(backbone, batch, **options()).detach())
        if abs(mine - expected) > 1e-4 * max(1.0, abs(expected)):
            raise _loss_fail(lat_llm_loss, (
                f"at layer {layer} your loss is {mine:.5f}, the LAT loss is {expected:.5f}: "
                f"the response loss on logits_from(backbone, h + delta, ...) with delta from "
                f"residual_pgd on that same loss"))


@loss_exercise.check("is the LAT loss on the notebook's poisoned Llama (block 2)")
def _loss_base(lat_llm_loss):
    backbone, batch, options = _attack_case(14, 2, eps=4.0, steps=6, base=True)
    mine = _loss(lat_llm_loss, backbone, batch, options())
    expected = float(reference_lat_llm_loss(backbone, batch, **options()).detach())
    if abs(mine - expected) > 1e-4 * max(1.0, abs(expected)):
        raise _loss_fail(lat_llm_loss, f"on the notebook's poisoned Llama your loss is "
                                       f"{mine:.5f}, the LAT loss is {expected:.5f}")
