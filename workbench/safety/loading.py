"""``load_scorer``: the safety scorer of the current mode, full ShieldGemma or the lite one.

It sits above both scorers: :mod:`workbench.safety.scoring` (the shared scoring path and full
mode's keras-hub preset) and :mod:`workbench.safety.lite` (which builds on ``scoring``). Neither
imports this module. Nothing here imports keras until ``load_scorer`` is called.
"""

from __future__ import annotations

from workbench.config import get_mode
from workbench.safety.scoring import SafetyScorer, check_preset, load_shieldgemma


def load_scorer(mode: str | None = None, *, preset: str = "shieldgemma_2b_en",
                seed: int = 0, progress: bool = True) -> SafetyScorer:
    """The safety scorer of ``mode`` ("lite" or "full"; default from WORKBENCH_MODE / GPU).

    Full: ShieldGemma from the keras-hub ``preset``. Lite: a tiny keras-hub GemmaCausalLM
    trained here on the shipped policy set from ``seed`` the first time, then loaded from the
    cache; see :mod:`workbench.safety.lite`. ValueError for an unknown ``preset``, in either
    mode.
    """
    check_preset(preset)  # in lite mode too: a typo fails now, not on the first GPU run
    if get_mode(mode) == "full":
        return load_shieldgemma(preset)
    from workbench.safety.lite import load_lite_scorer  # imports keras: only when asked

    return load_lite_scorer(seed=seed, progress=progress)


__all__ = ["load_scorer"]
