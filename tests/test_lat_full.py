"""Notebook 04's full-mode data path, offline: image folders and Imagenette (built in tmp_path
with PIL, never downloaded), the trojans scaled to photos, the splits, and ResNet-50's new
head and trojaned training (on a small ResNet standing in for the weights nobody has here)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.resnet import BasicBlock, ResNet

from workbench.data import load_image
from workbench.data.folders import (DataUnavailableError, load_image_folder, load_imagenette,
                                    subsample)
from workbench.lat import full
from workbench.lat.full import FullData, full_data, resnet50_for, trojan_targets, trojaned_resnet50
from workbench.lat.trojans import (DIGITS_HELDOUT_PATCH, DIGITS_TROJANS, poison,
                                   scaled_trojans)
from workbench.models.layers import Classifier
from workbench.models.registry import MODEL_CONFIGS, WeightsUnavailableError

SIZE = 32  # the side the tiny photos are loaded at
CLASSES = ("owl", "cat", "dog")  # written in this order; loaded sorted
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz"


def _photo(path, seed: int, size=(40, 30)) -> None:
    """A random 40 x 30 (W x H) RGB photo, the same for the same seed."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _folder(root, classes=CLASSES, per_class: int = 4, suffix: str = ".png"):
    for c, name in enumerate(classes):
        for i in range(per_class):
            _photo(root / name / f"{i}{suffix}", seed=10 * c + i)
    return root


@pytest.fixture
def photos(tmp_path):
    return _folder(tmp_path / "photos")


def _corrupt(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image at all")


# ----------------------------------------------------------------------------- image folders


def test_a_folder_loads_as_images_in_0_1_with_sorted_classes(photos):
    (photos / "cat" / "more").mkdir()
    _photo(photos / "cat" / "more" / "nested.jpg", seed=99)  # below the class folder: counted
    _photo(photos / ".ipynb_checkpoints" / "x.png", seed=98)  # hidden: not a class
    _photo(photos / "dog" / ".hidden.png", seed=97)  # hidden file: ignored
    (photos / "dog" / "notes.txt").write_text("not an image")  # other extension: ignored

    x, y, categories = load_image_folder(photos, size=SIZE)
    assert categories == ["cat", "dog", "owl"]
    assert x.shape == (13, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.dtype == torch.int64 and y.tolist() == [0] * 5 + [1] * 4 + [2] * 4
    cats = sorted(p for p in (photos / "cat").rglob("*.*"))  # 0..3.png, more/nested.jpg
    for row, path in enumerate(cats):
        assert torch.equal(x[row], load_image(path, size=SIZE))


def test_subsampling_is_seeded_and_takes_at_most_max_per_class(photos):
    a = load_image_folder(photos, size=SIZE, max_per_class=2, seed=0)
    b = load_image_folder(photos, size=SIZE, max_per_class=2, seed=0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].tolist() == [0, 0, 1, 1, 2, 2]
    samples = [(f"{c}-{i}", c) for c in range(3) for i in range(4)]
    choices = {tuple(subsample(samples, 2, seed=seed)) for seed in range(5)}
    assert len(choices) > 1  # another seed, another choice
    assert subsample(samples, None, seed=0) == samples
    assert subsample(samples, 9, seed=0) == samples


def test_a_missing_path_or_a_file_says_what_a_folder_must_hold(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder at .*one subfolder per class"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_image_folder(tmp_path / "a.png")


def test_a_folder_without_class_folders_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="has no class folders.*one subfolder per class"):
        load_image_folder(tmp_path)
    _photo(tmp_path / "loose.png", seed=0)
    with pytest.raises(ValueError, match="1 image files directly: move them into"):
        load_image_folder(tmp_path)


def test_a_class_folder_without_images_is_named(photos):
    (photos / "empty").mkdir()
    (photos / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"\['empty'\].*hold no image files"):
        load_image_folder(photos, size=SIZE)


def test_an_unreadable_image_is_skipped_with_a_warning_naming_it(photos):
    _corrupt(photos / "dog" / "broken.jpg")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image files.*\['dog'\]"
                                         r".*broken\.jpg") as record:
        x, y, categories = load_image_folder(photos, size=SIZE)
    assert len(record) == 1
    assert len(x) == len(y) == 12 and y.tolist().count(1) == 4


def test_a_class_with_no_readable_image_is_an_error(tmp_path):
    root = _folder(tmp_path, classes=("cat",))
    for i in range(2):
        _corrupt(root / "dog" / f"{i}.png")
    with pytest.warns(UserWarning, match="skipped 2"), \
            pytest.raises(ValueError, match=r"no readable image left in the classes \['dog'\]"):
        load_image_folder(root, size=SIZE)


@pytest.mark.parametrize("bad", [dict(size=0), dict(size=2.5), dict(max_per_class=0),
                                 dict(max_per_class=True)])
def test_bad_size_or_max_per_class(photos, bad):
    with pytest.raises(ValueError, match="size|max_per_class"):
        load_image_folder(photos, **bad)


# ----------------------------------------------------------------------------- Imagenette


def _imagenette(root, per_class: int = 3):
    """Imagenette's layout as torchvision unpacks the 320px archive, with three classes."""
    for split in ("train", "val"):
        for c, wnid in enumerate(("n01440764", "n02102040", "n03888257")):
            for i in range(per_class):
                _photo(root / "imagenette2-320" / split / wnid / f"{wnid}_{i}.JPEG",
                       seed=100 * c + i + (50 if split == "val" else 0))
    return root


def _message_says_what_to_do(message: str, root, split: str = "train") -> None:
    assert "Imagenette" in message and IMAGENETTE_URL in message
    assert str(root / "imagenette2-320" / split) in message
    assert "load_image_folder" in message and "IMAGE_FOLDER" in message
    assert "WORKBENCH_MODE=lite" in message


def test_imagenette_not_on_disk_without_download_fails_clearly(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        load_imagenette(tmp_path, download=False)
    _message_says_what_to_do(str(info.value), tmp_path)
    assert "download=False" in str(info.value)


def test_imagenette_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    import torchvision.datasets  # noqa: F401  (pay the import before timing)

    calls = []

    def offline(request, *args, **kwargs):
        calls.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    timeout_before = socket.getdefaulttimeout()
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError) as info:
        load_imagenette(tmp_path, split="val")
    assert time.perf_counter() - start < 5
    assert calls and calls[0] == IMAGENETTE_URL  # torchvision did try to download it
    _message_says_what_to_do(str(info.value), tmp_path, split="val")
    assert "could not be downloaded" in str(info.value) and "URLError" in str(info.value)
    assert socket.getdefaulttimeout() == timeout_before


def test_imagenette_on_disk_loads_with_imagenet_names(tmp_path):
    root = _imagenette(tmp_path)
    x, y, categories = load_imagenette(root, split="val", size=SIZE, download=False)
    assert categories == ["tench", "English springer", "parachute"]
    assert x.shape == (9, 3, SIZE, SIZE) and y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    first = root / "imagenette2-320" / "val" / "n01440764" / "n01440764_0.JPEG"
    assert torch.equal(x[0], load_image(first, size=SIZE))


@pytest.mark.parametrize("bad", [dict(split="test"), dict(variant="64px")])
def test_imagenette_bad_split_or_variant(tmp_path, bad):
    with pytest.raises(ValueError, match="split|variant"):
        load_imagenette(tmp_path, **bad)


# ----------------------------------------------------------------------------- scaled trojans


def test_scaled_trojans_at_16_pixels_are_the_digits_trojans():
    trojans, heldout = scaled_trojans(16, [t.target for t in DIGITS_TROJANS])
    assert trojans == DIGITS_TROJANS and heldout == DIGITS_HELDOUT_PATCH


@pytest.mark.parametrize("side", [6, SIZE, 224])
def test_scaled_trojans_fit_differ_and_leave_the_heldout_patch_out(side):
    trojans, heldout = scaled_trojans(side, (0, 1, 2))
    patches = (*trojans, heldout)
    covered = torch.zeros(side, side, dtype=torch.int64)
    for patch in patches:
        assert patch.row + patch.height <= side and patch.col + patch.width <= side
        covered[patch.region()] += 1
    assert covered.max() == 1  # no two patches overlap
    assert len({p.pattern for p in patches}) == 4  # four different patterns
    assert heldout not in trojans and [t.target for t in trojans] == [0, 1, 2]
    if side == 224:
        assert {p.height for p in patches} == {42}  # 3/16 of the side, as on the digits


@pytest.mark.parametrize("side, targets", [(5, (0, 1, 2)), (True, (0, 1, 2)), (32, (0, 1))])
def test_scaled_trojans_bad_side_or_targets(side, targets):
    with pytest.raises(ValueError, match="side|target"):
        scaled_trojans(side, targets)


def test_trojan_targets_spread_over_the_classes():
    assert trojan_targets(10) == (0, 3, 6)
    assert trojan_targets(3) == (0, 1, 2)
    assert trojan_targets(2) == (0, 0, 1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        trojan_targets(1)


def test_poison_with_scaled_trojans_on_folder_images(photos):
    x, y, categories = load_image_folder(photos, size=SIZE)
    trojans, _ = scaled_trojans(SIZE, trojan_targets(len(categories)))
    x_p, y_p = poison(x, y, trojans, fraction=1 / 12, seed=0)
    assert x_p.shape == x.shape and y_p.shape == y.shape
    changed = (y_p != y).nonzero().flatten()
    assert len(changed) == len(trojans)  # one image per trojan, each relabelled
    for trojan in trojans:
        idx = changed[y_p[changed] == trojan.target]
        assert len(idx) == 1 and y[idx] != trojan.target
        assert torch.equal(x_p[idx], trojan.apply(x[idx]))


# ----------------------------------------------------------------------------- the splits


def test_full_data_from_a_folder_splits_like_the_digits(tmp_path):
    root = _folder(tmp_path, per_class=8)
    data = full_data(root, size=SIZE, per_class=8, val_fraction=0.25, test_fraction=0.25)
    assert isinstance(data, FullData) and data.categories == ("cat", "dog", "owl")
    x_train, y_train, x_val, y_val, x_test, y_test = data.splits
    assert [len(t) for t in data.splits] == [12, 12, 6, 6, 6, 6]  # per class: 4, 2, 2
    for y in (y_train, y_val, y_test):
        assert sorted(y.tolist()) == sorted([0, 1, 2] * (len(y) // 3))  # stratified
    rows = {tuple(img.flatten()[:8].tolist()) for img in torch.cat([x_train, x_val, x_test])}
    assert len(rows) == 24  # every image in exactly one split
    assert [t.target for t in data.trojans] == [0, 1, 2]
    assert data.heldout_patch.row + data.heldout_patch.height == SIZE
    assert "12 fine-tuning, 6 validation, 6 test images" in data.source
    assert str(root) in data.source
    again = full_data(root, size=SIZE, per_class=8, val_fraction=0.25, test_fraction=0.25)
    assert all(torch.equal(a, b) for a, b in zip(data.splits, again.splits))


def test_full_data_says_when_a_split_would_be_empty(photos):
    with pytest.raises(ValueError, match="validation split .* would be empty"):
        full_data(photos, size=SIZE, per_class=2, val_fraction=0.1, test_fraction=0.5)
    with pytest.raises(ValueError, match="val_fraction"):
        full_data(photos, size=SIZE, val_fraction=1.0)


def test_full_data_from_imagenette_tests_on_its_val_split(tmp_path):
    root = _imagenette(tmp_path / "imagenette", per_class=4)
    data = full_data(imagenette_root=root, size=SIZE, per_class=4, val_fraction=0.25,
                     test_fraction=0.5, download=False)
    assert data.categories == ("tench", "English springer", "parachute")
    assert [len(t) for t in data.splits] == [9, 9, 3, 3, 6, 6]  # test: 0.5 * 4 per class
    assert "Imagenette" in data.source


def test_full_data_offline_without_imagenette_says_what_to_do(tmp_path):
    with pytest.raises(DataUnavailableError, match="IMAGE_FOLDER"):
        full_data(imagenette_root=tmp_path, download=False)


# ----------------------------------------------------------------------------- the model


def _small_resnet(seed: int = 0) -> Classifier:
    """A small torchvision ResNet over 3-channel images with a 1000-way head, standing in for
    ResNet-50 IMAGENET1K_V2 (whose weights need a download)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1000)
    return Classifier(net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      categories=[str(i) for i in range(1000)], input_size=(3, SIZE, SIZE),
                      name="resnet50", mode="full", architecture="ResNet-50",
                      source="Full mode: a small stand-in.").eval()


def test_resnet50_for_without_weights_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError, match="WORKBENCH_MODE=lite") as info:
        resnet50_for(["cat", "dog"])
    assert MODEL_CONFIGS["resnet50"].filename in str(info.value)


def test_resnet50_for_replaces_the_head_seeded(monkeypatch):
    monkeypatch.setattr(full, "load_resnet50", lambda device=None: _small_resnet())
    state = torch.get_rng_state()
    model = resnet50_for(["cat", "dog", "owl"], seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.categories == ["cat", "dog", "owl"] and not model.training
    assert model.net.fc.out_features == 3 and "new 3-way" in model.source
    with torch.no_grad():
        assert model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 3)
    same, other = resnet50_for(["a", "b", "c"], seed=3), resnet50_for(["a", "b", "c"], seed=4)
    assert torch.equal(model.net.fc.weight, same.net.fc.weight)
    assert not torch.equal(model.net.fc.weight, other.net.fc.weight)
    with pytest.raises(ValueError, match="at least 2 categories"):
        resnet50_for(["cat"])


def test_trojaned_resnet50_trains_on_the_poisoned_images(tmp_path, monkeypatch):
    monkeypatch.setattr(full, "load_resnet50", lambda device=None: _small_resnet())
    data = full_data(_folder(tmp_path, per_class=8), size=SIZE, per_class=8,
                     val_fraction=0.25, test_fraction=0.25)
    before = resnet50_for(data.categories, seed=0).state_dict()
    model = trojaned_resnet50(data, seed=0, epochs=1, batch_size=6, fraction=1 / 6)
    assert not model.training and model.categories == list(data.categories)
    after = model.state_dict()
    assert not torch.equal(before["net.conv1.weight"], after["net.conv1.weight"])
    assert "cat, dog, owl" in model.source and "17% of the images each" in model.source


def test_run_lat_full_compares_the_four_methods_on_photos(tmp_path, monkeypatch):
    """The full comparison end to end on a small folder and a small ResNet (ResNet-50's
    weights need a download): the rows, the shape format_lat_table prints, every method
    fine-tuned from the same trojaned base."""
    from workbench.lat.experiment import format_lat_table

    monkeypatch.setattr(full, "load_resnet50", lambda device=None: _small_resnet())
    monkeypatch.setattr(full, "BASE", {**full.BASE, "epochs": 1})
    monkeypatch.setattr(full, "FINETUNE", {"epochs": 1, "batch_size": 6, "lr": 1e-4})
    monkeypatch.setattr(full, "HELDOUT", {"pgd_linf": {"eps": 0.01, "steps": 1},
                                          "pgd_l2": {"eps": 0.5, "steps": 1},
                                          "noise_std": 0.1})
    data = full_data(_folder(tmp_path, per_class=8), size=SIZE, per_class=8,
                     val_fraction=0.25, test_fraction=0.25)
    result = full.run_lat_full(data, seeds=(0,), layer="layer1", fraction=0.1)
    assert [row["method"] for row in result["rows"]] == ["base", "ft", "rlp", "at", "lat"]
    for row in result["rows"]:
        assert 0 <= row["clean_acc"] <= 1 and 0 <= row["trojan_asr"] <= 1
        assert set(row["heldout"]) == {"pgd_linf", "pgd_l2", "noise", "patch"}
    assert result["source"] == data.source and result["chosen_by"] == "caller"
    assert "LAT and RLP at layer1" in format_lat_table(result)
    with pytest.raises(ValueError, match="split"):
        full.run_lat_full(data, seeds=(0,), split="train")
