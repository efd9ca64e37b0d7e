"""The PGD panel of notebook 03: set the budget, press Run, watch the loss climb step by step.

PGD's cost grows with its steps, so the sliders only set the attack up; it runs on the Run
button (or ``panel.run()``), and the loss curve is redrawn after every step while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.attacks import AttackResult, pgd
from workbench.viz import Prediction, loss_curve_svg
from workbench.widgets.views import AttackView, class_options, single_image

# Per norm: (eps slider max, eps step, default eps). L-inf in 1/255 steps; L2 over 224 x 224 x 3
# pixels, where an L2 budget of 1.0 spreads as about 1/400 per pixel.
EPS_RANGES = {"linf": (16 / 255, 1 / 255, 4 / 255), "l2": (4.0, 0.05, 1.0)}


@dataclass
class PGDPanelResult:
    """The latest run: the attack's :class:`AttackResult` (batch of one), its settings, the
    top-5 before and after, and whether it achieved its goal."""

    attack: AttackResult
    eps: float
    alpha: float
    steps: int
    norm: str
    target: int | None
    top5_clean: list[Prediction]
    top5_adv: list[Prediction]
    success: bool


class PGDPanel:
    """Widgets over :func:`workbench.attacks.pgd`.

    ``.controls``: "eps", "alpha" (step size as a fraction of eps), "steps", "norm",
    "targeted", "target", "run" (a Button). ``.run()`` attacks with the current settings,
    updates every view and returns the :class:`PGDPanelResult` also kept in ``.result``.
    """

    def __init__(self, model, image: torch.Tensor, label: int | None = None, *, seed: int = 0):
        import ipywidgets as w

        self.model, self.x, self.seed = model, single_image(model, image), seed
        self.view = AttackView(model, self.x, label)
        self.label = self.view.label
        eps_max, eps_step, eps_default = EPS_RANGES["linf"]
        self.controls = {
            "eps": w.FloatSlider(value=eps_default, min=0.0, max=eps_max, step=eps_step,
                                 description="eps", readout_format=".4f",
                                 continuous_update=False),
            "alpha": w.FloatSlider(value=0.25, min=0.05, max=1.0, step=0.05,
                                   description="alpha / eps", continuous_update=False),
            "steps": w.IntSlider(value=10, min=1, max=50, description="steps",
                                 continuous_update=False),
            "norm": w.Dropdown(options=list(EPS_RANGES), value="linf", description="norm"),
            "targeted": w.Checkbox(value=False, description="targeted"),
            "target": w.Dropdown(options=class_options(model.categories),
                                 value=self.view.runner_up(), description="target",
                                 disabled=True),
            "run": w.Button(description="Run PGD", button_style="primary"),
        }
        self.curve = w.HTML(loss_curve_svg([], steps=1, title="attack objective per step"))
        self.controls["norm"].observe(self._on_norm, names="value")
        self.controls["targeted"].observe(
            lambda change: setattr(self.controls["target"], "disabled", not change["new"]),
            names="value")
        self.controls["run"].on_click(lambda button: self.run())
        c = self.controls
        self.widget = w.VBox([
            w.HBox([c["eps"], c["alpha"], c["steps"]]),
            w.HBox([c["norm"], c["targeted"], c["target"], c["run"]]),
            w.HBox([self.view.widget, self.curve]),
        ])
        self.result: PGDPanelResult | None = None

    def _on_norm(self, change) -> None:
        eps_max, eps_step, eps_default = EPS_RANGES[change["new"]]
        slider = self.controls["eps"]
        slider.value = min(slider.value, eps_max)  # keep value <= max while max changes
        slider.max, slider.step, slider.value = eps_max, eps_step, eps_default
        slider.readout_format = ".4f" if change["new"] == "linf" else ".2f"

    def run(self) -> PGDPanelResult:
        """Attack with the current settings; redraw the loss curve after every step."""
        c = self.controls
        eps, norm, steps = float(c["eps"].value), c["norm"].value, int(c["steps"].value)
        alpha = float(c["alpha"].value) * eps
        target = int(c["target"].value) if c["targeted"].value else None
        y = torch.tensor([self.label if target is None else target], device=self.x.device)
        trace: list[float] = []
        title = f"{'targeted ' if target is not None else ''}PGD objective ({norm})"

        def on_step(step: int, objective: torch.Tensor) -> None:
            trace.append(float(objective[0]))
            self.curve.value = loss_curve_svg(trace, steps=steps, title=title)

        attack = pgd(self.model, self.x, y, eps=eps, alpha=alpha, steps=steps, norm=norm,
                     targeted=target is not None, on_step=on_step,
                     generator=torch.Generator().manual_seed(self.seed))
        with torch.no_grad():
            probs = self.model(attack.x_adv).float().softmax(dim=1)[0]
        scale = eps if norm == "linf" else float((attack.x_adv - self.x).abs().max())
        budget = f"{eps * 255:.0f}/255" if norm == "linf" else f"{eps:.2f}"
        top5, success = self.view.show(
            attack.x_adv, probs, scale=scale, target=target,
            status=f"{norm} eps = {budget}, alpha = {alpha:.4f}, {steps} steps")
        self.result = PGDPanelResult(attack=attack, eps=eps, alpha=alpha, steps=steps, norm=norm,
                                     target=target, top5_clean=self.view.top5_clean,
                                     top5_adv=top5, success=success)
        return self.result


def pgd_panel(model, image: torch.Tensor, label: int | None = None, *, seed: int = 0) -> PGDPanel:
    """Build the PGD panel for one image (3, H, W) in [0, 1]; ``label`` None uses the model's
    prediction; ``seed`` seeds the random start. Press Run, or call ``panel.run()``."""
    return PGDPanel(model, image, label, seed=seed)
