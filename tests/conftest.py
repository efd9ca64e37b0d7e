"""Shared fixtures: the lite ImageNet model (loaded once per session) and tiny seeded models.

The tiny models run in milliseconds and are what most attack invariants are checked on:

* ``SmallConvNet``: conv, BatchNorm, ReLU, Dropout, linear head. In train mode BatchNorm uses
  batch statistics and Dropout is random, so an attack that forgets ``model.eval()`` gives a
  different (and non-deterministic) answer.
* ``LinearModel``: one linear layer over flattened pixels, whose input gradient is known in
  closed form.
* ``ModeRecorder``: an identity layer that records ``self.training`` at every forward call.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

IMAGE_SHAPE = (3, 8, 8)

# One intra-op thread: on a 2-core CI machine that also runs other jobs, two OpenMP threads
# spin against each other and the lite-model attacks run 3-4x slower, not faster.
torch.set_num_threads(1)


class ModeRecorder(nn.Module):
    """Identity that appends ``self.training`` to ``self.seen`` each time it runs."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


class SmallConvNet(nn.Module):
    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.recorder = ModeRecorder()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6 * 4 * 4, num_classes)
        # Running statistics that differ from any batch's, so train and eval BN disagree.
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        x = self.recorder(x)
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.avg_pool2d(x, 2)
        x = self.drop(x)
        return self.head(x.flatten(1))


class LinearModel(nn.Module):
    """logits = W flatten(x) + b."""

    def __init__(self, num_classes: int = 2, shape=IMAGE_SHAPE, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(int(torch.tensor(shape).prod()), num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


@pytest.fixture(scope="session")
def lite_model():
    """The lite classifier (EfficientNet-Lite0, real ImageNet weights), loaded once."""
    from workbench.models import load_classifier

    return load_classifier("mobilenet_v2", mode="lite")


@pytest.fixture
def conv_net():
    return SmallConvNet()


@pytest.fixture
def linear_model():
    return LinearModel()


def random_batch(seed: int, n: int = 4, shape=IMAGE_SHAPE, num_classes: int = 3):
    """Random images in [0, 1] (some pixels exactly 0 or 1) and labels, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    x[:, :, 0, 0] = 0.0
    x[:, :, -1, -1] = 1.0
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, y


@pytest.fixture(scope="session")
def shieldgemma_experiment():
    """``run_shieldgemma_experiment(seeds=(0, 1, 2))``: the lite ShieldGemma scorers from the
    cache in ``~/.cache/workbench`` (each missing one is trained first, about 80 s on 2 idle
    cores), measured on both held-out sets. Shared by the AUROC test and the CLI's."""
    from workbench.safety.evaluation import run_shieldgemma_experiment

    return run_shieldgemma_experiment(seeds=(0, 1, 2))


def assert_named(results, expected_checks: set[str], mistakes: set[str], checks: dict,
                 phrases: dict):
    """Each failing check's message names one of ``mistakes`` (keys of ``phrases``) and no other
    mistake, and the failing checks are ``expected_checks`` (keys of ``checks``). ``results``:
    the CheckResults of one exercise's checks."""
    failed = [r for r in results if not r.passed]
    for r in failed:
        assert any(phrases[m] in r.message for m in mistakes), (r.check, r.message)
        wrong = [m for m, phrase in phrases.items() if m not in mistakes and phrase in r.message]
        assert not wrong, (r.check, r.message, wrong)
    assert {r.check for r in failed} == {checks[k] for k in expected_checks}, \
        [(r.check, r.message) for r in failed]


def pytest_collection_modifyitems(session, config, items):
    """Browser tests run last: they drive notebooks whose models and experiments the notebook
    tests have cached by then (notebook 05's panel comes after its experiment), so a browser
    test measures the panel, not a second cold training run."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
