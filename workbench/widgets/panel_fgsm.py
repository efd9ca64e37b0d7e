"""The FGSM panel of notebook 02: move epsilon, watch the image and the prediction change.

FGSM's direction, ``sign(grad)``, does not depend on epsilon, so the panel computes it once
per (image, target) and each slider move costs one forward pass: ``x + eps * direction``.
Images are shown as PNG bytes in ``ipywidgets.Image`` and the top-5 lists as HTML, so no
matplotlib figure is rendered on a move (works in ipywidgets 7 and 8, Colab and JupyterLab).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.attacks import fgsm_direction
from workbench.viz import Prediction
from workbench.widgets.views import AttackView, class_options, single_image

EPS_MAX_LEVELS = 16  # the slider runs from 0 to 16/255 in steps of 1/255


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


class FGSMPanel:
    """Widgets over :func:`workbench.attacks.fgsm_direction`.

    ``.widget`` is the box to display, ``.controls`` maps "eps", "targeted" and "target" to
    their ipywidgets, ``.result`` is the latest :class:`FGSMPanelResult`, recomputed
    synchronously whenever a control's ``.value`` changes.
    """

    def __init__(self, model, image: torch.Tensor, label: int | None = None):
        import ipywidgets as w

        self.model, self.x = model, single_image(model, image)
        self.view = AttackView(model, self.x, label)
        self.label = self.view.label
        self._directions: dict[tuple[bool, int], torch.Tensor] = {}
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

    def _direction(self, targeted: bool, target: int) -> torch.Tensor:
        key = (targeted, target if targeted else self.label)
        if key not in self._directions:
            y = torch.tensor([key[1]], device=self.x.device)
            self._directions[key] = fgsm_direction(self.model, self.x, y, targeted=targeted)
        return self._directions[key]

    def _on_change(self, change) -> None:
        self.controls["target"].disabled = not self.controls["targeted"].value
        self.update()

    def update(self) -> FGSMPanelResult:
        """Recompute the adversarial image for the controls' values and refresh every view."""
        eps = float(self.controls["eps"].value)
        targeted = bool(self.controls["targeted"].value)
        target = int(self.controls["target"].value) if targeted else None
        x_adv = (self.x + eps * self._direction(targeted, target)).clamp(0, 1)
        with torch.no_grad():
            probs = self.model(x_adv).float().softmax(dim=1)[0]
        top5, success = self.view.show(x_adv, probs, scale=eps, target=target,
                                       status=f"eps = {eps * 255:.0f}/255 = {eps:.4f}")
        self.result = FGSMPanelResult(x_adv=x_adv[0], eps=eps, top5_clean=self.view.top5_clean,
                                      top5_adv=top5, label=self.label, target=target,
                                      success=success)
        return self.result


def fgsm_panel(model, image: torch.Tensor, label: int | None = None) -> FGSMPanel:
    """Build the FGSM panel for one image (3, H, W) in [0, 1].

    ``label`` is the class to attack away from; None uses the model's own prediction.
    Display it with ``display(panel.widget)``; drive it with ``panel.controls["eps"].value``.
    """
    return FGSMPanel(model, image, label)
