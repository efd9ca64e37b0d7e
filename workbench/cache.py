"""Files the workbench computes once and keeps: trained lite models under ``cache_dir()``.

A cache that cannot be written (a read-only folder, a full disk, ``$WORKBENCH_CACHE`` naming a
file) never costs the work already done: :func:`save_cached` warns and the caller goes on with
the model it trained, in memory. Nothing here imports torch or keras when imported:
:func:`save_cached` takes the function that writes the file, and the torch state-dict helpers
(:func:`load_state`, :func:`save_state`) import torch when called.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Callable

from workbench.config import CACHE_ENV, cache_dir


def cache_file(folder: str, name: str) -> Path:
    """``cache_dir() / folder / name``: where a computed file is kept. Creates no file or
    folder but the cache's own (``cache_dir()`` does).

    When ``$WORKBENCH_CACHE`` names a file, or a folder that cannot be created, the same path
    below it all the same: nothing can be loaded from there, and :func:`save_cached` warns
    that it cannot write it. OSError, saying to set ``$WORKBENCH_CACHE``, when the default
    folder (``~/.cache/workbench``) cannot be created.
    """
    try:
        root = cache_dir()
    except OSError as err:
        configured = os.environ.get(CACHE_ENV)
        if not configured:
            raise OSError(err.errno, f"cannot create the workbench cache folder "
                          f"({err.strerror}): set {CACHE_ENV} to a writable folder",
                          err.filename) from err
        root = Path(configured)
    return root / folder / name


@contextlib.contextmanager
def training_lock(path: Path):
    """While the block runs, no other process holding ``training_lock(path)`` runs: a second
    process that needs the model of cache file ``path`` (another test worker, a notebook and
    the command line at once) waits here while the first trains and saves it, then finds it
    in the cache, instead of training it a second time alongside (two trainings on 2 cores
    slow each other down several times over). The lock is an advisory ``flock`` on
    ``<cache>/.locks/<folder>-<name>.lock``; without ``fcntl`` (Windows) or where the lock
    file cannot be made (a read-only cache), the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    handle = None
    if fcntl is not None:
        try:
            locks = path.parent.parent / ".locks"  # beside the cache's folders, not in them
            locks.mkdir(parents=True, exist_ok=True)
            handle = open(locks / f"{path.parent.name}-{path.name}.lock", "a")
        except OSError:
            handle = None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            handle.close()  # closing the file releases the lock


def _partial_path(path: Path) -> Path:
    """The temporary file :func:`save_cached` writes before renaming it onto ``path``: next to
    it, with this process's id and the same suffixes (``seed0-ab12.weights.h5`` ->
    ``seed0-ab12.<pid>.tmp.weights.h5``), so a writer that checks the extension accepts it."""
    stem, dot, suffixes = path.name.partition(".")
    return path.with_name(f"{stem}.{os.getpid()}.tmp{dot}{suffixes}")


def _write_whole(write: Callable[[Path], None], path: Path) -> None:
    """``write`` a temporary file, then rename it onto ``path``: ``path`` is either the old
    file or the whole new one, and the temporary file is gone whatever happens."""
    partial = _partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(OSError):  # renamed, never created, or its folder is gone
            partial.unlink(missing_ok=True)


def save_cached(write: Callable[[Path], None], path: Path, *, what: str) -> None:
    """Save a trained model to the cache file ``path``, all or nothing.

    Args:
        write: ``write(file)`` writes the model to ``file`` (a temporary file next to
            ``path``, renamed onto it once written).
        path: the cache file, e.g. from :func:`cache_file`; its folder is created.
        what: the model in a few words, for the warning ("digits_cnn (standard, seed 0)").

    When the folder cannot be created or the file cannot be written (read-only folder, full
    disk, ``$WORKBENCH_CACHE`` naming a file: any OSError), no partial file is left and a
    UserWarning says what could not be saved, where, why, and to set ``$WORKBENCH_CACHE`` to a
    writable folder; the caller goes on with the model in memory (the next run trains it
    again). Other errors propagate, also leaving no partial file.
    """
    try:
        _write_whole(write, path)
    except OSError as err:
        warnings.warn(
            f"could not save the trained {what} to {path} ({err}). It is kept in memory for "
            f"this run, but the next run will train it again: to keep trained models, set "
            f"{CACHE_ENV} to a writable folder (export {CACHE_ENV}=/path/to/folder).",
            UserWarning, stacklevel=3)


def load_state(model, path: Path) -> bool:
    """Load the state dict cached at ``path`` into ``model`` (a torch module); False when there
    is nothing usable: no file, or (with a warning saying so) one that cannot be read, which
    the caller then trains again and overwrites."""
    import torch

    if not path.is_file():
        return False
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # truncated, not a checkpoint, other keys: all mean "retrain"
        warnings.warn(f"cached weights {path} are unreadable ({type(err).__name__}: "
                      f"{str(err)[:120]}); training again and overwriting them", stacklevel=3)
        return False
    return True


def save_state(model, path: Path, *, what: str) -> None:
    """Cache ``model``'s state dict at ``path`` with :func:`save_cached` (warns, and keeps
    nothing half-written, when it cannot). The bytes are serialised in memory first: writing
    them, a full disk is an OSError (ENOSPC), where ``torch.save`` to a file may report it as
    a RuntimeError ("unexpected pos")."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    save_cached(lambda file: file.write_bytes(buffer.getvalue()), path, what=what)


def cached_json(path: Path, compute: Callable[[], dict], *, cache: bool, what: str) -> dict:
    """The JSON result kept at ``path``, or ``compute()`` saved there (``cache`` False: always
    ``compute()``, nothing read or written). An unreadable file is computed again and
    overwritten; a cache that cannot be written warns (:func:`save_cached`)."""
    import json

    if cache and path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass  # unreadable: compute it again and overwrite
    result = compute()
    if cache:
        text = json.dumps(result)
        save_cached(lambda file: file.write_text(text), path, what=what)
    return result
