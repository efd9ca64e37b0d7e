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


__all__ = ["STD", "mean_std"]
