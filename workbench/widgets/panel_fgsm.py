"""The FGSM panel of notebook 02: move epsilon, watch the image and the prediction change.

FGSM's direction, ``sign(grad)``, does not depend on epsilon. So when the image or the target
changes, the panel computes it once and then runs ONE batched forward pass over the slider's
whole grid (``x + eps_i * direction`` for eps_i = 0, 1/255, ..., 16/255) and keeps each grid
point's probabilities. A slider move is then a lookup: the point's :class:`~workbench.widgets.
views.Frame` (two JPEG encodings and some HTML) is built the first time it is shown, cached,
and put on screen by assigning widget values. No model call and no matplotlib on a move (works
in ipywidgets 7 and 8, Colab and JupyterLab). An eps off the grid, set from code, costs one
forward pass of its own.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from workbench.attacks import fgsm_direction
from workbench.attacks.core import attack_mode
from workbench.viz import Prediction
from workbench.widgets.views import AttackView, Frame, class_options, single_image

EPS_MAX_LEVELS = 16  # the slider runs from 0 to 16/255 in steps of 1/255
GRIDS_KEPT = 8  # (attack, class) grids kept, least recently used dropped: ~1 MB each at 224 px


@dataclass
class FGSMPanelResult:
    """The panel's latest state: ``x_adv`` (3, H, W) in [0, 1], ``eps`` in pixel units, the
    top-5 before and after, the label attacked away from, the target (or None), and whether
    the attack achieved its goal (prediction != label, or == target when targeted)."""

    x_adv: torch.Tensor
    eps: float
    top5_clean: list[Prediction]
    top5_adv: list[Prediction]
    label: int
    target: int | None
    success: bool


@dataclass
class _Grid:
    """One (targeted, class) attack precomputed over the slider's grid.

    ``direction`` (1, 3, H, W) of -1, 0, +1; ``probs`` (levels + 1, num_classes), row i the
    probabilities at eps = i/255; ``frames`` level -> Frame, filled on first show."""

    direction: torch.Tensor
    probs: torch.Tensor
    frames: dict[int, Frame] = field(default_factory=dict)


class FGSMPanel:
    """Widgets over :func:`workbench.attacks.fgsm_direction`.

    ``.widget`` is the box to display, ``.controls`` maps "eps", "targeted" and "target" to
    their ipywidgets, ``.result`` is the latest :class:`FGSMPanelResult`, recomputed
    synchronously whenever a control's ``.value`` changes (or :meth:`update` is called).
    """

    def __init__(self, model, image: torch.Tensor, label: int | None = None):
        import ipywidgets as w

        self.model, self.x = model, single_image(model, image)
        self.view = AttackView(model, self.x, label)
        self.label = self.view.label
        self.levels = torch.arange(EPS_MAX_LEVELS + 1, dtype=torch.float32) / 255  # eps grid
        self._grids: OrderedDict[tuple[bool, int], _Grid] = OrderedDict()
        self.controls = {
            "eps": w.FloatSlider(value=2 / 255, min=0.0, max=EPS_MAX_LEVELS / 255,
                                 step=1 / 255, description="eps", readout_format=".4f",
                                 continuous_update=True),
            "targeted": w.Checkbox(value=False, description="targeted"),
            "target": w.Dropdown(options=class_options(model.categories),
                                 value=self.view.runner_up(), description="target",
                                 disabled=True),
        }
        self.widget = w.VBox([
            w.HBox([self.controls["eps"], self.controls["targeted"], self.controls["target"]]),
            self.view.widget,
        ])
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.result: FGSMPanelResult | None = None
        self.update()

    def _grid(self, targeted: bool, cls: int) -> _Grid:
        """The grid for this attack, from the cache or computed now: one gradient, then one
        batched forward over every eps of the slider."""
        key = (targeted, cls)
        if key in self._grids:
            self._grids.move_to_end(key)
            return self._grids[key]
        y = torch.tensor([cls], device=self.x.device)
        direction = fgsm_direction(self.model, self.x, y, targeted=targeted)
        eps = self.levels.to(direction.device).view(-1, 1, 1, 1)
        batch = (self.x + eps * direction).clamp(0, 1)  # (levels + 1, 3, H, W)
        with attack_mode(self.model), torch.no_grad():
            probs = self.model(batch).float().softmax(dim=1).cpu()
        self._grids[key] = grid = _Grid(direction=direction, probs=probs)
        while len(self._grids) > GRIDS_KEPT:
            self._grids.popitem(last=False)
        return grid

    def _level(self, eps: float) -> int | None:
        """The grid index of eps, or None when eps is off the grid."""
        level = round(eps * 255)
        on_grid = 0 <= level <= EPS_MAX_LEVELS and abs(eps * 255 - level) < 1e-6
        return level if on_grid else None

    def _on_change(self, change) -> None:
        self.controls["target"].disabled = not self.controls["targeted"].value
        self.update()

    def update(self) -> FGSMPanelResult:
        """Show the attack for the controls' values and return (and keep in ``.result``) it.

        On the eps grid this is a lookup; a new image-target pair first costs one gradient
        and one batched forward; an eps off the grid costs one forward pass."""
        eps = float(self.controls["eps"].value)
        targeted = bool(self.controls["targeted"].value)
        target = int(self.controls["target"].value) if targeted else None
        grid = self._grid(targeted, target if targeted else self.label)
        x_adv = (self.x + eps * grid.direction).clamp(0, 1)
        level = self._level(eps)
        frame = grid.frames.get(level) if level is not None else None
        if frame is None:
            if level is not None:
                probs = grid.probs[level]
            else:
                with attack_mode(self.model), torch.no_grad():
                    probs = self.model(x_adv).float().softmax(dim=1)[0]
            status = f"{self.model.cfg.label}: eps = {eps * 255:.4g}/255 = {eps:.4f}"
            frame = self.view.frame(x_adv, probs, scale=eps, target=target, status=status)
            if level is not None:
                grid.frames[level] = frame
        self.view.show_frame(frame)
        self.result = FGSMPanelResult(x_adv=x_adv[0], eps=eps, top5_clean=self.view.top5_clean,
                                      top5_adv=frame.top5, label=self.label, target=target,
                                      success=frame.success)
        return self.result


def fgsm_panel(model, image: torch.Tensor, label: int | None = None) -> FGSMPanel:
    """Build the FGSM panel for one image (3, H, W) in [0, 1].

    ``label`` is the class to attack away from; None uses the model's own prediction.
    Display it with ``display(panel.widget)``; drive it with ``panel.controls["eps"].value``.
    Building it (and each new target) costs one gradient and one batched forward over the
    slider's whole eps grid; every slider move after that is a lookup
    (``benchmarks/bench_fgsm_panel.py`` times both).
    """
    return FGSMPanel(model, image, label)
