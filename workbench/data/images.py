"""Images in, tensors out: (3, H, W) float32 in [0, 1], the one format every model here takes."""

from __future__ import annotations

import io
import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from workbench.config import get_mode

URL_TIMEOUT_S = 15.0
# The largest ``size`` load_image makes: a 4096 x 4096 image is 200 MB as float32 (and the
# resized image before its centre crop is larger still); the models here take 224.
MAX_SIZE = 4096
ARRAY_KINDS = "biuf"  # NumPy dtype kinds read as pixels: bool, signed and unsigned int, float


@dataclass(frozen=True)
class SamplePhoto:
    """A scikit-image sample photo and the ImageNet class a person would give it.

    ``label`` is the ImageNet class id, or None where no ImageNet class fits (astronaut).
    """

    name: str
    label: int | None
    description: str


# Labels chosen by looking at the photos, not by asking a model.
SAMPLE_PHOTOS: dict[str, SamplePhoto] = {
    p.name: p
    for p in [
        SamplePhoto("chelsea", 281, "Chelsea the cat, a ginger tabby (ImageNet 281 'tabby')"),
        SamplePhoto("coffee", 967, "a cup of espresso on a saucer (ImageNet 967 'espresso')"),
        SamplePhoto("rocket", 657, "a rocket on its launch pad (ImageNet 657 'missile')"),
        SamplePhoto("camera", 872, "the cameraman, grayscale, camera on a tripod (872 'tripod')"),
        SamplePhoto("motorcycle", 665, "a motorcycle, side view (ImageNet 665 'moped')"),
        SamplePhoto("astronaut", None, "astronaut Eileen Collins (no ImageNet class fits)"),
    ]
}
LABELLED_PHOTOS = tuple(name for name, p in SAMPLE_PHOTOS.items() if p.label is not None)


def _check_size(size: int) -> int:
    """``size`` as an int, or ValueError: a whole number of pixels from 1 to ``MAX_SIZE``,
    refused before any image of that size is allocated."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"size must be a positive whole number of pixels, got {size!r}")
    if size > MAX_SIZE:
        raise ValueError(
            f"size={size} would make a {size} x {size} image ({3 * 4 * int(size) ** 2 / 1e9:.1f} "
            f"GB as float32): the largest size is {MAX_SIZE} pixels; the models here take 224 "
            f"(see model.input_size)")
    return int(size)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype.kind not in ARRAY_KINDS:
        raise TypeError(
            f"cannot read an image from an array of dtype {array.dtype}: pass uint8 values "
            f"(0-255) or floats in [0, 1] (bool and other integers 0-255 work too), shaped "
            f"(H, W), (H, W, 3) or (H, W, 4)")
    if array.size == 0:
        raise ValueError(f"the image array is empty (shape {array.shape}); pass an image with "
                         f"at least one pixel, shaped (H, W), (H, W, 3) or (H, W, 4)")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot read an image from an array of shape {array.shape}: expected "
                         f"(H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA")
    if array.dtype == np.uint8:
        return Image.fromarray(array)
    if array.dtype == bool:
        return Image.fromarray(array.astype(np.uint8) * 255)
    is_float = np.issubdtype(array.dtype, np.floating)
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError("the image array holds NaN or infinite values")
    low, high = array.min(), array.max()
    top = 1.0 if is_float else 255.0
    if low < 0 or high > top + 1e-6:
        raise ValueError(
            f"image values run from {low:g} to {high:g}: floats must be in [0, 1] (divide "
            f"0-255 values by 255) and integers in [0, 255]")
    scale = 255.0 if is_float else 1.0
    return Image.fromarray(np.round(np.clip(array * scale, 0, 255)).astype(np.uint8))


def _decode(source, where: str) -> Image.Image:
    """Open and decode ``source`` (a path or a binary file object) with PIL. ValueError naming
    ``where`` for an image over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``,
    89 megapixels by default: PIL warns above it and refuses twice it), before decoding it;
    OSError and PIL's UnidentifiedImageError propagate."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)  # reads the header only: the size, not the pixels
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(
            f"{where} is too large to load ({err}): images over {Image.MAX_IMAGE_PIXELS:,} "
            f"pixels (PIL's Image.MAX_IMAGE_PIXELS) are refused as possible decompression "
            f"bombs. Shrink it first (4000 x 3000 is plenty: the models see 224 x 224), or "
            f"crop the part you need.") from None
    image.load()
    return image


def _open_path(path: Path) -> Image.Image:
    if not path.exists():
        raise FileNotFoundError(
            f"no image file at {path}: check the path (relative paths start from "
            f"{Path.cwd()}), or try a sample photo: workbench.data.sample_image('chelsea')")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass the path of one image file in it")
    try:
        return _decode(path, str(path))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path} is not a readable image ({err}); pass a PNG, JPEG, GIF, BMP "
                         f"or WebP file") from None


def _open_url(url: str) -> Image.Image:
    if get_mode() != "full":
        raise ValueError(
            f"loading {url} needs the network, which lite mode does not use: download the "
            f"image and pass its path, or set WORKBENCH_MODE=full on a machine with network")
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            data = response.read()
    except Exception as err:
        raise ValueError(f"could not download {url} ({type(err).__name__}: {err}); download "
                         f"it yourself and pass the file's path") from None
    try:
        return _decode(io.BytesIO(data), url)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{url} did not return a readable image ({err})") from None


def to_pil(src) -> Image.Image:
    """Any supported source as an RGB PIL image, EXIF orientation applied.

    ``src``: a path (str or os.PathLike), an http(s) URL (full mode), a PIL image, a NumPy
    array (H, W), (H, W, 3), (H, W, 4) or (C, H, W), uint8 or float in [0, 1] (TypeError for
    other dtypes: complex, str, object), or a torch tensor (3, H, W) / (H, W) in [0, 1].
    Files and URLs over PIL's decompression-bomb limit are a ValueError (see :func:`_decode`).
    """
    if isinstance(src, Image.Image):
        image = src
    elif isinstance(src, (str, os.PathLike)):
        text = os.fspath(src)
        if text.startswith(("http://", "https://")):
            image = _open_url(text)
        elif not text:
            raise ValueError("the image path is an empty string")
        else:
            image = _open_path(Path(text).expanduser())
    elif type(src).__module__.startswith("torch"):
        image = _array_to_pil(src.detach().cpu().numpy())
    elif isinstance(src, (np.ndarray, list)):
        image = _array_to_pil(np.asarray(src))
    else:
        raise TypeError(f"cannot load an image from a {type(src).__name__}: pass a path, URL, "
                        f"PIL image, NumPy array or torch tensor")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # 16-bit PNGs and TIFFs: PIL's convert("RGB") would clip at 255, so scale first.
        values = np.asarray(image, dtype=np.float64)
        image = _array_to_pil(values / 65535.0 if image.mode != "F" else values)
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "P", "PA"):  # composite transparency onto white
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(canvas, rgba)
        image = image.convert("RGB")
    return image


def load_image(src, size: int = 224):
    """Load an image as a tensor the models take.

    The shorter side is resized to ``size`` (bicubic, antialiased), then the centre is cropped
    to ``size`` x ``size``. Grayscale and RGBA become RGB; EXIF orientation is honoured.

    Returns:
        Tensor (3, size, size), float32 in [0, 1]. Add a batch dimension with ``x[None]``.

    Raises:
        FileNotFoundError: no file at the path. ValueError: not an image, a file over PIL's
        decompression-bomb limit, an empty or malformed array, a URL in lite mode, ``size``
        over ``MAX_SIZE`` (refused before anything is allocated). TypeError: an unsupported
        source type or array dtype.
    """
    import torch

    size = _check_size(size)
    image = to_pil(src)
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def sample_image(name: str, size: int = 224):
    """A scikit-image sample photo (shipped with the package, no download) and its label.

    Args:
        name: one of ``SAMPLE_PHOTOS``: chelsea, coffee, rocket, camera, motorcycle, astronaut.

    Returns:
        (image, label): image (3, size, size) in [0, 1]; label the ImageNet class id, or None
        where no ImageNet class fits the photo.
    """
    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; choose one of {sorted(SAMPLE_PHOTOS)}")
    return load_image(_skimage_photo(name), size=size), SAMPLE_PHOTOS[name].label


def photo_batch(names=LABELLED_PHOTOS, *, size: int = 224, crops_per_photo: int = 4,
                seed: int = 0):
    """A batch of labelled photos for sweeps: each photo plus random crops and flips of it.

    The first view of each photo is the plain centre crop; the others are random crops
    covering 60-100 % of the shorter side, flipped left-right half the time, drawn from a
    generator seeded with ``seed`` (same seed, same batch).

    Returns:
        (x, y): x (len(names) * crops_per_photo, 3, size, size) in [0, 1]; y (N,) int64 labels.
    """
    import torch
    import torch.nn.functional as F

    if crops_per_photo < 1:
        raise ValueError(f"crops_per_photo must be at least 1, got {crops_per_photo}")
    unlabelled = [n for n in names if n in SAMPLE_PHOTOS and SAMPLE_PHOTOS[n].label is None]
    if unlabelled:
        raise ValueError(f"{unlabelled} have no ImageNet label; use names from {LABELLED_PHOTOS}")
    generator = torch.Generator().manual_seed(seed)
    views, labels = [], []
    for name in names:
        big, label = sample_image(name, size=2 * size)
        for view in range(crops_per_photo):
            if view == 0:
                crop = big
            else:
                side = int(2 * size * (0.6 + 0.4 * torch.rand((), generator=generator).item()))
                top, left = (int(torch.randint(0, 2 * size - side + 1, (), generator=generator))
                             for _ in range(2))
                crop = big[:, top:top + side, left:left + side]
                if torch.rand((), generator=generator).item() < 0.5:
                    crop = crop.flip(-1)
            views.append(F.interpolate(crop[None], size=(size, size), mode="bilinear",
                                       antialias=True, align_corners=False)[0].clamp(0, 1))
            labels.append(label)
    return torch.stack(views), torch.tensor(labels, dtype=torch.long)
