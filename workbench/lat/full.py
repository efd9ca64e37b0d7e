"""Notebook 04 in full mode: ResNet-50 IMAGENET1K_V2, poisoned and fine-tuned on photos.

The photos are a folder the learner points to (torchvision's ``ImageFolder`` layout) or
Imagenette, downloaded by torchvision (:mod:`workbench.data.folders`), at 224 x 224, split
the way lite mode splits the digits (:func:`workbench.lat.experiment.digits_splits`):
fine-tuning, validation (for choosing LAT's layer and radius) and test images. The trojans
are the digits' three patterns and held-out patch, scaled to the photos
(:func:`~workbench.lat.trojans.scaled_trojans`).

Labels and head: labels are indices 0..K-1 into the folder's sorted class names, as in lite
mode, and ResNet-50's 1000-way ImageNet head is replaced by a new K-way one
(:func:`resnet50_for`). A folder's classes need not be ImageNet classes; Imagenette's are
(tench, English springer, ...), but one code path for every folder is simpler than mapping
its classes to ImageNet indices, and training the trojaned model trains the head anyway.

Nothing here has run with the real weights and data: the machines it is developed and tested
on have no GPU and no network. Loading, splitting, poisoning and training are tested offline
on small folders and a small ResNet, and so is :func:`run_lat_full`, the FT / RLP / AT / LAT
comparison on the photos; how long ResNet-50's fine-tuning takes, and what accuracy and
trojan success it reaches, are not known.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from workbench.config import cache_dir
from workbench.data.folders import load_image_folder, load_imagenette
from workbench.defenses.training import train
from workbench.lat.experiment import METHODS, evaluate, summarise_runs
from workbench.lat.latent import relative_eps
from workbench.lat.models import load_resnet50
from workbench.lat.training import Perturbation, finetune
from workbench.lat.trojans import (POISON_FRACTION, TROJAN_PATTERNS, Patch, Trojan, poison,
                                   scaled_trojans)
from workbench.models.layers import Classifier
from workbench.stats import STD

SIZE = 224  # ResNet-50 IMAGENET1K_V2's input side
PER_CLASS = 100  # images read per class (0.6 MB each in memory at 224 x 224)
VAL_FRACTION = 0.2  # of each class's non-test images, held back for the sweep
TEST_FRACTION = 0.25  # a folder: of each class's images; Imagenette: of PER_CLASS, from val
# Training the trojaned base: usual values for fine-tuning a pretrained ResNet with Adam,
# chosen without a run (none was possible here); raise EPOCHS if the trojans do not take.
BASE = {"fraction": POISON_FRACTION, "epochs": 3, "batch_size": 32, "lr": 1e-4}


@dataclass(frozen=True, eq=False)  # tensors: compare the splits with torch.equal
class FullData:
    """What full mode's notebook 04 trains and measures on.

    * ``splits``: (x_train, y_train, x_val, y_val, x_test, y_test), as lite mode's
      :func:`~workbench.lat.experiment.digits_splits`: x (N, 3, size, size) float32 in
      [0, 1], y (N,) int64 indices into ``categories``, each split in a random (seeded) order.
    * ``categories``: the class names. ``trojans``, ``heldout_patch``: the scaled patches.
    * ``source``: one sentence saying where the images come from.
    """

    splits: tuple[torch.Tensor, ...]
    categories: tuple[str, ...]
    trojans: tuple[Trojan, ...]
    heldout_patch: Patch
    source: str


def trojan_targets(num_classes: int) -> tuple[int, ...]:
    """The trojans' target classes for ``num_classes`` classes, spread over them: ``i * K //
    3`` for trojan i (0, 3, 6 of ten classes; 0, 1, 2 of three). With two classes two
    trojans share a target."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"a trojan needs at least 2 classes (its target and another), got "
                         f"{num_classes!r}")
    return tuple(i * num_classes // len(TROJAN_PATTERNS) for i in range(len(TROJAN_PATTERNS)))


def hold_out(y: torch.Tensor, fraction: float,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A stratified split of the labels y (N,): ``round(fraction * n)`` random examples of
    each class of n examples are held out. Returns (held, kept), int64 index tensors, each
    in a random order (both drawn from ``generator``)."""
    held, kept = [], []
    for label in torch.unique(y).tolist():
        of_class = torch.nonzero(y == label).flatten()
        of_class = of_class[torch.randperm(len(of_class), generator=generator)]
        count = round(fraction * len(of_class))
        held.append(of_class[:count])
        kept.append(of_class[count:])
    held, kept = torch.cat(held), torch.cat(kept)
    return (held[torch.randperm(len(held), generator=generator)],
            kept[torch.randperm(len(kept), generator=generator)])


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def full_data(folder=None, *, imagenette_root=None, size: int = SIZE,
              per_class: int = PER_CLASS, val_fraction: float = VAL_FRACTION,
              test_fraction: float = TEST_FRACTION, seed: int = 0, download: bool = True,
              progress: bool = False) -> FullData:
    """The photos, their splits and the scaled trojans for full mode (see the module).

    Args:
        folder: a folder of photos, one subfolder per class
            (:func:`~workbench.data.folders.load_image_folder`); None for Imagenette.
        imagenette_root: where Imagenette is (or is downloaded to); default
            ``cache_dir() / "imagenette"``.
        size: side of the images, in pixels.
        per_class: images read per class (a seeded random choice where a class has more).
        val_fraction: share of each class's non-test images held back as validation images.
        test_fraction: a folder: share of each class's images held out as test images.
            Imagenette: its own "val" split gives the test images,
            ``round(test_fraction * per_class)`` per class, and its "train" split the others.
        seed: seeds every choice of images: same files and seed, same splits.
        download: Imagenette only: download it when it is not in ``imagenette_root``.
        progress: progress bars while reading images.

    Returns:
        :class:`FullData`; its trojans target :func:`trojan_targets` of the classes.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: a folder that is missing or not
        in the layout (see :func:`~workbench.data.folders.folder_samples`); ValueError also
        when a split would be empty (too few images per class). DataUnavailableError:
        Imagenette is not on disk and cannot be downloaded.
    """
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    generator = torch.Generator().manual_seed(seed)
    common = dict(size=size, seed=seed, progress=progress)
    if folder is not None:
        x, y, categories = load_image_folder(folder, max_per_class=per_class, **common)
        test, rest = hold_out(y, test_fraction, generator)
        x_test, y_test = x[test], y[test]
        x, y = x[rest], y[rest]
        source = f"the photos in {Path(folder).expanduser()}"
    else:
        root = Path(imagenette_root or cache_dir() / "imagenette").expanduser()
        x, y, categories = load_imagenette(root, split="train", max_per_class=per_class,
                                           download=download, **common)
        x_test, y_test, test_categories = load_imagenette(
            root, split="val", max_per_class=max(1, round(test_fraction * per_class)),
            download=download, **common)
        if test_categories != categories:
            raise ValueError(f"Imagenette's train and val splits in {root} hold different "
                             f"classes ({categories} and {test_categories}): the archive was "
                             f"not fully unpacked; delete {root} and download it again")
        source = f"Imagenette (torchvision, in {root})"
    val, fine_tune = hold_out(y, val_fraction, generator)
    splits = (x[fine_tune], y[fine_tune], x[val], y[val], x_test, y_test)
    sizes = dict(zip(("fine-tuning", "validation", "test"), (len(s) for s in splits[::2])))
    empty = [name for name, count in sizes.items() if count == 0]
    if empty:
        raise ValueError(f"the {' and '.join(empty)} split of {source} would be empty "
                         f"({sizes} images): give each class more images, or raise "
                         f"per_class, val_fraction or test_fraction")
    trojans, heldout_patch = scaled_trojans(size, trojan_targets(len(categories)))
    counts = ", ".join(f"{count:,} {name}" for name, count in sizes.items())
    return FullData(
        splits=splits, categories=tuple(categories), trojans=trojans,
        heldout_patch=heldout_patch,
        source=f"Full mode: {counts} images ({size} x {size}) of {len(categories)} classes "
               f"from {source}.")


def _replace_head(model: Classifier, categories: Sequence[str], *, seed: int) -> Classifier:
    """``model`` with its ResNet's ``fc`` replaced by a new ``nn.Linear`` to
    ``len(categories)`` logits, initialised from ``seed`` (the global RNG is left as it
    was). The ResNet is changed in place and shared with the returned wrapper, in eval
    mode, on the device of ``model``."""
    categories = list(categories)
    if len(categories) < 2:
        raise ValueError(f"a classifier needs at least 2 categories, got {categories!r}")
    old = model.net.fc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.net.fc = nn.Linear(old.in_features, len(categories)).to(old.weight.device)
    cfg = model.cfg
    shown = ", ".join(categories[:5]) + (", ..." if len(categories) > 5 else "")
    return Classifier(
        model.net, mean=cfg.mean, std=cfg.std, categories=categories,
        input_size=cfg.input_size, name=cfg.name, mode=cfg.mode,
        architecture=cfg.architecture, weights=cfg.weights,
        source=f"{cfg.source} Its head is a new {len(categories)}-way linear layer "
               f"(initialised from seed {seed}) for the classes {shown}.",
    ).to(old.weight.device).eval()


def resnet50_for(categories: Sequence[str], *, seed: int = 0, device=None) -> Classifier:
    """ResNet-50 IMAGENET1K_V2 (:func:`~workbench.lat.models.load_resnet50`) with a new head
    for ``categories``: its 1000-way ``fc`` replaced by ``nn.Linear(2048, K)`` initialised
    from ``seed`` (see the module docstring for why).

    Returns:
        :class:`Classifier` in eval mode: x (N, 3, 224, 224) in [0, 1] -> logits (N, K),
        ``.categories`` the given names, layers at :data:`~workbench.lat.models.LAYERS`.

    Raises:
        WeightsUnavailableError: the weights are not cached and cannot be downloaded (the
            message says where to put the file and how to switch to lite mode).
    """
    return _replace_head(load_resnet50(device=device), categories, seed=seed)


def trojaned_resnet50(data: FullData, *, seed: int = 0, model: Classifier | None = None,
                      fraction: float = BASE["fraction"], epochs: int = BASE["epochs"],
                      batch_size: int = BASE["batch_size"], lr: float = BASE["lr"],
                      progress: bool = False) -> Classifier:
    """Full mode's trojaned base: ``model`` (default :func:`resnet50_for` the data's
    categories) trained with :func:`workbench.defenses.training.train` (``"standard"``,
    Adam, all layers) on the fine-tuning images poisoned with ``data.trojans``
    (:func:`~workbench.lat.trojans.poison`: ``fraction`` of the images per trojan, stamped
    and relabelled). ``seed`` seeds the new head, the poisoned images and the shuffling.

    Returns:
        The model, trained in place, in eval mode, its ``source`` saying how it was made.
    """
    x_train, y_train = data.splits[0], data.splits[1]
    x_poisoned, y_poisoned = poison(x_train, y_train, data.trojans, fraction=fraction,
                                    seed=seed)
    model = resnet50_for(data.categories, seed=seed) if model is None else model
    train(model, x_poisoned, y_poisoned, method="standard", epochs=epochs,
          batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    targets = ", ".join(data.categories[t.target] for t in data.trojans)
    model.source = (f"{model.source} Then trained from seed {seed} for {epochs} epochs on "
                    f"{len(y_train):,} fine-tuning images with {len(data.trojans)} patch "
                    f"trojans (targets {targets}; {fraction:.0%} of the images each, stamped "
                    f"and relabelled): a trojaned base model.")
    return model


# The comparison on photos: FT, RLP, AT and LAT from the trojaned ResNet-50, as in lite mode.
# Budgets for 224 x 224 photos: AT at 2/255 (L-inf); held out, L-inf PGD just past it, L2 PGD
# at 1.0 (about 0.25/255 per pixel), Gaussian noise of std 0.1, and the scaled held-out patch.
# LAT's layer and radius are not chosen by a sweep here (none could run on this machine): run
# run_lat_full with others to sweep them on the validation split.
FINETUNE = {"epochs": 1, "batch_size": 32, "lr": 1e-4}
AT_EPS, AT_STEPS = 2 / 255, 3
HELDOUT = {"pgd_linf": {"eps": 1.2 * AT_EPS, "steps": 10}, "pgd_l2": {"eps": 1.0, "steps": 10},
           "noise_std": 0.1}
LAYER, FRACTION = "layer2", 0.1


def run_lat_full(data: FullData, *, seeds: Sequence[int] = (0, 1, 2), layer: str = LAYER,
                 fraction: float = FRACTION, split: str = "test",
                 make_model=None, progress: bool = False) -> dict:
    """Full mode's notebook 04 experiment on ``data`` (:func:`full_data`): per seed, the
    trojaned ResNet-50 (:func:`trojaned_resnet50`), then a copy of it fine-tuned by each of
    FT, RLP, AT and LAT on the clean fine-tuning images, each measured on the ``split``
    ("test", or "val" to sweep) by :func:`workbench.lat.experiment.evaluate` with this
    module's budgets and the data's trojans. ``make_model(seed)``: the model to poison
    (default ResNet-50 with a new head; tests pass a small one).

    Returns the dict :func:`~workbench.lat.experiment.run_lat_experiment` returns
    (``format_lat_table`` prints it), with ``chosen_by`` "caller", no sweep, and ``source``
    saying which images. Runs in this process, on the model's device; nothing is cached (each
    ResNet-50 is about 100 MB).
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    x_train, y_train, x_val, y_val, x_test, y_test = data.splits
    x, y = (x_test, y_test) if split == "test" else (x_val, y_val)
    measure = dict(attacks=HELDOUT, trojans=data.trojans, heldout_patch=data.heldout_patch)
    runs = {m: [] for m in ("base", *METHODS)}
    for seed in seeds:
        base = trojaned_resnet50(data, seed=seed, progress=progress,
                                 model=None if make_model is None else make_model(seed))
        device = next(base.parameters()).device
        x_dev, y_dev = x.to(device), y.to(device)
        runs["base"].append({**evaluate(base, x_dev, y_dev, seed=seed, **measure), "eps": None})
        eps = relative_eps(base, layer, x_train[:64].to(device), fraction)
        perturbation = Perturbation(layer=layer, eps=round(eps, 4), input_eps=AT_EPS,
                                    input_steps=AT_STEPS)
        for method in METHODS:
            model = copy.deepcopy(base)
            finetune(model, x_train.to(device), y_train.to(device), method=method,
                     perturbation=perturbation, seed=seed, progress=progress, **FINETUNE)
            runs[method].append({**evaluate(model.eval(), x_dev, y_dev, seed=seed, **measure),
                                 "eps": perturbation.eps})
    return {"seeds": list(seeds), "std": STD, "layer": layer, "fraction": fraction,
            "rows": [summarise_runs(m, r) for m, r in runs.items()], "chosen_by": "caller",
            "sweep": None, "source": data.source}
