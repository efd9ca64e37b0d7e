"""The two ResNets of notebook 04: a small one for the digits (lite) and ResNet-50 (full).

Both are torchvision's own :class:`torchvision.models.resnet.ResNet` with ``Bottleneck``
blocks, so they share the top-level layer names of ``resnet50`` (``conv1``, ``bn1``,
``relu``, ``maxpool``, ``layer1`` ... ``layer4``, ``avgpool``, ``fc``), and both come wrapped
in :class:`~workbench.models.layers.Classifier` (normalisation inside, pixels in [0, 1]).
The ResNet is the wrapper's ``net`` attribute, so in the wrapped model the layers a latent
attack can perturb are at the dotted paths of :data:`LAYERS`: ``net.conv1``,
``net.layer1`` ... ``net.layer4`` (``dict(model.named_modules())["net.layer2"]``).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.defenses.models import (
    DIGITS_CATEGORIES,
    DIGITS_INPUT_SIZE,
    DIGITS_MEAN,
    DIGITS_STD,
)
from workbench.models.layers import Classifier
from workbench.models.registry import WeightsUnavailableError, load_classifier, weights_status

# The stages of a torchvision ResNet a latent perturbation can sit at, bottom first, and
# their dotted paths in the wrapped model (Classifier keeps the ResNet as ``.net``).
STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")
NET_ATTRIBUTE = "net"
LAYERS = tuple(f"{NET_ATTRIBUTE}.{stage}" for stage in STAGES)

# The digits ResNet: one Bottleneck block per stage, inner width 16 per group instead of 64
# (the blocks' outputs keep resnet50's 256, 512, 1024 and 2048 channels: torchvision's
# ResNet fixes them). On 16 x 16 digits with a 3 x 3 stride-1 conv1 and the usual max-pool,
# the stages see 16, 8, 4, 2 and 1 pixels a side. About 3.5 M parameters; a training step on
# a batch of 64 takes about 0.1 s on one CPU thread.
DIGITS_RESNET_BLOCKS = (1, 1, 1, 1)
DIGITS_RESNET_WIDTH = 16

RESNET50_NAME = "resnet50"  # the registry's name: its ModelConfig holds weights and file


def digits_resnet(*, seed: int = 0, blocks: tuple[int, int, int, int] = DIGITS_RESNET_BLOCKS,
                  width_per_group: int = DIGITS_RESNET_WIDTH) -> Classifier:
    """torchvision's ``ResNet`` (Bottleneck blocks) sized for 16 x 16 digits, 10 classes.

    Top-level layer names as in ``resnet50``; ``conv1`` is a 3 x 3, stride 1 convolution over
    one channel (instead of 7 x 7, stride 2, over three), initialised the way torchvision
    initialises every convolution of a ResNet (Kaiming normal, fan out). Weights are
    initialised from ``seed`` (PyTorch's and torchvision's initialisers, run under a forked
    RNG as in :func:`workbench.defenses.digits_cnn`, so the global generator is left as it
    was): same seed, same weights.

    Args:
        seed: seed of the initial weights.
        blocks: Bottleneck blocks in ``layer1`` ... ``layer4``.
        width_per_group: torchvision's inner width of the blocks (64 in ``resnet50``).

    Returns:
        :class:`Classifier` in train mode: x (N, 1, 16, 16) in [0, 1] -> logits (N, 10); the
        ResNet is its ``.net``, so ``layer2`` is ``net.layer2`` (see :data:`LAYERS`).
    """
    from torchvision.models.resnet import Bottleneck, ResNet

    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"blocks must be four whole numbers >= 1, got {blocks!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ResNet(Bottleneck, list(blocks), num_classes=len(DIGITS_CATEGORIES),
                     width_per_group=int(width_per_group))
        net.conv1 = nn.Conv2d(DIGITS_INPUT_SIZE[0], net.conv1.out_channels, kernel_size=3,
                              stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    shape = "-".join(str(b) for b in blocks)
    side = DIGITS_INPUT_SIZE[1]
    return Classifier(
        net, mean=[DIGITS_MEAN], std=[DIGITS_STD], categories=DIGITS_CATEGORIES,
        input_size=DIGITS_INPUT_SIZE, name="digits_resnet", mode="lite",
        architecture=f"digits ResNet (Bottleneck {shape}, width {width_per_group})",
        weights=f"initialised from seed {seed}",
        source=f"Lite mode: torchvision's ResNet class with Bottleneck blocks {list(blocks)} "
               f"(inner width {width_per_group}, layer names as in resnet50), initialised "
               f"from seed {seed}, for scikit-learn's digits upsampled to {side} x {side}; it "
               f"stands in for ResNet-50 IMAGENET1K_V2, which needs a download.")


def load_resnet50(*, device=None) -> Classifier:
    """Full mode's model: torchvision ``resnet50`` with ``ResNet50_Weights.IMAGENET1K_V2``.

    Loaded through the registry (``load_classifier("resnet50", mode="full")``), which takes
    the normalisation, input size and categories from the weights' own transforms and meta
    and keeps the file in torch hub's cache. The ResNet is the wrapper's ``.net``, as in
    :func:`digits_resnet`, so the layers are at the same dotted paths (:data:`LAYERS`).

    Returns:
        :class:`Classifier` in eval mode: x (N, 3, 224, 224) in [0, 1] -> logits (N, 1000).

    Raises:
        WeightsUnavailableError: the weights file is not cached and cannot be downloaded;
            the message names the file, where it comes from, where to put it, and that lite
            mode (``WORKBENCH_MODE=lite``, the digits ResNet) needs no weights.
    """
    try:
        return load_classifier(RESNET50_NAME, mode="full", device=device)
    except WeightsUnavailableError as err:
        from torchvision.models import ResNet50_Weights

        row = next(r for r in weights_status() if r["name"] == RESNET50_NAME)
        url = ResNet50_Weights.IMAGENET1K_V2.url
        filename = url.rsplit("/", 1)[-1]
        raise WeightsUnavailableError(
            f"Notebook 04's full mode needs the ResNet-50 weights file {filename} "
            f"({row['weights']}), which is not in torch hub's cache at {row['path']} and "
            f"could not be downloaded from {url}. Download it on a machine with network "
            f"(or run load_resnet50() once there: torchvision puts it in its cache) and copy "
            f"it to {row['path']}; or use lite mode, which needs no weights file: set "
            f"WORKBENCH_MODE=lite and notebook 04 trains the small digits ResNet "
            f"(workbench.lat.models.digits_resnet) instead."
        ) from err
