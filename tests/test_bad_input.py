"""Bad input and a cache that cannot be written: what the user sees.

A cache that cannot be written (full disk, read-only folder, ``WORKBENCH_CACHE`` naming a
file) costs no work: a warning says where and why, and the trained model is returned. Bad
arguments (float64 images on a float32 model, a seed where a generator goes, arrays that are
not images, images too large to load, text that is not valid Unicode, a notebooks folder that
is not there) raise an error that names the problem and what to do, not a library's error.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import workbench.experiments as experiments
from workbench.attacks import apgd, fgsm, pgd, pgd_restarts, pgd_sweep, random_start_point
from workbench.data import load_digits_split, load_image
from workbench.cache import save_cached
from workbench.defenses import accuracy, robustness_curve
from workbench.defenses.worst_case import evaluate_robustness
from workbench.notebooks import build
from workbench.safety import SafetyScorer, make_prompt

from conftest import SmallConvNet, random_batch

DIGITS_SUBSET = 512  # training images: one epoch on them takes ~0.05 s and reaches ~0.7
FULL_DISK = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def full_disk(monkeypatch):
    """``Path.write_bytes`` (how the digits' weights reach the disk) writes half the data, then
    fails as on a full disk."""
    write_bytes = Path.write_bytes

    def half_then_full(path, data):
        write_bytes(path, data[:len(data) // 2])
        raise FULL_DISK

    monkeypatch.setattr(Path, "write_bytes", half_then_full)


def cache_warning(record) -> str:
    messages = [str(w.message) for w in record if "could not save" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in record]
    return messages[0]


def files_below(folder) -> list[str]:
    """The files under ``folder``, but the training locks (empty files in ``.locks/``, which
    stay to be locked again: ``workbench.cache.training_lock``)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.parent.name != ".locks")


# ------------------------------------------------------------ a cache that cannot be written


@pytest.fixture
def small_digits(monkeypatch):
    """``train_or_load`` trains on the first DIGITS_SUBSET training images (fast); returns the
    held-out split, to check that the model it returns has learned."""
    x_train, y_train, x_test, y_test = load_digits_split()
    monkeypatch.setattr(experiments, "load_digits_split", lambda: (
        x_train[:DIGITS_SUBSET], y_train[:DIGITS_SUBSET], x_test, y_test))
    return x_test, y_test


def check_trained(model, reference, x_test, y_test):
    """``model`` is the model trained (the same weights as ``reference``, trained without a
    cache) and works."""
    expected = reference.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    assert not model.training and "trained here" in model.source
    assert accuracy(model, x_test, y_test) > 0.5


def test_full_disk_warns_and_returns_the_trained_model(tmp_path, monkeypatch, small_digits,
                                                       full_disk):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    reference = experiments.train_or_load("standard", 0, cache=False, epochs=1)
    with pytest.warns(UserWarning) as record:
        model = experiments.train_or_load("standard", 0, epochs=1)
    message = cache_warning(record)
    path = experiments.cache_path("standard", 0, epochs=1)
    assert str(path) in message and "No space left on device" in message
    assert "WORKBENCH_CACHE" in message and "writable folder" in message
    assert files_below(tmp_path) == []  # the partial file is gone, no cache file
    check_trained(model, reference, *small_digits)


@pytest.mark.parametrize("cache", ["a file", "below a file", "read-only folder"])
def test_cache_folder_that_cannot_be_made_or_written(cache, tmp_path, monkeypatch,
                                                     small_digits):
    if cache == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    root = {"a file": blocker, "below a file": blocker / "cache",
            "read-only folder": tmp_path / "read-only"}[cache]
    if cache == "read-only folder":
        root.mkdir(mode=0o500)
    monkeypatch.setenv("WORKBENCH_CACHE", str(root))
    reference = experiments.train_or_load("advprop", 0, cache=False, epochs=1, steps=1)
    with pytest.warns(UserWarning) as record:
        model = experiments.train_or_load("advprop", 0, epochs=1, steps=1)
    message = cache_warning(record)
    assert str(root) in message and "WORKBENCH_CACHE" in message
    check_trained(model, reference, *small_digits)
    assert blocker.read_text() == "a file where the cache should be"
    assert files_below(tmp_path) == ["not-a-folder"]


def test_an_uncreatable_default_cache_folder_says_to_set_workbench_cache(tmp_path,
                                                                          monkeypatch):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.delenv("WORKBENCH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(OSError, match=r"cannot create the workbench cache folder .* set "
                                      r"WORKBENCH_CACHE to a writable folder"):
        experiments.cache_path("standard", 0)  # before any training


def test_a_writer_that_fails_otherwise_leaves_no_partial_file(tmp_path):
    def broken_writer(file):
        file.write_bytes(b"half")
        raise RuntimeError("bug in the writer")

    with pytest.raises(RuntimeError, match="bug in the writer"):
        save_cached(broken_writer, tmp_path / "digits" / "model.pt", what="model")
    assert files_below(tmp_path) == []


@pytest.fixture
def lite():
    """``workbench.safety.lite`` (imports keras-hub: seconds, once per session)."""
    from workbench.safety import lite as module

    return module


class FullDiskModel:
    """Stands in for the lite keras model: saving writes part of the file, then fails."""

    def save_weights(self, path):
        assert str(path).endswith(".weights.h5")  # keras refuses other names
        path.write_bytes(b"\x89HDF\r\n\x1a\n partial")
        raise FULL_DISK


def test_lite_scorer_is_returned_when_its_cache_cannot_be_written(lite, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    built, trained = [], []

    def build_stand_in(seed, encoder=None):
        built.append(lite.LiteScorer.__new__(lite.LiteScorer))
        built[-1].model = FullDiskModel()
        return built[-1]

    monkeypatch.setattr(lite, "build_lite_scorer", build_stand_in)
    monkeypatch.setattr(lite, "train_lite", lambda scorer, rows, *, seed, progress:
                        trained.append(scorer))
    with pytest.warns(UserWarning) as record:
        scorer = lite.load_lite_scorer(0, progress=False)
    message = cache_warning(record)
    assert str(lite.cache_path(0)) in message and "No space left on device" in message
    assert "lite ShieldGemma" in message and "WORKBENCH_CACHE" in message
    assert scorer is built[0] and trained == [scorer]  # the scorer trained, returned
    assert files_below(tmp_path) == []


# ------------------------------------------------------------------- attacks and evaluation


ENTRY_POINTS = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, 0.1),
    "pgd": lambda m, x, y: pgd(m, x, y, eps=0.1, alpha=0.05, steps=1),
    "apgd": lambda m, x, y: apgd(m, x, y, eps=0.1, steps=1),
    "accuracy": accuracy,
    "robustness_curve": lambda m, x, y: robustness_curve(m, x, y, [0.1], steps=1),
    "evaluate_robustness": lambda m, x, y: evaluate_robustness(m, x, y, eps=0.1, pgd_steps=1,
                                                               apgd_steps=1),
}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_float64_images_on_a_float32_model_say_to_pass_x_float(name):
    model = SmallConvNet().eval()
    x, y = random_batch(0)
    x64 = x.double()
    with pytest.raises(TypeError, match=r"x is float64 but the model's weights are float32: "
                                        r"pass x\.float\(\)"):
        ENTRY_POINTS[name](model, x64, y)
    assert torch.equal(x64, x.double())
    ENTRY_POINTS[name](model, x64.float(), y)  # as the message says: it runs


GENERATOR_TAKERS = {
    "pgd": lambda m, x, y, g: pgd(m, x, y, eps=0.1, alpha=0.05, steps=1, generator=g),
    "pgd without random start": lambda m, x, y, g: pgd(m, x, y, eps=0.1, alpha=0.05, steps=1,
                                                       random_start=False, generator=g),
    "apgd": lambda m, x, y, g: apgd(m, x, y, eps=0.1, steps=1, generator=g),
    "pgd_sweep": lambda m, x, y, g: pgd_sweep(m, x, y, [0.1], steps=1, generator=g),
    "pgd_restarts": lambda m, x, y, g: pgd_restarts(m, x, y, restarts=2, eps=0.1, alpha=0.05,
                                                    steps=1, generator=g),
    "random_start_point": lambda m, x, y, g: random_start_point(x, 0.1, "linf", g),
}


@pytest.mark.parametrize("name", GENERATOR_TAKERS)
def test_a_seed_in_place_of_a_generator_says_how_to_make_one(name):
    model = SmallConvNet().eval()
    x, y = random_batch(1)
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator, e\.g\. "
                                        r"torch\.Generator\(\)\.manual_seed\(0\); got int 0"):
        GENERATOR_TAKERS[name](model, x, y, 0)
    GENERATOR_TAKERS[name](model, x, y, torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------- images


def test_decompression_bomb_names_the_file_its_pixels_and_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL warns above it, refuses 2x
    for side in (12, 16):  # 144 pixels: PIL's warning; 256: PIL's error
        path = tmp_path / f"big{side}.png"
        Image.new("RGB", (side, side)).save(path)
        with pytest.raises(ValueError) as info:
            load_image(path, size=8)
        message = str(info.value)
        assert str(path) in message and f"{side * side} pixels" in message
        assert "over 100 pixels" in message and "decompression bomb" in message


def test_truncated_image_file_is_not_readable(tmp_path):
    path = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=rf"{path.name} is not a readable image"):
        load_image(path, size=8)


def test_a_size_needing_gigabytes_is_refused_before_allocating():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"size=100000 .*120\.0 GB.*the largest size is 4096"):
        load_image(image, size=100_000)


@pytest.mark.parametrize("array", [np.zeros((4, 4, 3), dtype=complex),
                                   np.full((4, 4), "a"), np.full((4, 4), None, dtype=object)],
                         ids=["complex", "str", "object"])
def test_arrays_that_are_not_pixels_name_their_dtype(array):
    with pytest.raises(TypeError) as info:
        load_image(array, size=8)
    message = str(info.value)
    assert f"dtype {array.dtype}" in message
    assert "uint8" in message and "[0, 1]" in message and "(H, W, 3)" in message


# ------------------------------------------------------------------------------------- text


@pytest.mark.parametrize("contents, field, position", [
    (("hello \ud800",), "user_content", 6), (("hi", "ok \udfff"), "model_content", 3)])
def test_lone_surrogate_in_a_prompt_says_where_and_how_to_fix_it(contents, field, position):
    with pytest.raises(ValueError) as info:
        make_prompt("harassment", *contents)
    message = str(info.value)
    assert f"{field} has an unpaired surrogate" in message and f"position {position}" in message
    assert "not valid Unicode" in message and "encode('utf-8', 'replace')" in message


def test_a_scorer_refuses_a_prompt_with_a_lone_surrogate():
    prompt = make_prompt("harassment", "hello") + "\ud800"
    with pytest.raises(ValueError, match=rf"prompt 0 has an unpaired surrogate .* at position "
                                         rf"{len(prompt) - 1}: it is not valid Unicode"):
        SafetyScorer().score([prompt])  # before any tokenizer sees it


# -------------------------------------------------------------------------------- notebooks


def test_build_of_a_missing_or_empty_notebooks_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no notebooks folder at .*missing"):
        build(tmp_path / "missing", check_only=True)
    with pytest.raises(FileNotFoundError, match=r"no notebook masters \(NN_name\.py\) in"):
        build(tmp_path, check_only=True)
