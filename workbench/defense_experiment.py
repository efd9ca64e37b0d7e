"""Notebook 07's experiment: defences beyond adversarial training, each attacked the naive way
and the adaptive way (Athalye, Carlini and Wagner, 2018; Tramer et al., 2020).

On scikit-learn's digits with notebook 03's CNN, per seed:

* ``none``: the standard model (notebook 03's ``train_or_load("standard", seed)``);
* ``feature_squeezing``: it behind :data:`SQUEEZE` (bit depth, then a median filter);
* ``distillation``: a student distilled at temperature T from a teacher trained at T, served
  at T = 1;
* ``reconstruction``: the standard model behind a denoising autoencoder (MagNet's reformer);
* ``adversarial_training``: notebook 03's PGD-AT model.

Each is measured on the test split at one L-inf budget (:data:`EPS`) by four numbers:

* ``clean_acc``;
* ``naive_acc``: under PGD-10 with cross-entropy crafted on the model the defence protects,
  as if the defence were not there (for a preprocessing defence, the classifier behind it;
  otherwise the model itself);
* ``autograd_acc``: under PGD-10 on the defended model as served, with autograd's gradient:
  the white-box evaluation that does not adapt;
* ``adaptive_acc``: under the adaptive attack, the worst case per image over PGD-20 with the
  cross-entropy and with the logit margin on the attacker's stand-in for the defence (BPDA for
  the squeezer, the logits divided by T for distillation, the whole pipeline for
  reconstruction, the model itself otherwise);
* ``worst_acc``: the worst case per image over all three attacks (and the clean image): the
  number to trust.

Also: accuracy-versus-eps curves under the naive and the adaptive attack, the feature-squeezing
detector's detection rates at a fixed false-positive rate, and the sanity checks of
:mod:`workbench.defenses.sanity` for every defence under the autograd and the adaptive attack.
Trained models and results are cached under ``cache_dir() / "defenses"``; everything runs on
one torch thread, so the notebook, the command line and the tests print the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.attacks.adaptive import BPDA, LogitScale
from workbench.cache import cache_file, cached_json, load_state, save_state
from workbench.config import torch_threads
from workbench.data.digits import load_digits_split
from workbench.defenses.distillation import train_at_temperature, train_student
from workbench.defenses.evaluation import accuracy
from workbench.defenses.models import Preprocessed, digits_cnn
from workbench.defenses.reconstruction import digits_autoencoder, train_autoencoder
from workbench.defenses.sanity import (as_dicts, pgd_attack, predictions, sanity_checks,
                                       strongest_of)
from workbench.defenses.squeezing import JointViews, SqueezeDetector, Squeezer
from workbench.defenses.training import EPS
from workbench.experiments import train_or_load
from workbench.stats import STD, mean_std
from workbench.workers import default_workers, run_in_workers

DEFENSES = ("none", "feature_squeezing", "distillation", "reconstruction",
            "adversarial_training")
CACHE_VERSION = 1  # bump when a model or its training changes
RESULTS_VERSION = 2  # bump when what is measured changes (cached results are then redone)
NAIVE_STEPS = 10
ADAPTIVE_STEPS = 20
ADAPTIVE_LOSSES = ("ce", "margin")
SQUEEZE = {"bits": 2, "median": 2}  # the preprocessing defence
DETECTOR = {"squeezers": [{"bits": 2}, {"median": 2}], "false_positive_rate": 0.05}
DISTILLATION = {"temperature": 50.0, "epochs": 30}
AUTOENCODER = {"epochs": 10}
CURVE_EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)  # pixel units
CURVE_IMAGES = 100  # test images the curves and the sanity checks use
DETECTOR_IMAGES = 225  # test images attacked for the detector; the other 225 calibrate it
SOURCE_SEED = 100  # the undefended model the sanity checks' transfer attack crafts on
SANITY_EFFORT = {"more_steps": 30, "restarts": 2}  # vs the attack's own steps and one start
METRICS = ("clean_acc", "naive_acc", "autograd_acc", "adaptive_acc", "worst_acc")


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps({"version": CACHE_VERSION, **key},
                                     sort_keys=True).encode()).hexdigest()[:16]


def _trained(kind: str, seed: int, key: dict, build, train, *, cache: bool) -> nn.Module:
    """``build()`` trained by ``train(model)`` on one thread, or loaded from the cache."""
    model = build()
    path = cache_file("defenses", f"{kind}-seed{seed}-{_digest({'seed': seed, **key})}.pt")
    if not (cache and load_state(model, path)):
        with torch_threads(1):
            train(model)
        if cache:
            save_state(model, path, what=f"{kind} (seed {seed})")
    return model.eval()


def distilled_model(seed: int, *, cache: bool = True, progress: bool = False) -> nn.Module:
    """The student of :data:`DISTILLATION` for ``seed``, served at T = 1 (raw logits)."""
    x_train, y_train, _, _ = load_digits_split()
    temperature, epochs = DISTILLATION["temperature"], DISTILLATION["epochs"]

    def train(student):
        teacher = digits_cnn(seed=seed)
        train_at_temperature(teacher, x_train, y_train, temperature=temperature, seed=seed,
                             epochs=epochs, progress=progress)
        train_student(student, teacher, x_train, temperature=temperature, seed=seed,
                      epochs=epochs, progress=progress)

    model = _trained("distilled", seed, DISTILLATION, lambda: digits_cnn(seed=seed), train,
                     cache=cache)
    model.source = (f"digits_cnn distilled at T = {temperature:g} ({epochs} epochs for the "
                    f"teacher and the student), served at T = 1")
    return model


def autoencoder_model(seed: int, *, cache: bool = True, progress: bool = False) -> nn.Module:
    """The denoising autoencoder of :data:`AUTOENCODER` for ``seed``, trained on clean digits."""
    x_train, _, _, _ = load_digits_split()
    return _trained("autoencoder", seed, AUTOENCODER, lambda: digits_autoencoder(seed=seed),
                    lambda ae: train_autoencoder(ae, x_train, seed=seed, progress=progress,
                                                 **AUTOENCODER), cache=cache)


@dataclass
class Defence:
    """A defended model and how it is attacked.

    ``served``: what predicts. ``naive_target``: what the naive attack crafts on.
    ``adaptive_target``: the attacker's stand-in, same predictions as ``served`` with a useful
    gradient. ``naive_attack``, ``adaptive_attack``: both attacks in words.
    """

    name: str
    served: nn.Module
    naive_target: nn.Module
    adaptive_target: nn.Module
    naive_attack: str
    adaptive_attack: str


def defences(seed: int, *, cache: bool = True, progress: bool = False) -> dict[str, Defence]:
    """The five defended models of ``seed`` (trained, or loaded from the cache), by name."""
    base = train_or_load("standard", seed, cache=cache, progress=progress)
    reconstructed = Preprocessed(autoencoder_model(seed, cache=cache, progress=progress), base)
    return {d.name: d for d in _defence_list(
        base, distilled_model(seed, cache=cache, progress=progress), reconstructed,
        train_or_load("pgd_at", seed, cache=cache, progress=progress))}


def _defence_list(base: nn.Module, distilled: nn.Module, reconstructed: nn.Module,
                  robust: nn.Module, *, squeezer: Squeezer | None = None) -> list[Defence]:
    squeezer = Squeezer(**SQUEEZE) if squeezer is None else squeezer
    on_base = "PGD on the classifier behind the defence, as if it were not there"
    itself = "PGD on the model itself"
    both = "the worst of the cross-entropy and the logit margin"
    temperature = DISTILLATION["temperature"]
    return [
        Defence("none", base, base, base, itself, f"{itself}, {both}"),
        Defence("feature_squeezing", Preprocessed(squeezer, base), base,
                Preprocessed(BPDA(squeezer), base), on_base,
                f"BPDA: PGD through the squeezer with the identity as its backward pass, {both}"),
        Defence("distillation", distilled, distilled, LogitScale(distilled, 1 / temperature),
                f"{itself} (cross-entropy at T = 1)",
                f"PGD on the logits divided by T = {temperature:g}, {both}"),
        Defence("reconstruction", reconstructed, base, reconstructed, on_base,
                f"PGD through the autoencoder and the classifier together, {both}"),
        Defence("adversarial_training", robust, robust, robust, itself, f"{itself}, {both}"),
    ]


def attacks_of(defence: Defence) -> dict:
    """The evaluation attacks (:data:`workbench.defenses.sanity.Attack`) on ``defence``:
    "naive", "autograd" and "adaptive"."""
    adaptive = [pgd_attack(defence.adaptive_target, loss=loss) for loss in ADAPTIVE_LOSSES]
    return {"naive": pgd_attack(defence.naive_target),
            "autograd": pgd_attack(defence.served),
            "adaptive": strongest_of(defence.served, adaptive)}


def attack_steps() -> dict[str, int]:
    """PGD steps of each evaluation attack: "naive", "autograd", "adaptive"."""
    return {"naive": NAIVE_STEPS, "autograd": NAIVE_STEPS, "adaptive": ADAPTIVE_STEPS}


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) bool on the CPU: which images of x the model gets right."""
    return predictions(model, x) == y.cpu()


def accuracies(defence: Defence, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               generator: torch.Generator) -> dict:
    """``clean_acc`` and, at the L-inf budget ``eps`` (pixel units), ``naive_acc``,
    ``autograd_acc``, ``adaptive_acc`` and ``worst_acc`` (an image counts when it is right
    clean and under each of the three attacks) of ``defence`` on images x (N, C, H, W) in [0, 1], labels y (N,); random starts
    from ``generator``. Works for any classifier a :class:`Defence` wraps (digits or
    ImageNet)."""
    steps = attack_steps()
    robust = {name: _correct(defence.served, attack(x, y, eps, steps[name], generator), y)
              for name, attack in attacks_of(defence).items()}
    clean = _correct(defence.served, x, y)
    result = {"clean_acc": clean.float().mean().item()}
    for name, survived in robust.items():
        result[f"{name}_acc"] = survived.float().mean().item()
    result["worst_acc"] = torch.stack([clean, *robust.values()]).all(0).float().mean().item()
    return result


def evaluate(defence: Defence, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> dict:
    """:func:`accuracies` of ``defence`` on x (N, 1, 16, 16), y (N,) at :data:`EPS`, and its
    naive and adaptive curves over :data:`CURVE_EPS` on the first :data:`CURVE_IMAGES`."""
    generator = torch.Generator().manual_seed(seed)
    result = {"seed": seed, **accuracies(defence, x, y, eps=EPS, generator=generator)}
    attacks, steps = attacks_of(defence), attack_steps()
    xc, yc = x[:CURVE_IMAGES], y[:CURVE_IMAGES]
    for name in ("naive", "adaptive"):
        result[f"{name}_curve"] = [
            accuracy(defence.served, xc, yc) if eps == 0 else
            _correct(defence.served, attacks[name](xc, yc, eps, steps[name], generator),
                     yc).float().mean().item()
            for eps in CURVE_EPS]
    return result


def squeezing_defence(model: nn.Module, squeezer: Squeezer) -> Defence:
    """Feature squeezing in front of any classifier (an ImageNet one, say): served
    ``model(squeezer(x))``, attacked naively on ``model`` alone and adaptively through BPDA."""
    return next(d for d in _defence_list(model, model, model, model, squeezer=squeezer)
                if d.name == "feature_squeezing")


def detector_result(base: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> dict:
    """Xu et al.'s detector on ``base``: calibrated on the clean images after the first
    :data:`DETECTOR_IMAGES`, measured on those first ones, clean (false-positive rate) and under
    the naive attack (PGD-10 on ``base``, blind to the detector) and the adaptive one (PGD-20
    on :class:`JointViews`, every squeezed view pushed to the same wrong class)."""
    squeezers = [Squeezer(**s) for s in DETECTOR["squeezers"]]
    detector = SqueezeDetector(base, squeezers)
    threshold = detector.calibrate(x[DETECTOR_IMAGES:], DETECTOR["false_positive_rate"])
    xe, ye = x[:DETECTOR_IMAGES], y[:DETECTOR_IMAGES]
    generator = torch.Generator().manual_seed(seed)
    result = {"seed": seed, "threshold": threshold,
              "false_positive_rate": detector.detect(xe).float().mean().item()}
    for name, attack, steps in (("naive", pgd_attack(base), NAIVE_STEPS),
                                ("adaptive", pgd_attack(JointViews(base, squeezers)),
                                 ADAPTIVE_STEPS)):
        x_adv = attack(xe, ye, EPS, steps, generator)
        fooled = ~_correct(base, x_adv, ye)
        flagged = detector.detect(x_adv)
        result[f"{name}_detection_rate"] = (flagged[fooled].float().mean().item()
                                            if fooled.any() else float("nan"))
        result[f"{name}_fooled_undetected"] = (fooled & ~flagged).float().mean().item()
    return result


def sanity_of(defence: Defence, source: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
              seed: int) -> dict:
    """The sanity checks of ``defence`` under its autograd and its adaptive attack."""
    attacks = attacks_of(defence)
    return {name: as_dicts(sanity_checks(defence.served, x, y, eps=EPS, attack=attacks[name],
                                         source=source, steps=attack_steps()[name], seed=seed,
                                         **SANITY_EFFORT))
            for name in ("autograd", "adaptive")}


def _seed_run(seed: int, *, cache: bool, progress: bool) -> dict:
    """Everything measured for one seed (trained models from the cache when there)."""
    _, _, x_test, y_test = load_digits_split()
    with torch_threads(1):
        models = defences(seed, cache=cache, progress=progress)
        source = train_or_load("standard", SOURCE_SEED, cache=cache)
        xs, ys = x_test[:CURVE_IMAGES], y_test[:CURVE_IMAGES]
        return {"rows": {name: evaluate(d, x_test, y_test, seed=seed)
                         for name, d in models.items()},
                "detector": detector_result(models["none"].served, x_test, y_test, seed=seed),
                "sanity": {name: sanity_of(d, source, xs, ys, seed=seed)
                           for name, d in models.items()}}


# The settings a result depends on; a worker process adopts the caller's (tests shorten them).
TUNABLE = ("EPS", "NAIVE_STEPS", "ADAPTIVE_STEPS", "ADAPTIVE_LOSSES", "SQUEEZE", "DETECTOR",
           "DISTILLATION", "AUTOENCODER", "CURVE_EPS", "CURVE_IMAGES", "DETECTOR_IMAGES",
           "SOURCE_SEED", "SANITY_EFFORT")


def _settings() -> dict:
    return {name.lower(): globals()[name] for name in TUNABLE}


def _summary(runs: list[dict], keys: Sequence[str]) -> dict:
    out = {}
    for key in keys:
        out[key], out[f"{key}_std"] = mean_std([r[key] for r in runs])
    return out


def _seed_job(seed: int, cache: bool, settings: dict) -> dict:
    """One seed's results under ``settings`` (:func:`_settings` of the caller, adopted here:
    a worker process starts from the module's defaults), read from or written to the cache
    (``cache``)."""
    globals().update({name: settings[name.lower()] for name in TUNABLE})
    key = {"seed": seed, "results": RESULTS_VERSION, **json.loads(json.dumps(settings))}
    path = cache_file("defenses", f"results-seed{seed}-{_digest(key)}.json")
    return cached_json(path, lambda: _seed_run(seed, cache=cache, progress=False), cache=cache,
                       what=f"defence results (seed {seed})")


def run_defenses_experiment(*, seeds: Sequence[int] = (0, 1, 2), cache: bool = True,
                            progress: bool = False, workers: int | None = None) -> dict:
    """The experiment of the module's docstring over ``seeds``, one seed per job in
    ``workers`` processes (default: :func:`workbench.workers.default_workers`).

    Returns:
        ``{"eps", "seeds", "std", "settings", "rows", "detector", "sanity"}``. ``rows``: one
        per defence of :data:`DEFENSES`: ``defense``, the :data:`METRICS` (means over seeds,
        in [0, 1]) with ``*_std`` (sample std), ``per_seed``, ``naive_attack`` and
        ``adaptive_attack`` (in words), ``curve_eps`` and the mean ``naive_curve`` and
        ``adaptive_curve``. ``detector``: the false-positive rate aimed at and measured, and
        per attack ("naive", "adaptive") the detection rate among the examples that fool the
        model and the share fooled and undetected, means with std and per seed. ``sanity``:
        per defence and attack ("autograd", "adaptive"), each check's name, whether it passed
        on every seed, and its per-seed details.
    """
    seeds = list(seeds)
    workers = default_workers() if workers is None else workers
    settings = _settings()
    runs = run_in_workers(_seed_job, [(seed, cache, settings) for seed in seeds],
                          workers=workers, progress=progress, desc="seeds")
    return _combine(seeds, runs, settings)


def _combine(seeds: list[int], runs: list[dict], settings: dict) -> dict:
    """Per-seed results -> the experiment's JSON result (see run_defenses_experiment)."""
    models = defences_descriptions()
    rows = []
    for name in DEFENSES:
        per_seed = [run["rows"][name] for run in runs]
        rows.append({"defense": name, **_summary(per_seed, METRICS),
                     "per_seed": [{k: r[k] for k in ("seed", *METRICS)} for r in per_seed],
                     **models[name], "curve_eps": list(CURVE_EPS),
                     **{f"{a}_curve": [statistics.fmean(c) for c in
                                       zip(*(r[f"{a}_curve"] for r in per_seed))]
                        for a in ("naive", "adaptive")}})
    detector_runs = [run["detector"] for run in runs]
    detector_keys = ("false_positive_rate", "naive_detection_rate", "naive_fooled_undetected",
                     "adaptive_detection_rate", "adaptive_fooled_undetected")
    detector = {"target_false_positive_rate": DETECTOR["false_positive_rate"],
                "squeezers": DETECTOR["squeezers"], **_summary(detector_runs, detector_keys),
                "per_seed": detector_runs}
    sanity = []
    for name in DEFENSES:
        for attack in ("autograd", "adaptive"):
            per_seed = [run["sanity"][name][attack] for run in runs]
            sanity.append({"defense": name, "attack": attack, "checks": [
                {"name": check["name"], "passed": all(s[i]["passed"] for s in per_seed),
                 "per_seed": [{"seed": seed, "passed": s[i]["passed"], "detail": s[i]["detail"]}
                              for seed, s in zip(seeds, per_seed)]}
                for i, check in enumerate(per_seed[0])]})
    return {"eps": EPS, "seeds": seeds, "std": STD, "settings": settings, "rows": rows,
            "detector": detector, "sanity": sanity}


def defences_descriptions() -> dict[str, dict]:
    """Per defence, its ``naive_attack`` and ``adaptive_attack`` in words (no training)."""
    return {d.name: {"naive_attack": d.naive_attack, "adaptive_attack": d.adaptive_attack}
            for d in _described().values()}


def _described() -> dict[str, Defence]:
    untrained = digits_cnn(seed=0)
    return {d.name: d for d in _defence_list(untrained, untrained,
                                             Preprocessed(nn.Identity(), untrained), untrained)}


def format_defenses_table(result: dict) -> str:
    """``run_defenses_experiment``'s result as text: the accuracies, the detector, the sanity
    checks."""
    head = (f"{'defence':<21}" + "".join(f"{h:>16}" for h in
                                         ("clean", "naive", "autograd", "adaptive", "worst")))
    lines = [head, "-" * len(head)]
    for row in result["rows"]:
        lines.append(f"{row['defense']:<21}" + "".join(
            f"{row[m]:>9.3f} ± {row[m + '_std']:.3f}"[-16:].rjust(16) for m in METRICS))
    d = result["detector"]
    lines += ["", f"feature-squeezing detector at a {d['target_false_positive_rate']:.0%} "
                  f"false-positive rate (measured on clean test images: "
                  f"{d['false_positive_rate']:.3f} ± {d['false_positive_rate_std']:.3f})"]
    for attack in ("naive", "adaptive"):
        lines.append(f"  {attack:<9} detects {d[attack + '_detection_rate']:.3f} ± "
                     f"{d[attack + '_detection_rate_std']:.3f} of the examples that fool the "
                     f"model; fooled and undetected: {d[attack + '_fooled_undetected']:.3f} ± "
                     f"{d[attack + '_fooled_undetected_std']:.3f}")
    lines += ["", "sanity checks (failed on any seed: FAIL)"]
    for entry in result["sanity"]:
        marks = ", ".join(f"{c['name']} {'ok' if c['passed'] else 'FAIL'}"
                          for c in entry["checks"])
        lines.append(f"  {entry['defense']:<21} {entry['attack']:<9} {marks}")
    lines.append(f"L-inf eps {result['eps']:g}; means ± sample std over seeds {result['seeds']}; "
                 f"test split of 450 digits")
    return "\n".join(lines)


MARGIN = 0.05  # an accuracy gap counts when it exceeds this on every seed


def _overstates(row: dict, key: str) -> bool:
    return all(seed[key] - seed["worst_acc"] > MARGIN for seed in row["per_seed"])


def reading(result: dict) -> list[str]:
    """The experiment's result in sentences, each computed from its numbers: per defence, how
    far the naive and the autograd evaluations overstate robustness against the worst case,
    which sanity checks caught it, and what the detector caught."""
    rows = {row["defense"]: row for row in result["rows"]}
    lines = []
    for name, row in rows.items():
        worst, worst_std = row["worst_acc"], row["worst_acc_std"]
        overstated = [f"{label} said {row[key]:.2f} (+{row[key] - worst:.2f})" for key, label in
                      (("naive_acc", "the naive attack"), ("autograd_acc", "autograd's PGD"))
                      if _overstates(row, key)]
        if overstated:
            lines.append(f"{name}: worst case {worst:.2f} ± {worst_std:.2f}, but "
                         f"{' and '.join(overstated)}, on every seed by more than {MARGIN}.")
        else:
            lines.append(f"{name}: worst case {worst:.2f} ± {worst_std:.2f}, and no attack "
                         f"overstated it by more than {MARGIN} on every seed.")
    failed = {(e["defense"], e["attack"]): [c["name"] for c in e["checks"] if not c["passed"]]
              for e in result["sanity"]}
    flagged = [f"{d} ({', '.join(names)})" for (d, a), names in failed.items()
               if a == "autograd" and names]
    if flagged:
        lines.append(f"The sanity checks flag the autograd evaluation of {'; '.join(flagged)}.")
    clean = [d for (d, a), names in failed.items() if a == "adaptive" and not names]
    lines.append(f"Under the adaptive attack the checks pass for {len(clean)} of "
                 f"{len(rows)} defences" + (f" (not {', '.join(sorted(set(rows) - set(clean)))})"
                                           if len(clean) < len(rows) else "") + ".")
    base = rows["none"]["worst_acc"]
    better = [n for n, r in rows.items() if n != "none" and all(
        mine["worst_acc"] - plain["worst_acc"] > MARGIN
        for mine, plain in zip(r["per_seed"], rows["none"]["per_seed"]))]
    above = ", ".join(f"{n} {rows[n]['worst_acc']:.2f}" for n in better) or "none"
    lines.append(f"Above the undefended model's worst case ({base:.2f}): {above}.")
    d = result["detector"]
    lines.append(f"The squeezing detector caught {d['naive_detection_rate']:.0%} of the naive "
                 f"examples that fooled the model and {d['adaptive_detection_rate']:.0%} of the "
                 f"adaptive ones, at {d['false_positive_rate']:.1%} false positives.")
    return lines
