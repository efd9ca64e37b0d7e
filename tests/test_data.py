"""Loading images: every supported source gives (3, size, size) float32 in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.data import LABELLED_PHOTOS, SAMPLE_PHOTOS, load_image, photo_batch, sample_image

EXIF_ORIENTATION = 0x0112


def halves_image(width: int = 64, height: int = 32) -> np.ndarray:
    """Left half red, right half blue, a green stripe along the top: orientation is visible."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    a[:, : width // 2, 0] = 255
    a[:, width // 2:, 2] = 255
    a[: height // 8, :, 1] = 255
    return a


def check_output(x, size):
    assert isinstance(x, torch.Tensor)
    assert x.shape == (3, size, size)
    assert x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1


# ----------------------------------------------------------------------------- sources


def test_png_path(tmp_path):
    a = halves_image()
    path = tmp_path / "img.png"
    Image.fromarray(a).save(path)
    x = load_image(path, size=16)
    check_output(x, 16)
    # PNG is lossless: same as loading the array itself, from a str path too.
    assert torch.equal(x, load_image(a, size=16))
    assert torch.equal(x, load_image(str(path), size=16))


def test_constant_colour_values():
    a = np.zeros((20, 30, 3), dtype=np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 51, 102, 255
    x = load_image(a, size=10)
    check_output(x, 10)
    torch.testing.assert_close(x[:, 5, 5], torch.tensor([0.2, 0.4, 1.0]))
    assert torch.equal(x, x[:, :1, :1].expand_as(x))


def test_default_size_is_224():
    check_output(load_image(halves_image()), 224)


def test_jpeg_exif_orientation(tmp_path):
    a = halves_image(64, 32)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(a).save(path, quality=95, exif=exif.tobytes())
    assert Image.open(path).getexif()[EXIF_ORIENTATION] == 6

    x = load_image(path, size=16)
    check_output(x, 16)
    displayed = np.asarray(Image.fromarray(a).transpose(Image.Transpose.ROTATE_270))
    assert displayed.shape == (64, 32, 3)  # what a viewer shows: portrait
    as_displayed = load_image(displayed, size=16)
    as_stored = load_image(a, size=16)
    other_way = load_image(np.asarray(Image.fromarray(a).transpose(Image.Transpose.ROTATE_90)),
                           size=16)
    assert (x - as_displayed).abs().mean() < 0.05
    assert (x - as_stored).abs().mean() > 0.2
    assert (x - other_way).abs().mean() > 0.2


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    path = tmp_path / "gray.png"
    Image.fromarray(g, mode="L").save(path)
    for src in (path, g, Image.fromarray(g, mode="L"), g[None]):
        x = load_image(src, size=20)
        check_output(x, 20)
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
        assert x[0, 0, -1] > x[0, 0, 0]  # the gradient survives


def test_rgba_becomes_rgb(tmp_path):
    a = np.zeros((20, 20, 4), dtype=np.uint8)
    a[..., 0] = 200
    a[..., 3] = 255
    opaque = load_image(a, size=10)
    check_output(opaque, 10)
    assert torch.equal(opaque, load_image(a[..., :3], size=10))

    path = tmp_path / "rgba.png"
    Image.fromarray(a, mode="RGBA").save(path)
    assert torch.equal(load_image(path, size=10), opaque)

    transparent = a.copy()
    transparent[..., 3] = 0  # fully transparent: composited onto white
    x = load_image(transparent, size=10)
    check_output(x, 10)
    assert torch.equal(x, torch.ones_like(x))


def test_pil_image_source():
    a = halves_image()
    image = Image.fromarray(a)
    x = load_image(image, size=16)
    check_output(x, 16)
    assert torch.equal(x, load_image(a, size=16))
    assert image.size == (64, 32)  # the caller's image is untouched


def test_float_array_in_unit_range_matches_uint8():
    a = halves_image()
    x8 = load_image(a, size=16)
    xf = load_image(a.astype(np.float32) / 255.0, size=16)
    check_output(xf, 16)
    torch.testing.assert_close(xf, x8, atol=1.5 / 255, rtol=0)


def test_channels_first_arrays():
    a = halves_image(30, 20)
    expected = load_image(a, size=12)
    chw = np.ascontiguousarray(a.transpose(2, 0, 1))
    assert chw.shape == (3, 20, 30)
    assert torch.equal(load_image(chw, size=12), expected)
    floats = chw.astype(np.float32) / 255.0
    torch.testing.assert_close(load_image(floats, size=12), expected, atol=1.5 / 255, rtol=0)


def test_torch_tensor_source():
    a = halves_image(30, 20)
    t = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)
    torch.testing.assert_close(load_image(t, size=12), load_image(a, size=12),
                               atol=1.5 / 255, rtol=0)


def test_non_square_is_centre_cropped():
    # A wide image: the centre crop keeps the middle columns.
    a = np.zeros((20, 60, 3), dtype=np.uint8)
    a[:, 20:40] = 255  # white middle third, black sides
    x = load_image(a, size=20)
    check_output(x, 20)
    assert x[:, :, 2:18].min() > 0.9


def test_sixteen_bit_png_keeps_its_brightness(tmp_path):
    """A 16-bit grayscale PNG is a PNG: its mid-grey must load as mid-grey, not white."""
    g = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    path = tmp_path / "gray16.png"
    Image.fromarray(g).save(path)
    x = load_image(path, size=32)
    check_output(x, 32)
    assert abs(x.mean().item() - 0.5) < 0.05


# ----------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_text_file_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(path)


def test_empty_array():
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 10, 3), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(10, 10, 5), (10,), (2, 10, 10, 3)])
def test_bad_array_shape(shape):
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("size", [0, -3])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        load_image(halves_image(), size=size)


def test_url_in_lite_mode_does_not_touch_network(monkeypatch):
    import urllib.request

    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: calls.append(a))
    monkeypatch.setenv("WORKBENCH_MODE", "lite")
    with pytest.raises(ValueError, match="lite mode"):
        load_image("https://example.com/cat.jpg")
    assert calls == []


# ----------------------------------------------------------------------------- sample photos


@pytest.mark.parametrize("name", sorted(SAMPLE_PHOTOS))
def test_sample_image(name):
    x, label = sample_image(name)
    check_output(x, 224)
    assert label == SAMPLE_PHOTOS[name].label
    assert x.std() > 0.05  # a photo, not a blank


def test_sample_image_size():
    x, _ = sample_image("coffee", size=64)
    check_output(x, 64)


def test_sample_image_unknown():
    with pytest.raises(ValueError, match="chelsea"):
        sample_image("dog")


def test_photo_batch_shapes_labels_and_seed():
    names = ("coffee", "camera")
    x, y = photo_batch(names, size=32, crops_per_photo=3, seed=0)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert y.dtype == torch.long
    assert y.tolist() == [SAMPLE_PHOTOS["coffee"].label] * 3 + [SAMPLE_PHOTOS["camera"].label] * 3
    # the views of one photo are different crops
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])

    again, y_again = photo_batch(names, size=32, crops_per_photo=3, seed=0)
    assert torch.equal(x, again) and torch.equal(y, y_again)
    other, _ = photo_batch(names, size=32, crops_per_photo=3, seed=1)
    assert not torch.equal(x, other)
    # the first view of each photo is the plain centre crop, whatever the seed
    assert torch.equal(x[0], other[0]) and torch.equal(x[3], other[3])


def test_photo_batch_default_names():
    x, y = photo_batch(size=16, crops_per_photo=1)
    assert x.shape == (len(LABELLED_PHOTOS), 3, 16, 16)
    assert y.tolist() == [SAMPLE_PHOTOS[n].label for n in LABELLED_PHOTOS]


def test_photo_batch_unlabelled_name():
    with pytest.raises(ValueError, match="astronaut"):
        photo_batch(("coffee", "astronaut"), size=16, crops_per_photo=1)


def test_photo_batch_bad_crops():
    with pytest.raises(ValueError, match="crops_per_photo"):
        photo_batch(("coffee",), size=16, crops_per_photo=0)


def test_float_array_above_one_is_an_error_not_a_black_image():
    from workbench.data import load_image

    array = np.full((16, 16, 3), 0.6)
    array[0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"floats must be in \[0, 1\]"):
        load_image(array, size=8)
    array[0, 0, 0] = 1.0 + 1e-9  # rounding noise from resampling is tolerated
    assert abs(load_image(array, size=8).mean().item() - 0.6) < 0.01
