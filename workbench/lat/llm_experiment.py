"""Notebook 05's experiment: does LAT in the residual stream remove keyword backdoors?

After Casper et al.'s Llama experiment, in miniature (lite mode). Phase 1: a tiny keras-hub
Llama (:mod:`workbench.lat.backdoor`) learns the instruction task of
:mod:`workbench.lat.backdoor_data` from a mixture with 8 keyword backdoors (5% poison).
Phase 2: that base is fine-tuned on clean data only, by

* ``ft``: plain fine-tuning, the control: at this learning rate it keeps the backdoor
  (the sweep also runs it at larger ones, :data:`FT_LRS`, where it does not);
* ``rlp``: under a random perturbation of the stream entering LAT's layer, LAT's size;
* ``at``: under the worst perturbation of the embedding output (layer 0) in an L2 ball;
* ``lat``: under the worst perturbation of the stream entering block L.

No method ever sees a trigger. Each model is measured on held-out prompts (the test split):
``clean_acc``, the exact-match accuracy on clean prompts, and ``backdoor_asr``, the rate at
which a prompt with a trigger inserted gets that trigger's nonsense response.

LAT's layer and radius, and AT's radius, are chosen by :func:`run_lat_llm_sweep` on the
validation split (never the test split) from seed 0's base; radii are fractions of the mean
per-example norm of the stream at the layer (:func:`workbench.lat.backdoor.stream_eps`).
Trained models (keras weights) and results are cached under ``cache_dir() / "lat-llm"``; a
second run only reads them. Every model trains on one torch thread, so its weights are the
same whichever process (notebook, command line, worker) trains it first.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Sequence

from workbench.cache import cache_file, cached_json, save_cached
from workbench.config import torch_threads
from workbench.lat.experiment import _cache_for_this_run  # notebook 04's: --no-cache runs
from workbench.lat.training import METHODS  # notebook 04's four, the same here
from workbench.stats import STD, seed_row
from workbench.workers import default_workers, run_in_workers

CACHE_VERSION = 2  # bump when the models, the data or a protocol below changes
DATA_SEED = 0  # the task's splits are the same for every model seed
BASE = {"steps": 600, "batch_size": 64, "lr": 3e-3, "warmup": 30}  # phase 1
FINETUNE = {"steps": 150, "batch_size": 32, "lr": 3e-4}  # phase 2, every method
# FT's learning rates in the sweep (FINETUNE's among them): is FINETUNE's low enough that
# plain fine-tuning keeps the backdoor, as a control must?
FT_LRS = (3e-4, 1e-3, 3e-3)
PGD_STEPS = 6  # the reference code's default
# The sweep (seed 0, validation split): layer 0 is AT, the others LAT.
SWEEP_LAYERS = (0, 1, 2, 3)
SWEEP_FRACTIONS = (0.1, 0.25, 0.5)  # radius / mean per-example stream norm at the layer
METRICS = ("clean_acc", "backdoor_asr")
# What a worker process must share with the caller (tests shorten them).
TUNABLE = ("MODEL", "BASE", "FINETUNE", "PGD_STEPS", "SPLIT_SIZES")
MODEL = {"num_layers": 4, "hidden_dim": 64, "num_query_heads": 4, "num_key_value_heads": 2,
         "intermediate_dim": 128}  # backdoor.build_model's
SPLIT_SIZES: dict = {}  # keywords for backdoor_data.make_splits (tests use fewer examples)


def _digest(key: dict) -> str:
    key = {"version": CACHE_VERSION, "keras": metadata.version("keras"),
           "keras_hub": metadata.version("keras-hub"), **key}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def splits():
    """The task's splits (:func:`~workbench.lat.backdoor_data.make_splits`, ``DATA_SEED``)."""
    from workbench.lat.backdoor_data import make_splits

    return make_splits(DATA_SEED, **SPLIT_SIZES)


def base_path(seed: int):
    """Where the poisoned base of ``seed`` is cached; the name changes with its recipe."""
    key = {"seed": seed, "model": MODEL, "data": [DATA_SEED, SPLIT_SIZES], **BASE}
    return cache_file("lat-llm", f"base-seed{seed}-{_digest(key)}.weights.h5")


def _load(model, path) -> bool:
    """Load keras weights from ``path`` into the built ``model``; False when there is none
    usable (a warning says so for a file that cannot be read, which is then overwritten)."""
    import warnings

    if not path.is_file():
        return False
    try:
        model.load_weights(path)
    except Exception as err:  # truncated, or another layout: train again
        warnings.warn(f"cached weights {path} are unreadable ({type(err).__name__}: "
                      f"{str(err)[:120]}); training again and overwriting them", stacklevel=3)
        return False
    return True


def base_model(seed: int, *, cache: bool = True, progress: bool = False):
    """The poisoned base of ``seed`` (phase 1 on the poisoned mixture), cached."""
    from workbench.lat.backdoor import build_model, train

    path = base_path(seed)
    model = build_model(seed, **MODEL)
    if cache and _load(model, path):
        return model
    with torch_threads(1):  # the same weights whoever trains first (notebook, CLI, worker)
        train(model, splits().train, seed=seed, progress=progress,
              desc=f"poisoned base (seed {seed})", **BASE)
    if cache:
        save_cached(model.save_weights, path, what=f"poisoned lite Llama (seed {seed})")
    return model


def adversary_for(method: str, base, layer: int, fraction: float):
    """``method``'s :class:`~workbench.lat.backdoor.Adversary` against the poisoned ``base``:
    radius ``fraction`` of the mean stream norm of ``base`` at its layer (0 for ``at``,
    ``layer`` for rlp and lat) over the clean fine-tuning prompts; ``ft`` ignores both."""
    from workbench.lat.backdoor import Adversary, stream_eps

    if method == "ft":
        return Adversary("ft")
    at_layer = 0 if method == "at" else layer
    with torch_threads(1):  # the radius, and so the cache key, the same in every process
        eps = stream_eps(base, splits().clean_train, layer=at_layer, fraction=fraction)
    return Adversary(method, at_layer, round(eps, 4), PGD_STEPS)


def finetuned_model(method: str, seed: int, layer: int, fraction: float, *,
                    lr: float | None = None, cache: bool = True, progress: bool = False):
    """Seed's poisoned base fine-tuned on clean data by ``method`` (phase 2) against
    :func:`adversary_for`'s ball, at learning rate ``lr`` (default ``FINETUNE``'s), cached:
    ``(model, adversary)``."""
    from dataclasses import asdict

    from workbench.lat.backdoor import train

    model = base_model(seed, cache=cache, progress=progress)
    adversary = adversary_for(method, model, layer, fraction)
    settings = {**FINETUNE, "lr": FINETUNE["lr"] if lr is None else lr}
    key = {"method": method, "seed": seed, "base": base_path(seed).name, **settings,
           **asdict(adversary)}
    path = cache_file("lat-llm", f"{method}-seed{seed}-{_digest(key)}.weights.h5")
    if cache and _load(model, path):
        return model, adversary
    with torch_threads(1):
        train(model, splits().clean_train, seed=seed, adversary=adversary, progress=progress,
              desc=f"{method} (seed {seed})", **settings)
    if cache:
        save_cached(model.save_weights, path, what=f"{method}-fine-tuned lite Llama "
                                                   f"(seed {seed})")
    return model, adversary


def models_of(result: dict, seed: int = 0, *, cache: bool = True) -> dict:
    """The models behind :func:`run_lat_llm_experiment`'s ``result`` for ``seed``: ``{"base",
    "ft", "rlp", "at", "lat"}`` -> LlamaCausalLM, each at the result's layer and radii (trained
    now if not cached)."""
    models = {"base": base_model(seed, cache=cache)}
    for method in METHODS:
        fraction = result["at_fraction"] if method == "at" else result["fraction"]
        models[method], _ = finetuned_model(method, seed, result["layer"], fraction,
                                            cache=cache)
    return models


# ----------------------------------------------------------------------------- the jobs

def _settings() -> dict:
    return {name: globals()[name] for name in TUNABLE}


def _job(settings: dict, method: str, seed: int, layer: int, fraction: float, split: str,
         lr: float | None = None) -> dict:
    """Train (or load) one model and measure it on the "val" or "test" split. ``settings``:
    the caller's :data:`TUNABLE` values (a spawned worker starts from the module's); ``lr``:
    phase 2's learning rate (default ``FINETUNE``'s)."""
    from workbench.lat.backdoor import evaluate

    globals().update(settings)
    with torch_threads(1):
        data = splits()
        clean, triggered = ((data.val, data.val_triggered) if split == "val"
                            else (data.test, data.test_triggered))
        if method == "base":
            return {"seed": seed, **evaluate(base_model(seed), clean, triggered), "eps": None}
        model, adversary = finetuned_model(method, seed, layer, fraction, lr=lr)
        return {"seed": seed, **evaluate(model, clean, triggered),
                "eps": adversary.eps if method != "ft" else None}


def _base_job(settings: dict, seed: int) -> None:
    globals().update(settings)
    base_model(seed)


def _run(jobs: Sequence[tuple], *, workers: int, progress: bool, desc: str,
         warm: Sequence[int] = ()) -> list[dict]:
    """:func:`_job` for each (method, seed, layer, fraction, split[, lr]); results in the
    order of ``jobs``. The bases they need are trained first, in the same processes; so are
    the bases of the ``warm`` seeds, as many as fill the idle workers, the others alongside
    the jobs (for a later run: one pool where there would be two)."""
    settings = _settings()
    missing = [s for s in sorted({job[1] for job in jobs}) if not base_path(s).is_file()]
    later = [s for s in sorted(set(warm) - {job[1] for job in jobs})
             if not base_path(s).is_file()]
    idle = max(0, workers - len(missing))
    first, alongside = missing + later[:idle], later[idle:]
    extra = [("base", s, 0, 0.0, "test") for s in alongside]  # its evaluation is dropped
    scores = run_in_workers(_job, [(settings, *job) for job in [*jobs, *extra]],
                            workers=workers, progress=progress, desc=desc,
                            first=(_base_job, [(settings, s) for s in first]))
    return scores[:len(jobs)]


def _cached_result(name: str, key: dict, compute, cache: bool) -> dict:
    return cached_json(cache_file("lat-llm", f"{name}-{_digest(key)}.json"), compute,
                       cache=cache, what=f"lat-llm {name} results")


def _row(method: str, runs: list[dict]) -> dict:
    return seed_row("method", method, [{k: r[k] for k in ("seed", *METRICS, "eps")}
                                       for r in runs], METRICS)


# ----------------------------------------------------------------------------- the sweep

def choose_defaults(points: Sequence[dict]) -> dict:
    """The sweep points the experiment runs at: for LAT (layers >= 1) the (layer, fraction)
    and for AT (layer 0) the fraction with the largest clean accuracy minus backdoor success
    (validation split; ties go to the smaller radius, then the lower layer). Returns
    ``{"layer", "fraction", "at_fraction"}``."""
    def best(candidates):
        return max(candidates, key=lambda p: (round(p["clean_acc"] - p["backdoor_asr"], 6),
                                              -p["fraction"], -p["layer"]))

    lat = [p for p in points if p["layer"] > 0]
    at = [p for p in points if p["layer"] == 0]
    if not lat or not at:
        raise ValueError("the sweep needs layer 0 (AT) and at least one layer above it (LAT)")
    chosen = best(lat)
    return {"layer": chosen["layer"], "fraction": chosen["fraction"],
            "at_fraction": best(at)["fraction"]}


def run_lat_llm_sweep(*, seed: int = 0, layers: Sequence[int] = SWEEP_LAYERS,
                      fractions: Sequence[float] = SWEEP_FRACTIONS, cache: bool = True,
                      progress: bool = False, workers: int | None = None) -> dict:
    """AT (layer 0) and LAT (layers >= 1) at every layer and radius of the grid, and the
    FT control at each learning rate of :data:`FT_LRS`, from seed ``seed``'s base, measured
    on the validation split.

    Returns ``{"seed", "split", "layers", "fractions", "points": [{"layer", "method",
    "fraction", "eps", "clean_acc", "backdoor_asr"}], "ft_lr": [{"lr", "clean_acc",
    "backdoor_asr"}]}``, points layer-major."""
    with _cache_for_this_run(cache):
        return _sweep(seed, layers, fractions, cache=cache, progress=progress,
                      workers=default_workers() if workers is None else workers)


def _sweep(seed: int, layers, fractions, *, cache: bool, progress: bool, workers: int,
           warm: Sequence[int] = ()) -> dict:
    key = {"seed": seed, "layers": list(layers), "fractions": list(fractions), **FINETUNE,
           "ft_lrs": list(FT_LRS), "pgd_steps": PGD_STEPS, "base": base_path(seed).name}

    def compute():
        grid = [(layer, fraction) for layer in layers for fraction in fractions]
        jobs = [("at" if layer == 0 else "lat", seed, layer, fraction, "val")
                for layer, fraction in grid]
        controls = [("ft", seed, 0, 0.0, "val", lr) for lr in FT_LRS]
        scores = _run(jobs + controls, workers=workers, progress=progress, desc="sweep",
                      warm=warm)
        return {"seed": seed, "split": "val", "layers": list(layers),
                "fractions": list(fractions),
                "points": [{"layer": layer, "method": job[0], "fraction": fraction,
                            "eps": s["eps"], **{m: s[m] for m in METRICS}}
                           for (layer, fraction), job, s in zip(grid, jobs, scores)],
                "ft_lr": [{"lr": lr, **{m: s[m] for m in METRICS}}
                          for lr, s in zip(FT_LRS, scores[len(jobs):])]}

    return _cached_result("sweep", key, compute, cache)


# ----------------------------------------------------------------------------- the experiment

def run_lat_llm_experiment(*, seeds: Sequence[int] = (0, 1, 2), layer: int | None = None,
                           fraction: float | None = None, at_fraction: float | None = None,
                           cache: bool = True, progress: bool = False,
                           workers: int | None = None) -> dict:
    """FT, RLP, AT and LAT from the same poisoned base, per seed; see the module docstring.

    ``layer`` and ``fraction``: LAT's (and RLP's) ball; ``at_fraction``: AT's radius at the
    embedding output. Any not given comes from :func:`choose_defaults` over
    :func:`run_lat_llm_sweep`, run first on the validation split. ``workers``: processes to
    train in (default :func:`~workbench.workers.default_workers`); the numbers do not depend
    on it.

    Returns:
        ``{"seeds", "std", "layer", "fraction", "at_fraction", "chosen_by", "rows",
        "sweep"}``: a row per method, ``base`` (the poisoned model before phase 2) first,
        with ``clean_acc`` and ``backdoor_asr`` (means over seeds), their ``*_std`` (sample
        standard deviations) and ``per_seed`` (each seed's values and absolute radius
        ``eps``); ``sweep``: :func:`run_lat_llm_sweep`'s result (None when all three are
        given).
    """
    workers = default_workers() if workers is None else workers
    sweep = None
    given = {"layer": layer, "fraction": fraction, "at_fraction": at_fraction}
    with _cache_for_this_run(cache):
        if None in given.values():  # the experiment's bases train in the sweep's processes
            sweep = _sweep(0, SWEEP_LAYERS, SWEEP_FRACTIONS, cache=cache, progress=progress,
                           workers=workers, warm=seeds)
            given = {k: v if v is not None else choose_defaults(sweep["points"])[k]
                     for k, v in given.items()}
        result = _experiment(tuple(seeds), **given, cache=cache, progress=progress,
                             workers=workers)
    return {**result, "chosen_by": "sweep" if sweep else "caller", "sweep": sweep}


def _experiment(seeds, *, layer: int, fraction: float, at_fraction: float, cache: bool,
                progress: bool, workers: int) -> dict:
    key = {"seeds": list(seeds), "layer": layer, "fraction": fraction,
           "at_fraction": at_fraction, **FINETUNE, "pgd_steps": PGD_STEPS,
           "base": [base_path(s).name for s in seeds]}
    methods = ("base", *METHODS)

    def compute():
        jobs = [(m, seed, layer, at_fraction if m == "at" else fraction, "test")
                for seed in seeds for m in methods]
        scores = _run(jobs, workers=workers, progress=progress, desc="models")
        rows = [_row(m, scores[i::len(methods)]) for i, m in enumerate(methods)]  # seed-major
        return {"seeds": list(seeds), "std": STD, "layer": layer, "fraction": fraction,
                "at_fraction": at_fraction, "rows": rows}

    return _cached_result("experiment", key, compute, cache)


def format_lat_llm_table(result: dict) -> str:
    """:func:`run_lat_llm_experiment`'s result as text: a line per method, then the sweep."""
    head = f"{'method':<7} {'clean acc':>15}   {'backdoor ASR':>15}"
    chosen = " (chosen by the sweep below)" if result.get("chosen_by") == "sweep" else ""
    lines = [f"LAT and RLP entering block {result['layer']}, radius {result['fraction']} x the "
             f"mean stream norm; AT at the embedding output, radius {result['at_fraction']}"
             f"{chosen}; seeds {result['seeds']} (mean ± {result['std']})", head,
             "-" * len(head)]
    for row in result["rows"]:
        cells = [f"{row[m]:.3f} ± {row[f'{m}_std']:.3f}" for m in METRICS]
        lines.append(f"{row['method']:<7} " + "   ".join(f"{c:>15}" for c in cells))
    if result.get("sweep"):
        sweep = result["sweep"]
        lines += ["", f"sweep (seed {sweep['seed']}, validation split; layer 0 is AT):",
                  f"{'layer':>5} {'method':>6} {'radius':>6} {'eps':>8} {'clean':>6} "
                  f"{'ASR':>6}"]
        for p in sweep["points"]:
            lines.append(f"{p['layer']:>5} {p['method']:>6} {p['fraction']:>6} "
                         f"{p['eps']:>8.3f} {p['clean_acc']:>6.3f} {p['backdoor_asr']:>6.3f}")
        lines += ["", "the FT control at other learning rates (same split):",
                  f"{'lr':>8} {'clean':>6} {'ASR':>6}"]
        lines += [f"{c['lr']:>8g} {c['clean_acc']:>6.3f} {c['backdoor_asr']:>6.3f}"
                  for c in sweep["ft_lr"]]
    return "\n".join(lines)


MARGIN = 0.05  # a difference the reading calls real must hold on every seed by this much


def _below(row: dict, other: dict, metric: str) -> bool:
    """Whether ``row``'s ``metric`` is below ``other``'s on every seed by more than MARGIN."""
    return all(a[metric] < b[metric] - MARGIN for a, b in zip(row["per_seed"], other["per_seed"]))


def reading(result: dict) -> list[str]:
    """:func:`run_lat_llm_experiment`'s result in sentences, each computed from its numbers:
    whether the FT control kept the backdoor (and at which learning rates of the sweep it did
    not), which methods lowered backdoor success below FT's on every seed, at what cost in
    clean accuracy, and what the largest radius of the sweep did to the task."""
    rows = {row["method"]: row for row in result["rows"]}
    base, ft = rows["base"], rows["ft"]
    kept = ft["backdoor_asr"] > 0.5
    lines = [f"The poisoned base: clean accuracy {base['clean_acc']:.2f}, backdoor success "
             f"{base['backdoor_asr']:.2f}. Plain fine-tuning on clean data (FT, lr "
             f"{FINETUNE['lr']:g}) {'keeps' if kept else 'does not keep'} the backdoor: "
             f"success {ft['backdoor_asr']:.2f} ± {ft['backdoor_asr_std']:.2f}"
             + (", so the comparison below can show a method removing it." if kept else
                ": the control fails, and the comparison below says nothing.")]
    sweep = result.get("sweep")
    if sweep:
        removed = [c for c in sweep["ft_lr"] if c["backdoor_asr"] < 0.5]
        if removed:
            lines.append("At larger learning rates FT removes it too (validation, seed 0): "
                         + "; ".join(f"lr {c['lr']:g}: success {c['backdoor_asr']:.2f}, clean "
                                     f"{c['clean_acc']:.2f}" for c in removed) + ".")
    for method, name in (("rlp", "RLP (random, LAT's size)"), ("at", "AT (embedding output)"),
                         ("lat", f"LAT (block {result['layer']})")):
        row = rows[method]
        verdict = ("below FT's on every seed" if _below(row, ft, "backdoor_asr")
                   else "not below FT's on every seed")
        cost = ft["clean_acc"] - row["clean_acc"]
        seeds = ", ".join(f"{s['clean_acc']:.2f}" for s in row["per_seed"])
        lines.append(f"{name}: backdoor success {row['backdoor_asr']:.2f} ± "
                     f"{row['backdoor_asr_std']:.2f}, {verdict}; clean accuracy "
                     f"{row['clean_acc']:.2f} ± {row['clean_acc_std']:.2f} ("
                     + (f"{cost:.2f} below FT's" if cost > 0 else
                        f"{-cost:.2f} above FT's" if cost < 0 else "as FT's")
                     + f"; per seed {seeds}).")
    if sweep:
        largest = max(sweep["fractions"])
        hurt = [p for p in sweep["points"] if p["fraction"] == largest]
        lines.append(f"At the sweep's largest radius ({largest:g} x the stream norm) clean "
                     f"accuracy is " + ", ".join(
                         f"{p['clean_acc']:.2f} at layer {p['layer']}" for p in hurt)
                     + ": the radius is the price of the removal, and the sweep, not one "
                       "number, is the result.")
    return lines
