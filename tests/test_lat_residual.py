"""Residual-stream latent PGD on keras-hub decoders (workbench.lat.residual, notebook 05).

Tiny random-initialised backbones, built once: a Llama and a Gemma with Gemma 2's extras
(logit soft caps, post norms, sliding-window attention), on padded batches.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

VOCAB, LENGTHS, T = 64, (8, 5, 3, 6), 8


@pytest.fixture(scope="module")
def residual():
    from workbench.lat import residual

    return residual


@pytest.fixture(scope="module")
def backbones(residual):
    keras, keras_hub = residual.keras, residual.keras_hub
    keras.utils.set_random_seed(0)
    llama = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=3, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=32, intermediate_dim=64)
    gemma = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB, num_layers=3, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=32, intermediate_dim=64, head_dim=16, final_logit_soft_cap=30.0,
        attention_logit_soft_cap=50.0, use_post_ffw_norm=True, use_post_attention_norm=True,
        use_sliding_window_attention=True, sliding_window_size=4)
    return {"llama": (llama, keras_hub.models.LlamaCausalLM(backbone=llama, preprocessor=None)),
            "gemma": (gemma, keras_hub.models.GemmaCausalLM(backbone=gemma, preprocessor=None))}


def batch(left_padded: bool = False, seed: int = 0):
    """(token ids (4, 8), padding mask (4, 8) int32): rows of LENGTHS real tokens."""
    ids = torch.randint(1, VOCAB, (len(LENGTHS), T), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(T)[None]
    lengths = torch.tensor(LENGTHS)[:, None]
    real = positions >= T - lengths if left_padded else positions < lengths
    return ids * real, real.to(torch.int32)


def lm_loss(ids, mask):
    """The summed next-token cross-entropy at real targets: (N, T, V) logits -> scalar."""
    def loss(logits):
        ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, VOCAB), ids[:, 1:].reshape(-1),
                             reduction="none")
        return (ce * mask[:, 1:].reshape(-1)).sum()
    return loss


def norms(delta, per_token):
    return delta.norm(dim=-1) if per_token else delta.flatten(1).norm(dim=1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


FAMILIES = ("llama", "gemma")


# ----------------------------------------------------------------------------- the forward

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("left_padded", [False, True])
def test_explicit_forward_equals_the_model_logits_at_every_layer(residual, backbones, family,
                                                                 left_padded):
    backbone, causal_lm = backbones[family]
    ids, mask = batch(left_padded)
    with torch.no_grad():
        expected = causal_lm({"token_ids": ids, "padding_mask": mask})
        for layer in range(residual.num_blocks(backbone) + 1):
            h = residual.hidden_states(backbone, ids, mask, layer=layer)
            logits = residual.logits_from(backbone, h, mask, layer=layer)
            assert logits.shape == (len(LENGTHS), T, VOCAB)
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
        scale = math.sqrt(backbone.hidden_dim) if family == "gemma" else 1.0
        torch.testing.assert_close(residual.hidden_states(backbone, ids, mask, layer=0),
                                   backbone.token_embedding(ids) * scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_perturbation_enters_block_L_as_in_the_models_own_forward(residual, backbones,
                                                                       family, monkeypatch):
    """An independent way in: the keras model's own forward with delta added to block L's
    input (its ``call`` patched) gives the logits of ``logits_from(h_L + delta)``."""
    backbone, causal_lm = backbones[family]
    ids, mask = batch()
    delta = 0.3 * torch.randn(len(LENGTHS), T, backbone.hidden_dim, generator=gen())
    for layer in (0, 2):
        block = backbone.transformer_layers[layer]
        monkeypatch.setattr(block, "call", lambda x, *a, _call=block.call, **k: _call(x + delta,
                                                                                    *a, **k))
        with torch.no_grad():
            hooked = causal_lm({"token_ids": ids, "padding_mask": mask})
        monkeypatch.undo()
        with torch.no_grad():
            h = residual.hidden_states(backbone, ids, mask, layer=layer)
            ours = residual.logits_from(backbone, h + delta, mask, layer=layer)
        torch.testing.assert_close(ours, hooked, atol=1e-5, rtol=0)


def test_the_attack_runs_the_blocks_below_L_once_on_the_clean_stream(residual, backbones,
                                                                      monkeypatch):
    """The cache: blocks below L run once, on the unperturbed stream; blocks at and after L
    run once per step. So the perturbation reaches only the blocks from L on."""
    backbone, _ = backbones["llama"]
    ids, mask = batch()
    layer, steps = 2, 3
    clean = [residual.hidden_states(backbone, ids, mask, layer=i) for i in range(3)]
    seen = {i: [] for i in range(3)}
    for i, block in enumerate(backbone.transformer_layers):
        monkeypatch.setattr(block, "call", lambda x, *a, _i=i, _call=block.call, **k: (
            seen[_i].append(x.detach().clone()), _call(x, *a, **k))[1])
    residual.residual_pgd(backbone, ids, mask, lm_loss(ids, mask), layer=layer, eps=0.5,
                          steps=steps, generator=gen())
    assert [len(seen[i]) for i in range(3)] == [1, 1, steps]
    for i in (0, 1):
        torch.testing.assert_close(seen[i][0], clean[i], atol=0, rtol=0)
    assert all(not torch.equal(x, clean[2]) for x in seen[2])


def test_no_dropout_in_the_explicit_forward(residual):
    keras, keras_hub = residual.keras, residual.keras_hub
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32, dropout=0.5)
    ids, mask = batch()
    with torch.no_grad():
        runs = [residual.logits_from(backbone, residual.hidden_states(backbone, ids, mask,
                                                                      layer=1), mask, layer=1)
                for _ in range(2)]
        expected = backbone.token_embedding(
            backbone({"token_ids": ids, "padding_mask": mask}, training=False), reverse=True)
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    torch.testing.assert_close(runs[0], expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the balls

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("per_token", [False, True])
def test_inside_the_ball_zero_at_padding_and_stronger_than_random(residual, backbones, family,
                                                                   per_token):
    backbone, _ = backbones[family]
    ids, mask = batch()
    loss_fn = lm_loss(ids, mask)
    eps = residual.relative_residual_eps(backbone, ids, mask, layer=1, fraction=0.5,
                                         per_token=per_token)
    delta = residual.residual_pgd(backbone, ids, mask, loss_fn, layer=1, eps=eps,
                                  per_token=per_token, generator=gen())
    rlp = residual.random_residual(backbone, ids, mask, layer=1, eps=eps, per_token=per_token,
                                   generator=gen())
    real = mask.bool()
    assert delta.shape == rlp.shape == (len(LENGTHS), T, backbone.hidden_dim)
    assert delta.dtype == torch.float32 and not delta.requires_grad
    assert (norms(delta, per_token) <= eps * (1 + 1e-5)).all()
    assert (delta[~real] == 0).all() and (rlp[~real] == 0).all()
    sphere = norms(rlp, per_token)
    torch.testing.assert_close(sphere if not per_token else sphere[real],
                               torch.full_like(sphere if not per_token else sphere[real], eps))
    h = residual.hidden_states(backbone, ids, mask, layer=1)
    with torch.no_grad():
        loss = {name: loss_fn(residual.logits_from(backbone, h + d, mask, layer=1)).item()
                for name, d in (("zero", 0 * delta), ("rlp", rlp), ("lat", delta))}
    assert loss["lat"] > loss["rlp"] and loss["lat"] > loss["zero"] + 1.0, loss


@pytest.mark.parametrize("per_token", [False, True])
def test_a_radius_per_example_and_large_steps_stay_inside(residual, backbones, per_token):
    backbone, _ = backbones["llama"]
    ids, mask = batch()
    eps = torch.tensor([0.0, 0.05, 0.2, 1.0])
    delta = residual.residual_pgd(backbone, ids, mask, lm_loss(ids, mask), layer=0, eps=eps,
                                  alpha=3 * eps, steps=3, per_token=per_token, generator=gen())
    radius = eps[:, None] if per_token else eps
    assert (norms(delta, per_token) <= radius * (1 + 1e-5) + 1e-7).all()
    assert (delta[0] == 0).all() and (delta[~mask.bool()] == 0).all()
    rlp = residual.random_residual(backbone, ids, mask, layer=0, eps=eps, generator=gen())
    torch.testing.assert_close(norms(rlp, False), eps)


def test_padding_tokens_and_padding_logits_do_not_matter(residual, backbones):
    """Other ids at padding leave the attack unchanged (with a loss on real targets), and a
    loss that also reads the logits at padding still leaves padding unperturbed."""
    backbone, _ = backbones["gemma"]
    ids, mask = batch()
    other = torch.where(mask.bool(), ids, torch.randint(1, VOCAB, ids.shape, generator=gen(5)))
    loss_fn = lm_loss(ids, mask)
    runs = [residual.residual_pgd(backbone, x, mask, loss_fn, layer=1, eps=2.0,
                                  generator=gen()) for x in (ids, other)]
    torch.testing.assert_close(runs[0], runs[1], atol=1e-6, rtol=0)

    def everywhere(logits):  # every position, padding included
        return logits.float().logsumexp(-1).sum()
    delta = residual.residual_pgd(backbone, ids, mask, everywhere, layer=1, eps=2.0,
                                  generator=gen())
    assert (delta[~mask.bool()] == 0).all() and (delta[mask.bool()] != 0).any()


def test_relative_eps_is_the_fraction_of_the_mean_norm(residual, backbones):
    backbone, _ = backbones["llama"]
    ids, mask = batch()
    h = residual.hidden_states(backbone, ids, mask, layer=2).detach() * mask[..., None]
    per_example = h.flatten(1).norm(dim=1).mean().item()
    per_token = h.norm(dim=-1)[mask.bool()].mean().item()
    assert residual.relative_residual_eps(backbone, ids, mask, layer=2, fraction=0.1) == \
        pytest.approx(0.1 * per_example, rel=1e-5)
    assert residual.relative_residual_eps(backbone, ids, mask, layer=2, fraction=0.1,
                                          per_token=True) == pytest.approx(0.1 * per_token,
                                                                           rel=1e-5)


# ----------------------------------------------------------------------------- state, seeds

def test_same_generator_same_perturbation(residual, backbones):
    backbone, _ = backbones["llama"]
    ids, mask = batch()
    attack = [residual.residual_pgd(backbone, ids, mask, lm_loss(ids, mask), layer=1, eps=0.5,
                                    generator=gen(seed)) for seed in (3, 3, 4)]
    rlp = [residual.random_residual(backbone, ids, mask, layer=1, eps=0.5, generator=gen(seed))
           for seed in (3, 3, 4)]
    for runs in (attack, rlp):
        assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(residual, backbones, context):
    backbone, _ = backbones["llama"]
    ids, mask = batch()
    expected = residual.residual_pgd(backbone, ids, mask, lm_loss(ids, mask), layer=1,
                                     eps=0.5, steps=2, generator=gen())
    with context():
        delta = residual.residual_pgd(backbone, ids, mask, lm_loss(ids, mask), layer=1,
                                      eps=0.5, steps=2, generator=gen())
    assert torch.equal(delta, expected)


def test_the_weights_grad_and_requires_grad_are_untouched(residual, backbones):
    backbone, _ = backbones["gemma"]
    ids, mask = batch()
    params = [v.value for v in backbone.trainable_variables]
    assert params
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, float(i)) if i % 2 else None
    before = [None if p.grad is None else p.grad.clone() for p in params]
    residual.residual_pgd(backbone, ids, mask, lm_loss(ids, mask), layer=1, eps=1.0,
                          generator=gen())
    for p, grad in zip(params, before):
        assert p.requires_grad
        assert (p.grad is None) if grad is None else torch.equal(p.grad, grad)
    for p in params:
        p.grad = None


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("layer", [-1, 4, 1.0, True, "1"])
def test_a_layer_out_of_range_names_the_valid_range(residual, backbones, layer):
    backbone, _ = backbones["llama"]
    ids, mask = batch()
    with pytest.raises(ValueError, match="from 0 .* to 3"):
        residual.hidden_states(backbone, ids, mask, layer=layer)
    with pytest.raises(ValueError, match="from 0 .* to 3"):
        residual.residual_pgd(backbone, ids, mask, lm_loss(ids, mask), layer=layer, eps=0.1)


@pytest.mark.parametrize("overrides, error, message", [
    ({"eps": -0.1}, ValueError, "eps must be >= 0"),
    ({"eps": float("nan")}, ValueError, "finite"),
    ({"eps": "0.1"}, ValueError, "eps must be a number"),
    ({"eps": torch.ones(3)}, ValueError, r"\(N,\) = \(4,\)"),
    ({"alpha": -1.0}, ValueError, "alpha must be >= 0"),
    ({"steps": 0}, ValueError, "steps must be a whole number >= 1"),
    ({"padding_mask": torch.ones(4, 7)}, ValueError, r"padding_mask must be shaped \(N, T\)"),
    ({"token_ids": torch.ones(8, dtype=torch.long)}, ValueError, r"token_ids must be .* \(N, T\)"),
    ({"token_ids": torch.ones(4, 8)}, ValueError, "integer ids"),
    ({"loss_fn": lambda logits: logits.sum(-1)}, ValueError, "scalar"),
    ({"generator": 0}, TypeError, "torch.Generator"),
])
def test_bad_arguments(residual, backbones, overrides, error, message):
    backbone, _ = backbones["llama"]
    ids, mask = batch()
    arguments = {"token_ids": ids, "padding_mask": mask, "loss_fn": lm_loss(ids, mask),
                 "layer": 1, "eps": 0.1, **overrides}
    with pytest.raises(error, match=message):
        residual.residual_pgd(backbone, **arguments)


def test_other_models_and_streams_are_refused(residual, backbones):
    backbone, _ = backbones["llama"]
    ids, mask = batch()
    with pytest.raises(TypeError, match="LlamaBackbone .* GemmaBackbone"):
        residual.hidden_states(torch.nn.Linear(2, 2), ids, mask, layer=0)
    with pytest.raises(ValueError, match=r"\(N, T, D\)"):
        residual.logits_from(backbone, torch.zeros(4, 8), mask, layer=1)
    with pytest.raises(ValueError, match="padding_mask must be shaped"):
        residual.logits_from(backbone, torch.zeros(4, 6, 32), mask, layer=1)
    with pytest.raises(ValueError, match="fraction must be >= 0"):
        residual.relative_residual_eps(backbone, ids, mask, layer=1, fraction=-1.0)


def test_importing_workbench_lat_does_not_import_keras():
    code = ("import sys, workbench, workbench.lat\n"
            "print([m for m in ('keras', 'keras_hub', 'tensorflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
