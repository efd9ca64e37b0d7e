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


def method_comparison_figure(rows: Sequence[dict], *, title: str):
    """Per method, clean accuracy against held-out robustness, and the trojans' success.

    ``rows``: dicts with ``method`` and ``clean_acc``, ``heldout_acc``, ``trojan_asr`` (each in
    [0, 1]) with their ``*_std`` (spread over seeds), as ``workbench experiment lat-vision``
    gives them. Left: clean accuracy (x) against mean held-out accuracy (y), error bars one
    std; right: trojan attack success rate per method. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        left.errorbar(row["clean_acc"], row["heldout_acc"], xerr=row["clean_acc_std"],
                      yerr=row["heldout_acc_std"], fmt="o", capsize=3, label=row["method"])
        left.annotate(row["method"], (row["clean_acc"], row["heldout_acc"]),
                      textcoords="offset points", xytext=(6, 4), fontsize=9)
    left.set_xlabel("clean test accuracy")
    left.set_ylabel("mean accuracy under held-out attacks")
    left.set_title("clean vs held-out robustness (mean ± std over seeds)", fontsize=10)
    names = [row["method"] for row in rows]
    right.bar(names, [row["trojan_asr"] for row in rows],
              yerr=[row["trojan_asr_std"] for row in rows], capsize=3, color="tab:red")
    right.set_ylim(0, 1.05)
    right.set_ylabel("trojan attack success rate")
    right.set_title("trojans still working after fine-tuning", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def sweep_heatmaps(points: Sequence[dict], *, metrics: Sequence[tuple[str, str]], title: str):
    """One heatmap per metric over a layer x radius grid, each cell printed.

    ``points``: dicts with ``layer``, ``fraction`` and each metric key; ``metrics``: (key,
    label) pairs, e.g. ("trojan_asr", "trojan success"). Rows are layers (as they come),
    columns radii (latent radius / mean activation norm). Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    layers = list(dict.fromkeys(p["layer"] for p in points))
    fractions = sorted({p["fraction"] for p in points})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        grid = np.full((len(layers), len(fractions)), np.nan)
        for p in points:
            grid[layers.index(p["layer"]), fractions.index(p["fraction"])] = p[key]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(fractions)), [f"{f:g}" for f in fractions])
        ax.set_yticks(range(len(layers)), layers)
        ax.set_xlabel("radius / mean activation norm")
        ax.set_ylabel("layer")
        ax.set_title(label, fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def defense_curves_figure(rows: Sequence[dict], *, title: str):
    """Per defence, accuracy against the L-inf budget under the naive and the adaptive attack.

    ``rows``: dicts with ``defense``, ``curve_eps`` (budgets, pixel units) and the mean
    ``naive_curve`` and ``adaptive_curve`` (accuracies in [0, 1]), as ``workbench experiment
    defenses`` gives them. One panel per defence; the shaded gap between the two curves is what
    the naive evaluation missed. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.1 * len(rows), 3.2), sharey=True,
                             squeeze=False)
    for ax, row in zip(axes[0], rows):
        eps = row["curve_eps"]
        ax.plot(eps, row["naive_curve"], "o-", label="naive attack")
        ax.plot(eps, row["adaptive_curve"], "s-", color="tab:red", label="adaptive attack")
        ax.fill_between(eps, row["adaptive_curve"], row["naive_curve"], color="tab:red",
                        alpha=0.12)
        ax.set_title(row["defense"].replace("_", " "), fontsize=10)
        ax.set_xlabel("eps (L-inf, pixel units)")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
