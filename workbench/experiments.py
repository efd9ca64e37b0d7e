"""Experiments that train several models and compare them: the numbers notebook 03 shows and
``workbench experiment advprop`` prints.

Trained weights are cached under ``cache_dir() / "digits"``, one file per method, seed and set
of hyper-parameters, and so is the experiment's result, so a second call reads it. The models
train and are evaluated in worker processes (:mod:`workbench.workers`), one job per method and
seed. Everything runs on one intra-op torch thread (the caller's setting is restored
afterwards): floating-point sums then come out the same whatever thread count the notebook
kernel, the command line or the tests use, so all three print the same numbers; for these
tiny batches one thread is also the fastest on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
from pathlib import Path
from typing import Sequence

from workbench.cache import cache_file, cached_json, load_state, save_state, training_lock
from workbench.config import torch_threads
from workbench.data.digits import load_digits_split
from workbench.defenses.evaluation import accuracy, robustness_curve
from workbench.defenses.worst_case import evaluate_robustness
from workbench.defenses.models import digits_cnn
from workbench.defenses.training import BATCH_SIZE, EPOCHS, EPS, LR, METHODS, STEPS, train
from workbench.stats import STD, mean_std
from workbench.workers import default_workers, run_in_workers

# Bump when digits_cnn, the training loop or the data split changes: old cache files are
# then ignored instead of loaded into a model they no longer describe.
CACHE_VERSION = 1
RESULTS_VERSION = 1  # bump when the evaluation (_evaluate, _summarise) changes
HYPERPARAMS = {"epochs": EPOCHS, "batch_size": BATCH_SIZE, "lr": LR, "eps": EPS, "alpha": None,
               "steps": STEPS}
ATTACK_KEYS = ("eps", "alpha", "steps")  # the training attack's settings, unused by "standard"
CURVE_EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)  # pixel units, images in [0, 1]


def _hyperparams(method: str, hp: dict) -> dict:
    """``HYPERPARAMS`` updated with ``hp``; ValueError for an unknown method or keyword."""
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; choose one of {METHODS}")
    unknown = sorted(set(hp) - set(HYPERPARAMS))
    if unknown:
        raise ValueError(f"unknown hyper-parameters {unknown}; known: {sorted(HYPERPARAMS)}")
    return {**HYPERPARAMS, **hp}


def _training_key(method: str, seed: int, hp: dict) -> dict:
    """What determines the trained weights: the attack's settings only where one is used."""
    if method == "standard":
        hp = {k: v for k, v in hp.items() if k not in ATTACK_KEYS}
    return {"method": method, "seed": seed, **hp}


def _digest(key: dict) -> str:
    """16 hex digits naming a cache file after what determines its content."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(method: str, seed: int, **hp) -> Path:
    """Where ``train_or_load`` keeps the weights for this method, seed and hyper-parameters:
    ``cache_dir() / "digits" / "<method>-seed<seed>-<hash>.pt"``. Standard training ignores
    the attack's settings, so its file does not depend on them."""
    key = {"version": CACHE_VERSION, **_training_key(method, seed, _hyperparams(method, hp))}
    return cache_file("digits", f"{method}-seed{seed}-{_digest(key)}.pt")


def train_or_load(method: str, seed: int = 0, *, cache: bool = True, progress: bool = False,
                  **hp):
    """A ``digits_cnn`` trained with ``method`` from ``seed``, loaded from the cache if there.

    Args:
        method: "standard", "advprop" (the model gets dual BN) or "pgd_at".
        seed: seeds the initial weights, the shuffling and the training attack.
        cache: read and write ``cache_path(method, seed, **hp)``; False trains afresh and
            writes nothing. An unreadable cache file is trained again and overwritten; a
            cache that cannot be written (read-only, full disk, ``$WORKBENCH_CACHE`` naming a
            file) gets a warning, and the model trained is returned all the same.
        progress: show the training progress bar.
        **hp: hyper-parameters of :func:`workbench.defenses.train` (epochs, batch_size, lr,
            eps, alpha, steps); defaults in ``HYPERPARAMS``.

    Returns:
        The trained :class:`Classifier` in eval mode, on the CPU, trained (on one torch
        thread, see the module's docstring) on the default ``load_digits_split()`` training
        set; ``.source`` says how it was trained.
    """
    hp = _hyperparams(method, hp)
    model = digits_cnn(dual_bn=method == "advprop", seed=seed)
    path = cache_path(method, seed, **hp)
    with training_lock(path) if cache else contextlib.nullcontext():  # one trainer at a time
        if not (cache and load_state(model, path)):
            x_train, y_train, _, _ = load_digits_split()
            with torch_threads(1):
                train(model, x_train, y_train, method=method, seed=seed, progress=progress,
                      **hp)
            if cache:
                save_state(model, path, what=f"digits_cnn ({method}, seed {seed})")
    model.eval()
    settings = ", ".join(f"{k} {v}" for k, v in _training_key(method, seed, hp).items()
                         if k != "method" and v is not None)
    model.source = (f"digits_cnn trained here with {method} ({settings}) on scikit-learn's "
                    f"digits at 16 x 16.")
    return model


def _evaluate(model, x, y, *, eps: float, epsilons: Sequence[float], seed: int) -> dict:
    """Of one model on x (N, 1, 16, 16), y (N,): clean accuracy, robust accuracy at eps (the
    worst case over PGD-10 and APGD, :func:`evaluate_robustness`), PGD-10's alone, and FGSM /
    PGD-10 curves over epsilons; random starts from ``seed``."""
    grid = sorted({*epsilons, eps})
    pgd_acc = dict(zip(grid, robustness_curve(model, x, y, grid, "pgd", seed=seed)))
    strong = evaluate_robustness(model, x, y, eps=eps, seed=seed)
    return {"seed": seed, "clean_acc": accuracy(model, x, y), "robust_acc": strong.robust_acc,
            "pgd10_acc": pgd_acc[eps], "robust_attack": strong.description,
            "fgsm_curve": robustness_curve(model, x, y, epsilons, "fgsm", seed=seed),
            "pgd_curve": [pgd_acc[e] for e in epsilons]}


def _summarise(method: str, runs: list[dict], epsilons: Sequence[float]) -> dict:
    """One result row: means and standard deviations over the seeds' runs."""
    clean, clean_std = mean_std([r["clean_acc"] for r in runs])
    robust, robust_std = mean_std([r["robust_acc"] for r in runs])
    weak, weak_std = mean_std([r["pgd10_acc"] for r in runs])
    return {"method": method, "clean_acc": clean, "clean_acc_std": clean_std,
            "robust_acc": robust, "robust_acc_std": robust_std,
            "pgd10_acc": weak, "pgd10_acc_std": weak_std,
            "per_seed": [{k: r[k] for k in ("seed", "clean_acc", "robust_acc", "pgd10_acc")}
                         for r in runs],
            "curve_eps": list(epsilons),
            "fgsm_curve": [statistics.fmean(c) for c in zip(*(r["fgsm_curve"] for r in runs))],
            "pgd_curve": [statistics.fmean(c) for c in zip(*(r["pgd_curve"] for r in runs))]}


def _model_job(method: str, seed: int, epochs: int, eps: float, epsilons: tuple,
               cache: bool) -> dict:
    """One method and seed: train (or load) the model and evaluate it on the test split (a
    worker's job, on one torch thread)."""
    _, _, x_test, y_test = load_digits_split()
    with torch_threads(1):
        model = train_or_load(method, seed, cache=cache, epochs=epochs, eps=eps)
        return _evaluate(model, x_test, y_test, eps=eps, epsilons=epsilons, seed=seed)


def run_advprop_experiment(*, seeds: Sequence[int] = (0, 1, 2), epochs: int = EPOCHS,
                           eps: float = EPS, epsilons: Sequence[float] = CURVE_EPS,
                           cache: bool = True, progress: bool = False,
                           workers: int | None = None) -> dict:
    """Standard vs AdvProp vs PGD-AT on the digits: train (or load) each method per seed,
    evaluate on the held-out split of ``load_digits_split()`` (450 images).

    Args:
        seeds: one model per method and seed. epochs: training epochs.
        eps: the headline L-inf budget (pixel units): the training attack's budget for AdvProp
            and PGD-AT, and the budget of ``robust_acc`` (worst case per example over PGD-10,
            APGD-CE-100 and APGD-DLR-100) and of ``pgd10_acc`` (PGD-10 alone).
        epsilons: the budgets of the FGSM and PGD-10 robustness curves.
        cache: load and store trained weights (see :func:`train_or_load`) and the result
            (``cache_dir() / "digits" / "advprop-<hash>.json"``); False: train and evaluate
            afresh, write nothing.
        progress: a progress bar over the models.
        workers: processes to train and evaluate in (default
            :func:`~workbench.workers.default_workers`); the numbers do not depend on it.

    Returns:
        ``{"eps", "seeds", "std", "robust_attack", "rows"}``, ``robust_attack`` saying which
        attacks, steps and budget ``robust_acc`` is the worst case over; one row per method:
        ``method``, ``clean_acc``, ``robust_acc`` and ``pgd10_acc`` (means over seeds, in
        [0, 1]) with ``*_std`` (sample standard deviations, ``"std"`` says so; see
        :mod:`workbench.stats`), ``per_seed`` (``seed``, ``clean_acc``, ``robust_acc``,
        ``pgd10_acc``), ``curve_eps`` and the mean ``fgsm_curve`` and ``pgd_curve`` (PGD-10
        accuracy at each eps of ``curve_eps``).
    """
    seeds, epsilons = list(seeds), tuple(epsilons)
    jobs = [(method, seed, epochs, eps, epsilons, cache) for method in METHODS for seed in seeds]

    def compute() -> dict:
        evaluated = run_in_workers(_model_job, jobs, desc="models", progress=progress,
                                   workers=default_workers() if workers is None else workers)
        runs = {method: [run for job, run in zip(jobs, evaluated) if job[0] == method]
                for method in METHODS}
        return {"eps": eps, "seeds": seeds, "std": STD,
                "robust_attack": runs[METHODS[0]][0]["robust_attack"],
                "rows": [_summarise(method, runs[method], epsilons) for method in METHODS]}

    key = {"version": CACHE_VERSION, "results": RESULTS_VERSION, "seeds": seeds,
           "epochs": epochs, "eps": eps, "epsilons": list(epsilons)}
    return cached_json(cache_file("digits", f"advprop-{_digest(key)}.json"), compute, cache=cache,
                       what="advprop experiment results")


def format_table(result: dict) -> str:
    """``run_advprop_experiment``'s result as a text table, one line per method."""
    head = (f"{'method':<10} {'clean acc':>15}   {'robust acc':>15}   {'PGD-10 alone':>15}")
    lines = [head, "-" * len(head)]
    for row in result["rows"]:
        lines.append(f"{row['method']:<10} {row['clean_acc']:>7.3f} ± {row['clean_acc_std']:.3f}"
                     f"   {row['robust_acc']:>7.3f} ± {row['robust_acc_std']:.3f}"
                     f"   {row['pgd10_acc']:>7.3f} ± {row['pgd10_acc_std']:.3f}")
    lines.append(f"robust acc: {result['robust_attack']}")
    lines.append(f"means ± sample std over seeds {result['seeds']}; test split of 450 digits")
    return "\n".join(lines)

