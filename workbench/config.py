"""Mode, device, seeding and cache paths.

Two modes share one code path (docs/architecture.md, "Two modes, one code path"):

* ``lite``: CPU, offline. Real, small, trained models that ship with packages.
* ``full``: GPU / Colab. Downloads the large pretrained models.

``WORKBENCH_MODE`` picks the mode; without it, ``full`` when a CUDA GPU is present, else
``lite``. Nothing here imports torch at module import time: ``import workbench`` stays cheap.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

MODES = ("lite", "full")
MODE_ENV = "WORKBENCH_MODE"


def _nvidia_driver_present() -> bool:
    """Cheap pre-check: without an NVIDIA driver CUDA cannot be available (no torch import)."""
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def cuda_available() -> bool:
    """True when torch can use a CUDA GPU. Imports torch only when a driver is present."""
    if not _nvidia_driver_present():
        return False
    import torch

    return torch.cuda.is_available()


def get_mode(mode: str | None = None) -> str:
    """Return the mode to use: ``mode`` if given, else ``$WORKBENCH_MODE``, else by hardware.

    Raises ValueError for anything but ``"lite"`` or ``"full"``.
    """
    chosen = mode if mode is not None else os.environ.get(MODE_ENV, "").strip().lower() or None
    if chosen is None:
        return "full" if cuda_available() else "lite"
    if chosen not in MODES:
        source = "mode argument" if mode is not None else f"${MODE_ENV}"
        raise ValueError(
            f"{source} is {chosen!r}; it must be 'lite' (CPU, offline) or 'full' (downloads "
            f"pretrained weights). Example: export {MODE_ENV}=lite"
        )
    return chosen


def get_device(device: str | None = None):
    """The torch device to run on: ``device`` if given, else CUDA when present, else CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int):
    """Seed Python, NumPy and torch; return a ``torch.Generator`` seeded with ``seed``.

    Library functions never rely on this global state: they take a ``generator`` or ``seed``
    argument. This is for learner code in notebooks.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block on ``count`` intra-op torch threads, then restore the caller's count.

    Training under a fixed count gives the same weights whatever the notebook kernel, the
    command line or the tests use: a sum split over another number of threads rounds
    differently, and a trained model amplifies that.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def quiet_native_stderr():
    """Hold back what C and C++ libraries write straight to file descriptor 2 while the block
    runs (TensorFlow's and absl's start-up lines when keras-hub is imported), so that a
    learner's cell shows none of it; if the block raises, what was held back is written out.
    Python's own warnings go through ``sys.stderr`` and are not affected."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


CACHE_ENV = "WORKBENCH_CACHE"  # names the cache folder


def cache_dir() -> Path:
    """Where the workbench keeps what it computes once (trained lite models, converted weights).

    ``$WORKBENCH_CACHE`` if set, else ``~/.cache/workbench``.
    """
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "workbench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def torch_hub_dir() -> Path:
    """torch hub's cache, where torchvision keeps downloaded weights: ``$TORCH_HOME/hub``,
    else ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub`` (torch.hub.get_dir()'s
    rule, without importing torch)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


# glibc's malloc returns every block above its mmap threshold (at most 32 MiB) to the kernel
# when it is freed, so a training or attack step over 224 px images pays page faults on
# hundreds of MB of fresh pages each pass. Above this size blocks still come from mmap.
KEEP_FREED_BLOCKS_UP_TO = 1 << 30  # bytes


def keep_freed_memory(limit: int = KEEP_FREED_BLOCKS_UP_TO) -> bool:
    """Ask glibc's malloc to keep freed blocks up to ``limit`` bytes for reuse instead of
    handing them back to the kernel (``mallopt`` of ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD``): the large activations of an ImageNet network then reuse the same
    pages every forward and backward pass. ``benchmarks/bench_pgd.py --floor`` measures what
    it gives.

    Process-wide; the price is memory the process keeps (its peak stays its peak). Returns
    False, changing nothing, where the C library is not glibc (macOS, Windows, musl).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, int(limit))) and bool(
        mallopt(m_trim_threshold, 2 * int(limit)))


def start(seed: int = 0):
    """First call of every notebook: print one line saying the mode and device, seed the
    global generators for learner code, let malloc keep large blocks (:func:`keep_freed_memory`)
    and return the device to use."""
    import torch

    keep_freed_memory()
    mode = get_mode()
    device = get_device()
    seed_everything(seed)
    what = ("lite: CPU, offline, small real models that ship with packages" if mode == "lite"
            else "full: downloads the large pretrained models")
    print(f"workbench mode {what}; device {device}; torch {torch.__version__}; seed {seed}")
    return device


KAGGLE_SECRETS = ("KAGGLE_USERNAME", "KAGGLE_KEY")  # what kagglehub reads for gated presets


def use_colab_secrets(names=KAGGLE_SECRETS) -> list[str]:
    """In Colab, copy the secrets ``names`` from the Secrets panel (the key icon on the left:
    add ``KAGGLE_USERNAME`` and ``KAGGLE_KEY`` from kaggle.com > Settings > API, and let the
    notebook access them) into the environment, where kagglehub looks. Variables already set
    are left alone; outside Colab nothing happens. Returns the names it set."""
    import sys

    if "google.colab" not in sys.modules:
        return []
    from google.colab import userdata  # present only in Colab

    set_now = []
    for name in names:
        if os.environ.get(name):
            continue
        try:
            value = userdata.get(name)
        except Exception:  # not added, or the notebook was not given access: kagglehub says so
            continue
        if value:
            os.environ[name] = value
            set_now.append(name)
    return set_now
