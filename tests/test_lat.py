"""The latent attack of LAT: its ball at any layer and norm, its hook, the model left as found,
and the network below the layer run once per batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, ResNet

from workbench.attacks import l2_norms
from workbench.lat.latent import (activations, get_layer, latent_pgd, layer_names, perturbed,
                                  random_latent, relative_eps, tail_of)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand((3, 3, 32, 32), generator=g), torch.tensor([0, 3, 4])


def _norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    return l2_norms(delta).flatten() if norm == "l2" else delta.flatten(1).abs().amax(1)


def _loss(model, layer, x, y, delta) -> float:
    with torch.no_grad(), perturbed(model, layer, delta):
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("layer", ["conv1", "layer1", "layer3", "layer4.0"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_the_perturbation_stays_in_its_ball_and_raises_the_loss(resnet, batch, layer, norm):
    x, y = batch
    hidden = activations(resnet, layer, x)
    eps = relative_eps(resnet, layer, x, 0.3, norm=norm)
    delta = latent_pgd(resnet, layer, x, y, eps=eps, steps=6, norm=norm,
                       generator=torch.Generator().manual_seed(0))
    assert delta.shape == hidden.shape
    assert (_norms(delta, norm) <= eps * (1 + 1e-5)).all()
    random = random_latent(resnet, layer, x, eps=eps, norm=norm,
                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_norms(random, norm), torch.full((3,), eps), rtol=1e-4)
    clean = _loss(resnet, layer, x, y, torch.zeros_like(hidden))
    assert _loss(resnet, layer, x, y, delta) > max(clean, _loss(resnet, layer, x, y, random))


def test_the_same_generator_gives_the_same_perturbation(resnet, batch):
    x, y = batch
    runs = [latent_pgd(resnet, "layer2", x, y, eps=1.0, steps=3,
                       generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(*runs)


def test_the_part_below_the_layer_runs_once_per_batch(resnet, batch):
    x, y = batch
    calls = []
    handle = resnet.conv1.register_forward_hook(lambda *_: calls.append(1))
    try:
        latent_pgd(resnet, "layer3", x, y, eps=1.0, steps=5)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_the_part_above_gives_the_models_own_logits_as_it_trains(resnet, batch):
    x, _ = batch
    tail_of(resnet, "layer2")  # traced before the weights change: it must share them
    with torch.no_grad():
        resnet.fc.bias.add_(1.0)
    try:
        hidden = activations(resnet, "layer2", x)
        delta = torch.randn_like(hidden)
        with torch.no_grad(), perturbed(resnet, "layer2", delta):
            expected = resnet(x)
        with torch.no_grad():
            assert torch.allclose(tail_of(resnet, "layer2")(hidden + delta), expected, atol=1e-5)
    finally:
        with torch.no_grad():
            resnet.fc.bias.sub_(1.0)


def test_a_layer_inside_a_skip_connection_runs_the_whole_network_each_step(resnet, batch):
    x, y = batch
    assert tail_of(resnet, "layer1.0.conv1") is None  # the block's shortcut reads from below
    calls = []
    handle = resnet.conv1.register_forward_hook(lambda *_: calls.append(1))
    try:
        delta = latent_pgd(resnet, "layer1.0.conv1", x, y, eps=2.0, steps=4)
    finally:
        handle.remove()
    assert len(calls) == 1 + 4 and (l2_norms(delta) <= 2.0 * (1 + 1e-5)).all()


def test_mode_grads_and_hooks_are_restored_even_on_error(resnet, batch):
    x, y = batch
    resnet.train()
    for p in resnet.parameters():
        p.grad = torch.ones_like(p)
    try:
        latent_pgd(resnet, "layer2", x, y, eps=1.0, steps=2)
        assert resnet.training and all(m.training for m in resnet.modules())
        assert all(torch.equal(p.grad, torch.ones_like(p)) and p.requires_grad
                   for p in resnet.parameters())
        with pytest.raises(ValueError, match="shape"):
            with perturbed(resnet, "layer2", torch.zeros(1, 2, 3)):
                resnet(x)
        with pytest.raises(Exception):
            latent_pgd(resnet, "conv1", x, torch.tensor([0, 1]), eps=1.0, steps=2)  # bad y
        assert all(not m._forward_hooks for m in resnet.modules())
        assert resnet.training
    finally:
        resnet.eval()
        for p in resnet.parameters():
            p.grad = None


def test_an_unknown_layer_names_the_valid_ones(resnet, batch):
    x, y = batch
    with pytest.raises(ValueError, match="layer5.*valid names: conv1, bn1, relu, maxpool, "
                                         "layer1, layer2, layer3, layer4"):
        latent_pgd(resnet, "layer5", x, y, eps=1.0, steps=2)
    assert layer_names(resnet)[:5] == ["conv1", "bn1", "relu", "maxpool", "layer1"]
    assert get_layer(resnet, "layer3.0") is resnet.layer3[0]


@pytest.mark.parametrize("bad, match", [
    (dict(eps=-1.0), "eps"), (dict(steps=0), "steps"), (dict(norm="l1"), "norm"),
    (dict(generator=0), "torch.Generator"),
])
def test_bad_arguments_are_named(resnet, batch, bad, match):
    x, y = batch
    kwargs = dict(eps=1.0, steps=2) | bad
    with pytest.raises((ValueError, TypeError), match=match):
        latent_pgd(resnet, "layer2", x, y, **kwargs)


def test_relative_eps_is_a_fraction_of_the_mean_activation_norm(resnet, batch):
    x, _ = batch
    hidden = activations(resnet, "layer2", x)
    assert relative_eps(resnet, "layer2", x, 0.5) == pytest.approx(
        0.5 * l2_norms(hidden).mean().item(), rel=1e-5)
    assert relative_eps(resnet, "layer2", x, 1.0, norm="linf") == pytest.approx(
        hidden.flatten(1).abs().amax(1).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- fine-tuning

def _small_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 3))


def _data():
    g = torch.Generator().manual_seed(2)
    return torch.rand((24, 1, 8, 8), generator=g), torch.randint(0, 3, (24,), generator=g)


@pytest.mark.parametrize("method", ["ft", "rlp", "at", "lat"])
def test_every_method_fine_tunes_deterministically_and_ends_in_eval_mode(method):
    from workbench.lat.training import Perturbation, finetune

    x, y = _data()
    perturbation = Perturbation(layer="2", eps=2.0, steps=3, input_eps=0.1, input_steps=2)
    weights = []
    for _ in range(2):
        model = _small_net()
        history = finetune(model, x, y, method=method, perturbation=perturbation, epochs=2,
                           batch_size=8, seed=3, progress=False)
        assert history["method"] == method and len(history["epoch_loss"]) == 2
        assert not model.training and all(not m._forward_hooks for m in model.modules())
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(*weights)
    assert not torch.equal(weights[0], torch.cat([p.flatten() for p in _small_net().parameters()]))


def test_the_adversaries_raise_the_training_loss_and_the_random_one_less():
    from workbench.lat.training import Perturbation, batch_loss_for

    x, y = _data()
    model = _small_net().train()
    perturbation = Perturbation(layer="2", eps=3.0, steps=5)
    losses = {}
    for method in ("ft", "rlp", "lat"):
        losses[method] = batch_loss_for(method, perturbation)(
            model, x, y, torch.Generator().manual_seed(0)).item()
    assert losses["lat"] > losses["rlp"] and losses["lat"] > losses["ft"], losses
    with pytest.raises(ValueError, match="unknown fine-tuning method 'pgd'.*'ft', 'rlp', 'at'"):
        batch_loss_for("pgd", perturbation)


def test_a_radius_per_example_gives_each_its_own_ball(resnet, batch):
    x, y = batch
    radii = torch.tensor([0.5, 2.0, 4.0])
    delta = latent_pgd(resnet, "layer2", x, y, eps=radii, steps=4,
                       generator=torch.Generator().manual_seed(0))
    assert (l2_norms(delta).flatten() <= radii * (1 + 1e-5)).all()
    assert l2_norms(delta).flatten()[2] > radii[1]
    one = latent_pgd(resnet, "layer2", x[1:2], y[1:2], eps=2.0, steps=4,
                     generator=torch.Generator().manual_seed(0))
    assert one.shape[0] == 1
