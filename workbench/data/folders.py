"""Folders of photos as small training sets: the learner's own, or Imagenette (full mode).

Both loaders return the same thing: ``(x, y, categories)`` with x (N, 3, size, size) float32
in [0, 1], y (N,) int64 indices into ``categories``, the images grouped by class in the
order of ``categories``. Each image goes through :func:`workbench.data.load_image` (shorter
side resized to ``size``, centre crop, grayscale and RGBA made RGB), so the whole set sits in
memory: 0.6 MB an image at 224 x 224, hence ``max_per_class``.

A folder is read in torchvision's ``ImageFolder`` layout (one subfolder per class, named
after it, classes sorted by name, images anywhere below their class folder with one of
:data:`IMAGE_EXTENSIONS`). Files and folders whose names start with a dot (``.DS_Store``,
``.ipynb_checkpoints``, macOS's ``._photo.jpg``) are not images and are ignored; so are files
with other extensions. An image file that cannot be read (corrupt, truncated, not really an
image) is skipped with one warning that counts and names the skipped files: the others still
load. A class left with no readable image is an error.

torch, torchvision and tqdm are imported inside the functions: ``import workbench.data``
stays cheap.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

from workbench.data.images import _check_size, load_image

# torchvision's ImageFolder reads these (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SKIPPED_NAMED = 10  # unreadable files the warning names one by one; it counts all of them

IMAGENETTE_SPLITS = ("train", "val")
IMAGENETTE_VARIANTS = ("full", "320px", "160px")  # torchvision's archives: shorter side
IMAGENETTE_HOME = "https://github.com/fastai/imagenette"
DOWNLOAD_TIMEOUT_S = 15.0  # per socket operation while torchvision downloads


class DataUnavailableError(RuntimeError):
    """A full-mode data set is not on disk and could not be downloaded."""


def _check_max_per_class(max_per_class) -> int | None:
    if max_per_class is None:
        return None
    if isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1:
        raise ValueError(f"max_per_class must be a whole number >= 1, or None for every image, "
                         f"got {max_per_class!r}")
    return max_per_class


def _visible(path: Path, below: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(below).parts)


def folder_samples(root) -> tuple[list[tuple[Path, int]], list[str]]:
    """The image files of an ``ImageFolder``-layout folder, without reading them.

    Returns:
        (samples, categories): samples a list of (path, class index), grouped by class in the
        order of ``categories`` (the class folders' names, sorted), paths sorted within a
        class.

    Raises:
        FileNotFoundError: ``root`` does not exist. NotADirectoryError: it is a file.
        ValueError: it holds no class folder, or a class folder holds no image file.
    """
    root = Path(root).expanduser()
    layout = (f"one subfolder per class, named after the class, holding that class's images "
              f"({', '.join(IMAGE_EXTENSIONS)}): {root}/cat/1.jpg, {root}/dog/1.jpg, ...")
    if not root.exists():
        raise FileNotFoundError(
            f"no image folder at {root}: check the path (relative paths start from "
            f"{Path.cwd()}); the folder must hold {layout}")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file, not a folder of images; pass a folder "
                                 f"that holds {layout}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = sum(1 for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        found = (f"; it holds {loose} image files directly: move them into" if loose
                 else ": it must hold")
        raise ValueError(f"{root} has no class folders{found} {layout}")
    samples, empty = [], []
    for index, name in enumerate(classes):
        folder = root / name
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                        and _visible(p, folder) and p.is_file())
        if not images:
            empty.append(name)
        samples += [(path, index) for path in images]
    if empty:
        raise ValueError(
            f"the class folders {empty} of {root} hold no image files (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}, hidden files ignored): add images to them or "
            f"remove them")
    return samples, classes


def subsample(samples: list[tuple[Path, int]], max_per_class: int | None, *,
              seed: int) -> list[tuple[Path, int]]:
    """At most ``max_per_class`` samples of each class, drawn without replacement from one
    ``torch.Generator`` seeded with ``seed`` (classes in index order): same samples and seed,
    same choice. Kept in their given order; None keeps every sample."""
    import torch

    max_per_class = _check_max_per_class(max_per_class)
    if max_per_class is None:
        return list(samples)
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for label in sorted({label for _, label in samples}):
        of_class = [s for s in samples if s[1] == label]
        if len(of_class) > max_per_class:
            chosen = torch.randperm(len(of_class), generator=generator)[:max_per_class]
            of_class = [of_class[i] for i in sorted(chosen.tolist())]
        kept += of_class
    return kept


def decode_samples(samples: list[tuple[Path, int]], categories: list[str], *, size: int,
                   where, progress: bool = False):
    """Read the images of ``samples`` with :func:`~workbench.data.load_image`.

    Unreadable files are skipped; one UserWarning counts them, names the first
    :data:`SKIPPED_NAMED` with the reason, and says which classes lost images.

    Returns:
        (x, y): x (M, 3, size, size) float32 in [0, 1], y (M,) int64, M the readable images.

    Raises:
        ValueError: a class of ``categories`` that had samples has no readable image (the
            message names it and its skipped files), or ``size`` is not a valid side.
    """
    import torch
    from tqdm.auto import tqdm

    size = _check_size(size)
    x = torch.empty(len(samples), 3, size, size)
    labels, skipped = [], []
    for path, label in tqdm(samples, desc="reading images", disable=not progress):
        try:
            x[len(labels)] = load_image(path, size=size)
        except ValueError as err:
            skipped.append((path, label, err))
            continue
        labels.append(label)
    y = torch.tensor(labels, dtype=torch.long)
    if skipped:
        named = "; ".join(str(err) for _, _, err in skipped[:SKIPPED_NAMED])  # names the file
        more = f"; and {len(skipped) - SKIPPED_NAMED} more" if len(skipped) > SKIPPED_NAMED else ""
        lost = sorted({categories[label] for _, label, _ in skipped})
        warnings.warn(f"skipped {len(skipped)} unreadable image files in {where} (classes "
                      f"{lost} have fewer images): {named}{more}. Delete or re-save them to "
                      f"silence this warning.", UserWarning, stacklevel=3)
    emptied = sorted({label for _, label in samples} - set(labels))
    if emptied:
        names = [categories[label] for label in emptied]
        raise ValueError(f"no readable image left in the classes {names} of {where}: every "
                         f"image file of theirs that was read is unreadable (see the warning); "
                         f"replace those files with PNG or JPEG images")
    return x[:len(labels)], y


def load_image_folder(root, *, size: int = 224, max_per_class: int | None = None,
                      seed: int = 0, progress: bool = False):
    """A folder of photos in torchvision's ``ImageFolder`` layout as an image set.

    Args:
        root: the folder, one subfolder per class (see the module docstring for the layout,
            the files ignored and unreadable files).
        size: side of the square images returned, in pixels (shorter side resized to it,
            then the centre cropped).
        max_per_class: read at most this many images per class, chosen at random (seeded);
            None reads every image.
        seed: seed of that choice: same folder and seed, same images.
        progress: show a progress bar while reading.

    Returns:
        (x, y, categories): x (N, 3, size, size) float32 in [0, 1]; y (N,) int64 indices into
        categories, the class folders' names sorted (torchvision's ImageFolder order);
        images grouped by class, in path order within a class.

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: see :func:`folder_samples`;
        ValueError also when a class has no readable image, or for a bad ``size`` or
        ``max_per_class``.
    """
    _check_size(size)
    _check_max_per_class(max_per_class)
    samples, categories = folder_samples(root)
    chosen = subsample(samples, max_per_class, seed=seed)
    x, y = decode_samples(chosen, categories, size=size, where=root, progress=progress)
    return x, y, categories


def _imagenette_dataset(root: Path, split: str, variant: str, download: bool):
    """torchvision's Imagenette whose items are (file path, label), not decoded images."""
    from torchvision.datasets import Imagenette

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen has no timeout
    try:
        return Imagenette(root, split=split, size=variant, download=download, loader=os.fspath)
    finally:
        socket.setdefaulttimeout(previous)


def load_imagenette(root, *, split: str = "train", size: int = 224, variant: str = "320px",
                    max_per_class: int | None = None, seed: int = 0, download: bool = True,
                    progress: bool = False):
    """Imagenette (ten easy ImageNet classes, fast.ai) through ``torchvision.datasets``.

    Args:
        root: folder the archive is downloaded to and unpacked in (torchvision puts the
            images in ``root / "imagenette2-320" / split / <wnid>`` for the 320px variant).
        split: "train" (9,469 images) or "val" (3,925).
        size: side of the square images returned, in pixels (as :func:`load_image_folder`).
        variant: torchvision's archive: "320px" (shorter side 320 px, the smallest above
            224), "160px" or "full".
        max_per_class, seed, progress: as :func:`load_image_folder`.
        download: download and unpack the archive when it is not in ``root`` yet.

    Returns:
        (x, y, categories): as :func:`load_image_folder`; categories are torchvision's
        first name of each class ("tench", "English springer", ...; ImageNet's own names),
        in wnid order (n01440764 first).

    Raises:
        DataUnavailableError: the images are not in ``root`` and could not be downloaded
            (or ``download`` is False); the message says where they would be, the URL, how
            to use a folder of one's own images instead, and how to switch to lite mode.
        ValueError: a bad split, variant, size or max_per_class.
    """
    if split not in IMAGENETTE_SPLITS:
        raise ValueError(f"split must be one of {IMAGENETTE_SPLITS}, got {split!r}")
    if variant not in IMAGENETTE_VARIANTS:
        raise ValueError(f"variant must be one of {IMAGENETTE_VARIANTS}, got {variant!r}")
    _check_size(size)
    _check_max_per_class(max_per_class)
    root = Path(root).expanduser()
    try:
        dataset = _imagenette_dataset(root, split, variant, download)
    except Exception as err:  # network, disk and archive errors come in many types
        raise DataUnavailableError(_imagenette_missing(root, split, variant, download, err)) \
            from err
    samples = [(Path(path), label) for path, label in dataset]
    categories = [names[0] for names in dataset.classes]
    chosen = subsample(samples, max_per_class, seed=seed)
    x, y = decode_samples(chosen, categories, size=size, where=f"Imagenette ({root})",
                          progress=progress)
    return x, y, categories


def _imagenette_missing(root: Path, split: str, variant: str, download: bool,
                        err: Exception) -> str:
    from torchvision.datasets import Imagenette

    archives = getattr(Imagenette, "_ARCHIVES", {})  # torchvision's table of archive URLs
    url = archives.get(variant, (IMAGENETTE_HOME,))[0]
    images = root / Path(url).stem / split  # where torchvision unpacks it
    why = (f"could not be downloaded from {url}" if download
           else "download=False, so nothing was downloaded")
    return (f"Imagenette ({variant} images, {split!r} split) is not at {images} and {why} "
            f"({type(err).__name__}: {err}). Download {url} on a machine with network and "
            f"unpack it into {root}; or use a folder of your own photos, one subfolder per "
            f"class (workbench.data.folders.load_image_folder; in notebook 04, set "
            f"IMAGE_FOLDER); or use lite mode, which needs no download: set "
            f"WORKBENCH_MODE=lite (the digits shipped with scikit-learn).")
