"""How every experiment summarises its seeds: the mean and the sample standard deviation.

One definition for all of them, so that a "+-" means the same in every table, and said in
each JSON result under the key ``"std"`` (``STD``). Pure Python: no torch, no numpy.
"""

from __future__ import annotations

import statistics
from typing import Sequence

STD = "sample (ddof=1)"  # what every experiment's "*_std" numbers are; 0.0 for one seed


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, ``statistics.stdev``) of per-seed values.

    One value has no spread to estimate: its std is reported as 0.0. ValueError for none.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarise: give at least one seed")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_row(key: str, name: str, runs: Sequence[dict], metrics: Sequence[str]) -> dict:
    """A result row: ``{key: name}``, then each metric's mean over ``runs`` (one dict per
    seed) and its ``*_std`` (:func:`mean_std`), then ``"per_seed"``: the runs as given."""
    row: dict = {key: name}
    for metric in metrics:
        row[metric], row[f"{metric}_std"] = mean_std([run[metric] for run in runs])
    row["per_seed"] = list(runs)
    return row


__all__ = ["STD", "mean_std", "seed_row"]
