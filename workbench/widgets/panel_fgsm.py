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
from workbench.attacks.core import check_batch, check_labels
from workbench.viz import Prediction, amplified_perturbation, png_bytes, top_k, top_k_html

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

        if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or (
                image.dim() == 4 and image.shape[0] != 1):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)
            raise ValueError(f"the panel shows one image: pass a tensor (3, H, W) in [0, 1], "
                             f"got {shape}")
        x, _ = check_batch(model, image.reshape(1, *image.shape[-3:]),
                           torch.zeros(1, dtype=torch.long))
        self.model, self.x = model, x
        with torch.no_grad():
            clean_probs = model(x).float().softmax(dim=1)[0]
        self.categories = model.categories
        self.label = int(clean_probs.argmax()) if label is None else int(label)
        check_labels(torch.tensor([self.label]), len(self.categories), name="label")
        self.top5_clean = top_k(clean_probs, self.categories)
        self._directions: dict[tuple[bool, int], torch.Tensor] = {}

        options = [(f"{i}: {name}", i) for i, name in enumerate(self.categories)]
        default_target = next(p.index for p in self.top5_clean if p.index != self.label)
        self.controls = {
            "eps": w.FloatSlider(value=2 / 255, min=0.0, max=EPS_MAX_LEVELS / 255,
                                 step=1 / 255, description="eps", readout_format=".4f",
                                 continuous_update=True),
            "targeted": w.Checkbox(value=False, description="targeted"),
            "target": w.Dropdown(options=options, value=default_target,
                                 description="target", disabled=True),
        }
        size = dict(width="224px", height="224px")
        self._images = {
            "original": w.Image(value=png_bytes(x), format="png", layout=w.Layout(**size)),
            "perturbation": w.Image(format="png", layout=w.Layout(**size)),
            "adversarial": w.Image(format="png", layout=w.Layout(**size)),
        }
        self._bars_clean = w.HTML(top_k_html("top-5 before", self.top5_clean, label=self.label))
        self._bars_adv = w.HTML()
        self._status = w.HTML()
        captions = {"original": "original", "perturbation": "perturbation (amplified)",
                    "adversarial": "adversarial"}
        columns = [w.VBox([w.HTML(f"<b>{captions[k]}</b>"), img])
                   for k, img in self._images.items()]
        self.widget = w.VBox([
            w.HBox([self.controls["eps"], self.controls["targeted"], self.controls["target"]]),
            self._status,
            w.HBox(columns),
            w.HBox([self._bars_clean, self._bars_adv]),
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
        target = int(self.controls["target"].value)
        x_adv = (self.x + eps * self._direction(targeted, target)).clamp(0, 1)
        with torch.no_grad():
            probs = self.model(x_adv).float().softmax(dim=1)[0]
        top5 = top_k(probs, self.categories)
        predicted = top5[0].index
        success = predicted == target if targeted else predicted != self.label
        goal = f"reach '{self.categories[target]}'" if targeted else \
            f"leave '{self.categories[self.label]}'"
        verdict = "<span style='color:#c62828'>fooled</span>" if success else "not fooled yet"
        self._images["perturbation"].value = png_bytes(amplified_perturbation(self.x, x_adv, eps))
        self._images["adversarial"].value = png_bytes(x_adv)
        self._bars_adv.value = top_k_html("top-5 after", top5, label=self.label,
                                          target=target if targeted else None)
        self._status.value = (
            f"eps = {eps * 255:.0f}/255 = {eps:.4f}; goal: {goal}; now "
            f"'{top5[0].name}' ({100 * top5[0].prob:.1f}%): {verdict}")
        self.result = FGSMPanelResult(x_adv=x_adv[0], eps=eps, top5_clean=self.top5_clean,
                                      top5_adv=top5, label=self.label,
                                      target=target if targeted else None, success=success)
        return self.result


def fgsm_panel(model, image: torch.Tensor, label: int | None = None) -> FGSMPanel:
    """Build the FGSM panel for one image (3, H, W) in [0, 1].

    ``label`` is the class to attack away from; None uses the model's own prediction.
    Display it with ``display(panel.widget)``; drive it with ``panel.controls["eps"].value``.
    """
    return FGSMPanel(model, image, label)
