"""Notebook 04's experiment: does LAT remove trojans and resist attacks nobody trained on?

After Casper et al. (2023)'s trojan set-up, in miniature (lite mode): a digits ResNet is
trained on digits poisoned with three patch trojans (:mod:`workbench.lat.trojans`), then
fine-tuned on clean digits by FT, RLP, AT and LAT (:mod:`workbench.lat.training`). Each
fine-tuned model is measured on the test split:

* ``clean_acc``: accuracy on clean digits;
* ``trojan_asr``: the trojans' attack success rate, the mean over the three;
* ``heldout_acc``: the mean accuracy under four attacks no method trained on: L-inf PGD at
  1.2 times AT's budget, L2 PGD, Gaussian noise, and a patch that was never a trojan.

Where and how hard LAT pushes is chosen by :func:`run_lat_sweep` on a validation split carved
from the training digits (never the test split). Trained models and results are cached under
``cache_dir() / "lat"``; a second run only reads them. Training always runs on one torch
thread, so the cached weights, and every number, are the same whether the notebook, the
command line or a worker process trains a model first.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from typing import Sequence

import torch

from workbench.attacks import pgd
from workbench.cache import CACHE_ENV, cache_file, cached_json, load_state, save_state
from workbench.config import torch_threads
from workbench.data.digits import load_digits_split
from workbench.defenses.evaluation import accuracy
from workbench.defenses.models import DIGITS_INPUT_SIZE
from workbench.defenses.training import default_alpha
from workbench.lat.latent import relative_eps
from workbench.lat.models import digits_resnet
from workbench.lat.training import METHODS, Perturbation, finetune
from workbench.lat import trojans
from workbench.lat.trojans import (DIGITS_HELDOUT_PATCH, DIGITS_TROJANS, Patch, Trojan,
                                   attack_success_rate, train_trojaned)
from workbench.stats import STD, mean_std
from workbench.workers import default_workers, run_in_workers

CACHE_VERSION = 1  # bump when the models, the data or a protocol below changes
BASE = {"fraction": trojans.POISON_FRACTION, "epochs": trojans.EPOCHS,
        "batch_size": trojans.BATCH_SIZE, "lr": trojans.LR}  # training the trojaned base
FINETUNE = {"epochs": 2, "batch_size": 64, "lr": 1e-3}
AT_EPS, AT_STEPS = 0.1, 3  # AT's L-inf budget (pixel units) and PGD steps
LAT_STEPS = 6  # the reference code's default
# The sweep, and the defaults it chose (see run_lat_sweep and the notebook).
SWEEP_LAYERS = ("layer1", "layer2", "layer3")
SWEEP_FRACTIONS = (0.1, 0.3)  # latent radius / mean activation norm at the layer
# Held-out attacks: L-inf PGD just past AT's budget (at twice it, every model is at 0), L2
# PGD (a norm no method trains in), Gaussian noise; and the held-out patch.
HELDOUT = {"pgd_linf": {"eps": 1.2 * AT_EPS, "steps": 10}, "pgd_l2": {"eps": 0.5, "steps": 10},
           "noise_std": 0.3}
EVAL_IMAGES = 200  # test images the attacks run on (clean accuracy and ASR use all 450)
VALIDATION = 300  # training images held back for the sweep
TRAIN_IMAGES = None  # fine-tuning images used (None: all the others); tests use fewer
TEST_IMAGES = None  # test images used (None: all 450)


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps({"version": CACHE_VERSION, **key},
                                     sort_keys=True).encode()).hexdigest()[:16]


def digits_splits():
    """(x_train, y_train, x_val, y_val, x_test, y_test): the digits split of notebook 03 at
    16 x 16, its training images split once more into fine-tuning and validation images."""
    x_train, y_train, x_test, y_test = load_digits_split(size=DIGITS_INPUT_SIZE[1], seed=0)
    train = slice(VALIDATION, None if TRAIN_IMAGES is None else VALIDATION + TRAIN_IMAGES)
    return (x_train[train], y_train[train], x_train[:VALIDATION], y_train[:VALIDATION],
            x_test[:TEST_IMAGES], y_test[:TEST_IMAGES])


def trojaned_path(seed: int):
    """Where the trojaned base of ``seed`` is cached; the name changes with its recipe."""
    key = {"seed": seed, "trojans": [asdict(t) for t in DIGITS_TROJANS], **BASE,
           "architecture": digits_resnet().cfg.architecture,
           "images": [VALIDATION, TRAIN_IMAGES]}
    return cache_file("lat", f"trojaned-seed{seed}-{_digest(key)}.pt")


def trojaned_model(seed: int, *, cache: bool = True, progress: bool = False):
    """The trojaned base model for ``seed`` (:func:`train_trojaned`), cached."""
    path = trojaned_path(seed)
    model = digits_resnet(seed=seed)
    if not (cache and load_state(model, path)):
        x_train, y_train, *_ = digits_splits()  # not the validation images: the sweep reads them
        with torch_threads(1):  # the same weights whoever trains first (notebook, CLI, worker)
            model = train_trojaned(seed, data=(x_train, y_train), progress=progress, **BASE)
        if cache:
            save_state(model, path, what=f"trojaned digits ResNet (seed {seed})")
    return model.eval()


def finetuned_model(method: str, seed: int, perturbation: Perturbation, *, cache: bool = True,
                    progress: bool = False):
    """The trojaned base of ``seed`` fine-tuned on clean digits by ``method``, cached."""
    key = {"method": method, "seed": seed, "base": trojaned_path(seed).name, **FINETUNE,
           **({} if method == "ft" else asdict(perturbation))}
    path = cache_file("lat", f"{method}-seed{seed}-{_digest(key)}.pt")
    model = trojaned_model(seed, cache=cache, progress=progress)
    if cache and load_state(model, path):
        return model.eval()
    x_train, y_train, *_ = digits_splits()
    with torch_threads(1):
        finetune(model, x_train, y_train, method=method, perturbation=perturbation, seed=seed,
                 progress=progress, **FINETUNE)
    if cache:
        save_state(model, path, what=f"{method}-fine-tuned digits ResNet (seed {seed})")
    return model.eval()


def perturbation_for(layer: str, fraction: float, seed: int) -> Perturbation:
    """The latent ball at ``layer`` of radius ``fraction`` times the mean activation norm of
    the trojaned base there (on the fine-tuning images)."""
    x_train, *_ = digits_splits()
    eps = relative_eps(trojaned_model(seed), layer, x_train[:256], fraction)
    return Perturbation(layer=layer, eps=round(eps, 4), steps=LAT_STEPS, input_eps=AT_EPS,
                        input_steps=AT_STEPS)


def evaluate(model, x, y, *, seed: int, attacks: dict | None = None,
             trojans: Sequence[Trojan] = DIGITS_TROJANS,
             heldout_patch: Patch = DIGITS_HELDOUT_PATCH) -> dict:
    """Clean accuracy, trojan ASRs and the held-out attacks' accuracies of ``model`` on
    x (N, C, H, W), y (N,) (the digits by default); attacks' random starts and noise from
    ``seed``. ``attacks`` (default :data:`HELDOUT`), ``trojans`` and ``heldout_patch``: what
    is measured, for other images (full mode's photos, :mod:`workbench.lat.full`)."""
    attacks = HELDOUT if attacks is None else attacks
    x_eval, y_eval = x[:EVAL_IMAGES], y[:EVAL_IMAGES]
    generator = torch.Generator().manual_seed(seed)
    heldout = {}
    for name, norm in (("pgd_linf", "linf"), ("pgd_l2", "l2")):
        eps, steps = attacks[name]["eps"], attacks[name]["steps"]
        x_adv = pgd(model, x_eval, y_eval, eps=eps, steps=steps, norm=norm,
                    alpha=default_alpha(eps, steps), generator=generator).x_adv
        heldout[name] = accuracy(model, x_adv, y_eval)
    noise = torch.randn(x_eval.shape, generator=generator) * attacks["noise_std"]
    heldout["noise"] = accuracy(model, (x_eval + noise.to(x_eval.device)).clamp(0, 1), y_eval)
    heldout["patch"] = accuracy(model, heldout_patch.apply(x), y)
    asr = [attack_success_rate(model, x, y, trojan) for trojan in trojans]
    return {"seed": seed, "clean_acc": accuracy(model, x, y), "trojan_asr": statistics.fmean(asr),
            "trojan_asr_each": asr, "heldout": heldout,
            "heldout_acc": statistics.fmean(heldout.values())}


METRICS = ("clean_acc", "trojan_asr", "heldout_acc")


def summarise_runs(method: str, runs: list[dict]) -> dict:
    """One result row: ``method``, each metric's mean and ``*_std`` over the seeds' runs, the
    held-out attacks' means, and ``per_seed``."""
    row = {"method": method}
    for metric in METRICS:
        row[metric], row[f"{metric}_std"] = mean_std([r[metric] for r in runs])
    row["heldout"] = {name: statistics.fmean(r["heldout"][name] for r in runs)
                      for name in runs[0]["heldout"]}
    row["per_seed"] = [{k: r[k] for k in ("seed", *METRICS)} for r in runs]
    return row


def _cached_result(name: str, key: dict, compute, cache: bool) -> dict:
    return cached_json(cache_file("lat", f"{name}-{_digest(key)}.json"), compute, cache=cache,
                       what=f"{name} results")


# ----------------------------------------------------------------------------- running the jobs

# What a worker process must share with the caller (tests shorten them).
TUNABLE = ("BASE", "FINETUNE", "HELDOUT", "EVAL_IMAGES", "VALIDATION", "TRAIN_IMAGES",
           "TEST_IMAGES")


def _settings() -> dict:
    return {name: globals()[name] for name in TUNABLE}


def _adopt(settings: dict) -> None:
    """The caller's settings, in a worker process (which starts from the module's)."""
    globals().update(settings)


def _job(settings: dict, method: str, seed: int, layer: str, fraction: float,
         split: str) -> dict:
    """Train (or load) one model and evaluate it on the "test" or "val" split."""
    _adopt(settings)
    with torch_threads(1):
        splits = digits_splits()
        x, y = (splits[2], splits[3]) if split == "val" else (splits[4], splits[5])
        if method == "base":
            return {**evaluate(trojaned_model(seed), x, y, seed=seed), "eps": None}
        perturbation = perturbation_for(layer, fraction, seed)
        model = finetuned_model(method, seed, perturbation)
        return {**evaluate(model, x, y, seed=seed), "eps": perturbation.eps}


def _base_job(settings: dict, seed: int) -> None:
    _adopt(settings)
    with torch_threads(1):
        trojaned_model(seed)


@contextmanager
def _cache_for_this_run(cache: bool):
    """The cache to train into: the real one, or (``cache`` False) a temporary folder that
    workers share for the length of the run and that is removed after it."""
    if cache:
        yield
        return
    previous = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory(prefix="workbench-lat-") as scratch:
        os.environ[CACHE_ENV] = scratch
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = previous


def run_jobs(jobs: Sequence[tuple], *, workers: int, progress: bool, desc: str) -> list[dict]:
    """Run :func:`_job` on each (method, seed, layer, fraction, split), in ``workers``
    processes (each on one torch thread, so the numbers are those of one process) once the
    trojaned bases they need are trained; results in the order of ``jobs``."""
    settings = _settings()
    bases = [(settings, seed) for seed in sorted({job[1] for job in jobs})]
    return run_in_workers(_job, [(settings, *job) for job in jobs], workers=workers,
                          progress=progress, desc=desc,
                          first=(_base_job, bases) if workers > 1 else None)


def choose_defaults(points: Sequence[dict]) -> tuple[str, float]:
    """The sweep point LAT's experiment runs at: the largest clean accuracy plus held-out
    accuracy minus trojan success (all on the validation split; ties go to the smaller
    radius). Returns (layer, fraction)."""
    best = max(points, key=lambda p: (round(p["clean_acc"] + p["heldout_acc"]
                                            - p["trojan_asr"], 6), -p["fraction"]))
    return best["layer"], best["fraction"]


def run_lat_experiment(*, seeds: Sequence[int] = (0, 1, 2), layer: str | None = None,
                       fraction: float | None = None, cache: bool = True,
                       progress: bool = False, workers: int | None = None) -> dict:
    """FT, RLP, AT and LAT from the same trojaned base, per seed; see the module docstring.

    ``layer`` and ``fraction`` (LAT's and RLP's latent ball): by default the point
    :func:`choose_defaults` picks from :func:`run_lat_sweep`, run first on the validation
    split. ``workers``: processes to train in (default :func:`default_workers`); the numbers
    do not depend on it.

    Returns:
        ``{"seeds", "std", "layer", "fraction", "chosen_by", "rows", "sweep"}``: one row per
        method (and ``base``, the trojaned model before fine-tuning) with ``clean_acc``,
        ``trojan_asr``, ``heldout_acc`` (means over seeds) and their ``*_std`` (sample
        standard deviations), ``heldout`` (each held-out attack's mean accuracy) and
        ``per_seed``; ``sweep`` is :func:`run_lat_sweep`'s result (None when ``layer`` and
        ``fraction`` are given).
    """
    workers = default_workers() if workers is None else workers
    sweep = None
    with _cache_for_this_run(cache):
        if layer is None or fraction is None:
            sweep = _sweep(0, SWEEP_LAYERS, SWEEP_FRACTIONS, cache=cache, progress=progress,
                           workers=workers)
            layer, fraction = choose_defaults(sweep["points"])
        result = _experiment(seeds, layer, fraction, cache=cache, progress=progress,
                             workers=workers)
    return {**result, "chosen_by": "sweep" if sweep else "caller", "sweep": sweep}


def _experiment(seeds, layer: str, fraction: float, *, cache: bool, progress: bool,
                workers: int) -> dict:
    key = {"seeds": list(seeds), "layer": layer, "fraction": fraction, **FINETUNE,
           "heldout": HELDOUT, "images": [EVAL_IMAGES, TRAIN_IMAGES, TEST_IMAGES],
           "base": [trojaned_path(s).name for s in seeds]}
    methods = ("base", *METHODS)

    def compute():
        jobs = [(m, seed, layer, fraction, "test") for seed in seeds for m in methods]
        scores = iter(run_jobs(jobs, workers=workers, progress=progress, desc="models"))
        runs = {m: [] for m in methods}
        for _ in seeds:
            for m in methods:
                runs[m].append(next(scores))
        return {"seeds": list(seeds), "std": STD, "layer": layer, "fraction": fraction,
                "rows": [summarise_runs(m, runs[m]) for m in methods]}

    return _cached_result("experiment", key, compute, cache)


def run_lat_sweep(*, seed: int = 0, layers: Sequence[str] = SWEEP_LAYERS,
                  fractions: Sequence[float] = SWEEP_FRACTIONS, cache: bool = True,
                  progress: bool = False, workers: int | None = None) -> dict:
    """LAT at every layer and radius of the grid, from seed ``seed``'s trojaned base, measured
    on the validation split (so the defaults are not chosen on the test set).

    Returns ``{"seed", "layers", "fractions", "points": [{"layer", "fraction", "eps",
    "clean_acc", "trojan_asr", "heldout_acc"}]}``."""
    with _cache_for_this_run(cache):
        return _sweep(seed, layers, fractions, cache=cache, progress=progress,
                      workers=default_workers() if workers is None else workers)


def _sweep(seed: int, layers, fractions, *, cache: bool, progress: bool, workers: int) -> dict:
    key = {"seed": seed, "layers": list(layers), "fractions": list(fractions), **FINETUNE,
           "heldout": HELDOUT, "images": [EVAL_IMAGES, TRAIN_IMAGES, VALIDATION],
           "base": trojaned_path(seed).name}

    def compute():
        grid = [(layer, fraction) for layer in layers for fraction in fractions]
        jobs = [("lat", seed, layer, fraction, "val") for layer, fraction in grid]
        scores = run_jobs(jobs, workers=workers, progress=progress, desc="sweep")
        return {"seed": seed, "layers": list(layers), "fractions": list(fractions),
                "points": [{"layer": layer, "fraction": fraction, "eps": s["eps"],
                            **{m: s[m] for m in METRICS}}
                           for (layer, fraction), s in zip(grid, scores)]}

    return _cached_result("sweep", key, compute, cache)


def format_lat_table(result: dict) -> str:
    """``run_lat_experiment``'s result as text: one line per method, then the sweep."""
    head = f"{'method':<7} {'clean acc':>15}   {'trojan ASR':>15}   {'held-out acc':>15}"
    chosen = " (chosen by the sweep below)" if result.get("chosen_by") == "sweep" else ""
    lines = [f"LAT and RLP at {result['layer']}, radius {result['fraction']} x the mean "
             f"activation norm{chosen}; seeds {result['seeds']} (mean ± {result['std']})",
             head, "-" * len(head)]
    for row in result["rows"]:
        cells = [f"{row[m]:.3f} ± {row[f'{m}_std']:.3f}" for m in METRICS]
        lines.append(f"{row['method']:<7} " + "   ".join(f"{c:>15}" for c in cells))
    lines += ["", "held-out attacks, accuracy of each (mean over seeds):"]
    for row in result["rows"]:
        lines.append(f"{row['method']:<7} " + "  ".join(
            f"{name} {value:.3f}" for name, value in row["heldout"].items()))
    if result.get("sweep"):
        lines += ["", f"sweep of LAT (seed {result['sweep']['seed']}, validation split):",
                  f"{'layer':<8} {'radius':>6} {'clean':>6} {'ASR':>6} {'held-out':>8}"]
        for p in result["sweep"]["points"]:
            lines.append(f"{p['layer']:<8} {p['fraction']:>6} {p['clean_acc']:>6.3f} "
                         f"{p['trojan_asr']:>6.3f} {p['heldout_acc']:>8.3f}")
    return "\n".join(lines)
