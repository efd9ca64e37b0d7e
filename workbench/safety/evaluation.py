"""How well a safety scorer separates Yes from No: AUROC per harm type on the held-out sets.

``run_shieldgemma_experiment`` is what ``workbench experiment shieldgemma`` prints: the lite
scorer trained from several seeds, each measured on

* its template held-out split (rows of the training file it did not train on), ``auroc``;
* the independently written set (``heldout_unseen.jsonl``), ``auroc_unseen``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from workbench.safety.examples import SafetyExample, load_examples, template_split
from workbench.safety.policies import HarmType
from workbench.stats import STD, mean_std


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the chance that a random Yes row scores above a random No row
    (ties count half). ValueError unless both classes are present."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype="float64")
    positive, negative = scores[labels == 1], scores[labels == 0]
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("AUROC needs at least one Yes and one No row")
    above = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((above + 0.5 * ties) / (len(positive) * len(negative)))


def auroc_by_harm_type(scorer, rows: Sequence[SafetyExample], batch_size: int = 32,
                       ) -> dict[HarmType, float]:
    """AUROC of ``scorer`` on ``rows``, separately for each harm type that ``rows`` holds
    (in :class:`HarmType` order). ValueError, naming it, for a harm type whose rows are all
    Yes or all No."""
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to measure AUROC on")
    scores = scorer.score([row.prompt for row in rows], batch_size=batch_size)
    result = {}
    for harm in HarmType:
        picked = [i for i, row in enumerate(rows) if row.harm_type is harm]
        if not picked:
            continue
        try:
            result[harm] = auroc([rows[i].label for i in picked], scores[picked])
        except ValueError as err:
            raise ValueError(f"{harm.value}: {err} ({len(picked)} rows)") from None
    return result


def run_shieldgemma_experiment(seeds: Sequence[int] = (0, 1, 2), *, cache: bool = True,
                               progress: bool = False) -> dict:
    """The lite scorer from each seed, measured on both held-out sets.

    Returns ``{"rows": [...], "seeds": [...], "std": ...}`` with one row per harm type:
    ``harm_type``, ``auroc`` and ``auroc_unseen`` (means over seeds), ``auroc_std`` and
    ``auroc_unseen_std`` (sample standard deviations, as ``"std"`` says; see
    :mod:`workbench.stats`), ``auroc_min`` and ``auroc_unseen_min``, and the per-seed lists
    ``auroc_by_seed`` and ``auroc_unseen_by_seed``.
    """
    from workbench.safety.lite import load_lite_scorer

    seeds = list(seeds)  # a generator would be empty when the result lists it
    if not seeds:
        raise ValueError("give at least one seed")
    unseen = list(load_examples("unseen"))
    template, independent = [], []
    for seed in seeds:
        scorer = load_lite_scorer(seed, cache=cache, progress=progress)
        template.append(auroc_by_harm_type(scorer, template_split(seed)[1]))
        independent.append(auroc_by_harm_type(scorer, unseen))
    rows = []
    for harm in HarmType:
        row = {"harm_type": harm.value}
        for key, runs in (("auroc", template), ("auroc_unseen", independent)):
            values = [run[harm] for run in runs]
            mean, std = mean_std(values)
            row.update({key: mean, f"{key}_std": std, f"{key}_min": min(values),
                        f"{key}_by_seed": [round(v, 4) for v in values]})
        rows.append(row)
    return {"rows": rows, "seeds": seeds, "std": STD}


def format_experiment(result: dict) -> str:
    """The experiment's result as a plain-text table, one line per harm type."""
    lines = [f"lite ShieldGemma, AUROC over seeds {result['seeds']} (mean +- sample std, min)",
             f"{'harm type':<20} {'template held-out':>24} {'independently written':>24}"]
    for row in result["rows"]:
        cells = [f"{row[k]:.3f} +- {row[k + '_std']:.3f} ({row[k + '_min']:.3f})"
                 for k in ("auroc", "auroc_unseen")]
        lines.append(f"{row['harm_type']:<20} {cells[0]:>24} {cells[1]:>24}")
    return "\n".join(lines)
