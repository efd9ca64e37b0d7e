"""Matplotlib figures with titles, axis labels and units."""

from __future__ import annotations

from typing import Sequence

import torch

from workbench.viz.images import Prediction, amplified_perturbation, to_uint8


def attack_figure(x: torch.Tensor, x_adv: torch.Tensor, eps: float,
                  before: Sequence[Prediction], after: Sequence[Prediction], *,
                  title: str | None = None):
    """Original, amplified perturbation, adversarial image and top-k bars before and after.

    x, x_adv: (3, H, W) in [0, 1]; eps in pixel units; ``title`` above it all (e.g. the
    attack and the model). Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4),
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.1, 1.1]})
    panels = [(x, "original"), (amplified_perturbation(x, x_adv, eps),
                                f"perturbation (eps = {eps * 255:.0f}/255, amplified)"),
              (x_adv, "adversarial")]
    for ax, (image, title) in zip(axes, panels):
        ax.imshow(to_uint8(image))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    for ax, preds, title in ((axes[3], before, "top-5 before"), (axes[4], after, "top-5 after")):
        names = [p.name for p in preds][::-1]
        ax.barh(names, [100 * p.prob for p in preds][::-1], color="#1565c0")
        ax.set_xlim(0, 100)
        ax.set_xlabel("probability (%)")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def eps_sweep_figure(epsilons: Sequence[float], accuracy: Sequence[float],
                     confidence: Sequence[float], *, title: str = "FGSM: accuracy vs epsilon"):
    """Accuracy and mean true-class probability against epsilon (shown in 1/255 steps)."""
    import matplotlib.pyplot as plt

    levels = [255 * float(e) for e in epsilons]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(levels, [100 * float(a) for a in accuracy], "o-", label="top-1 accuracy")
    ax.plot(levels, [100 * float(c) for c in confidence], "s--",
            label="mean probability of the true class")
    ax.set_xlabel("epsilon (pixel levels, x/255)")
    ax.set_ylabel("percent")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
