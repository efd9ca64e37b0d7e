"""Notebook 07's panel: one digit, every defence, the naive and the adaptive attack, an epsilon
slider.

For each defence (:class:`workbench.defense_experiment.Defence`) the panel shows the
adversarial digit the naive attack makes and the one the adaptive attack makes at the
slider's budget, and what the defended model predicts on each (red when it is fooled), under a
line counting the fooled models. Every budget of the grid is attacked once, up front: per
defence and attack, one batched PGD run with one budget per copy of the digit. A slider move
is then a lookup and widget assignments: no model call, no encoding (ipywidgets 7 and 8).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Mapping

import torch
from tqdm.auto import tqdm

from workbench.attacks import predict
from workbench.attacks.core import attack_mode, check_labels
from workbench.config import torch_threads
from workbench.defense_experiment import Defence, attack_steps, attacks_of
from workbench.widgets.views import enlarged_png, single_image

EPSILONS = tuple(round(i * 0.025, 6) for i in range(13))  # 0, 0.025, ..., 0.3 (pixel units)
START_EPS = 0.15  # the experiment's budget
ATTACKS = ("naive", "adaptive")
DISPLAY_PX = 96


@dataclass
class DefensesPanelResult:
    """What the panel shows at ``eps``: per defence and attack ("naive", "adaptive"), the
    predicted class and whether it differs from the label (``fooled``)."""

    eps: float
    label: int
    predicted: dict[str, dict[str, int]]
    fooled: dict[str, dict[str, bool]]


def attack_grid(defence: Defence, x: torch.Tensor, y: torch.Tensor, epsilons, *,
                seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per attack ("naive", "adaptive"): the adversarial copies (E, C, H, W) of the digit x
    (1, C, H, W), one per budget of ``epsilons`` (E,), and the served model's predictions (E,)
    on them; random starts from ``seed``."""
    budgets = torch.tensor(list(epsilons), dtype=torch.float32, device=x.device)
    xs, ys = x.expand(len(budgets), -1, -1, -1).contiguous(), y.expand(len(budgets))
    grid = {}
    for name, attack in attacks_of(defence).items():
        if name not in ATTACKS:
            continue
        x_adv = attack(xs, ys, budgets, attack_steps()[name],
                       torch.Generator().manual_seed(seed))
        with attack_mode(defence.served):
            grid[name] = (x_adv, predict(defence.served, x_adv))
    return grid


class DefensesPanel:
    """The panel of the module's docstring; ``.widget`` to display, ``.controls["eps"]`` the
    slider, ``.result`` what is shown."""

    def __init__(self, defences: Mapping[str, Defence], image: torch.Tensor, label: int, *,
                 epsilons=EPSILONS, seed: int = 0, progress: bool = True):
        import ipywidgets as w

        if not defences:
            raise ValueError("defences is empty: pass the dict workbench.defense_experiment."
                             "defences(seed) returns")
        first = next(iter(defences.values())).served
        self.x = single_image(first, image)
        check_labels(torch.tensor([label]), int(first(self.x).shape[1]), name="label")
        self.label, self.epsilons = int(label), [float(e) for e in epsilons]
        if not self.epsilons or any(e < 0 or e > 1 for e in self.epsilons):
            raise ValueError(f"epsilons must be L-inf budgets in [0, 1] (pixel units), got "
                             f"{list(epsilons)!r}")
        y = torch.tensor([self.label], device=self.x.device)
        factor = max(1, round(DISPLAY_PX / max(self.x.shape[-2:])))
        self.predictions: dict[str, dict[str, list[int]]] = {}
        self.images: dict[str, dict[str, list[bytes]]] = {}
        for name, defence in tqdm(defences.items(), desc="attacking every budget",
                                  disable=not progress):
            with torch_threads(1):  # tiny batches: one thread is fastest, and never contends
                grid = attack_grid(defence, self.x, y, self.epsilons, seed=seed)
            self.predictions[name] = {a: grid[a][1].tolist() for a in ATTACKS}
            self.images[name] = {a: [enlarged_png(img, factor) for img in grid[a][0]]
                                 for a in ATTACKS}
        start = min(self.epsilons, key=lambda e: abs(e - START_EPS))
        self.controls = {"eps": w.SelectionSlider(
            options=[(f"{e:.3f}", e) for e in self.epsilons], value=start,
            description="eps (L-inf)", continuous_update=True)}
        self._cells = {}
        rows = [w.HBox([w.HTML("<b>defence</b>", layout=w.Layout(width="170px")),
                        *(w.HTML(f"<b>{a} attack</b>", layout=w.Layout(width="230px"))
                          for a in ATTACKS)])]
        for name in defences:
            cells = []
            for attack in ATTACKS:
                image_widget = w.Image(format="png")
                text = w.HTML(layout=w.Layout(width="120px"))
                self._cells[name, attack] = (image_widget, text)
                cells.append(w.HBox([image_widget, text], layout=w.Layout(width="230px")))
            rows.append(w.HBox([w.HTML(html.escape(name), layout=w.Layout(width="170px")),
                                *cells]))
        self.status = w.HTML()
        self.controls["eps"].observe(lambda change: self._show(), names="value")
        self.widget = w.VBox([self.controls["eps"], self.status, *rows])
        self._show()

    def _index(self) -> int:
        return self.epsilons.index(self.controls["eps"].value)

    def _show(self) -> None:
        i = self._index()
        fooled = {a: sum(self.predictions[name][a][i] != self.label for name in self.predictions)
                  for a in ATTACKS}
        self.status.value = (f"eps = {self.epsilons[i]:.3f}: the naive attack fools "
                             f"{fooled['naive']} of {len(self.predictions)} defended models, "
                             f"the adaptive attack {fooled['adaptive']} (label {self.label})")
        for (name, attack), (image_widget, text) in self._cells.items():
            predicted = self.predictions[name][attack][i]
            colour = "#b2182b" if predicted != self.label else "#1a7f37"
            image_widget.value = self.images[name][attack][i]
            text.value = (f"<span style='color:{colour}'>predicted {predicted}"
                          f"{' (fooled)' if predicted != self.label else ''}</span>")

    @property
    def result(self) -> DefensesPanelResult:
        i = self._index()
        predicted = {name: {a: self.predictions[name][a][i] for a in ATTACKS}
                     for name in self.predictions}
        return DefensesPanelResult(
            eps=self.epsilons[i], label=self.label, predicted=predicted,
            fooled={name: {a: p != self.label for a, p in row.items()}
                    for name, row in predicted.items()})


def defenses_panel(defences: Mapping[str, Defence], image: torch.Tensor, label: int,
                   **kwargs) -> DefensesPanel:
    """Build the panel (attacking every budget once, with a progress bar) for one digit
    ``image`` (1, H, W) or (1, 1, H, W) in [0, 1] and its ``label``; keywords as
    :class:`DefensesPanel`."""
    return DefensesPanel(defences, image, label, **kwargs)
