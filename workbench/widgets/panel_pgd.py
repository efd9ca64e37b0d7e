"""The PGD panel of notebook 03: move eps and steps and watch the attack, every move a lookup.

PGD's cost grows with its steps, so the panel attacks once per image, norm, step size and
target: one batched PGD (:func:`workbench.attacks.pgd_sweep`, a budget per copy of the image)
over every eps of the slider's grid, for the largest number of steps, keeping what each step
produced: the perturbation (as int8 with one scale per image, a quarter of float32) and the
class probabilities. Moving eps or steps then shows a stored step; its frame (two JPEGs and
some HTML) is built the first time it is shown and kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from workbench.attacks import PGDStep, pgd_sweep
from workbench.viz import Prediction, loss_curve_svg, top_k
from workbench.widgets.views import AttackView, Frame, class_options, single_image

MAX_STEPS = 20
ATTACKS_KEPT = 4  # settings (norm, alpha, target) whose attacks a panel keeps: 51 MB each
# Per norm: the eps slider's grid (points after 0, spacing) and its default. L-inf in 1/255
# steps; L2 over 224 x 224 x 3 pixels, where an L2 budget of 1.0 spreads as about 1/400 per
# pixel.
EPS_GRIDS = {"linf": (16, 1 / 255, 4 / 255), "l2": (16, 0.25, 1.0)}
_INT8_MAX = 127


def eps_grid(norm: str) -> torch.Tensor:
    """The budgets the eps slider can take for ``norm``: (points + 1,) float32 from 0."""
    points, spacing, _ = EPS_GRIDS[norm]
    return torch.arange(points + 1, dtype=torch.float32) * spacing


@dataclass
class PGDPanelResult:
    """What the panel shows: ``x_adv`` (3, H, W) in [0, 1] (to within 1/254 of its largest
    perturbation coordinate, from the stored int8), the settings (``eps`` on the grid,
    ``alpha``, ``steps``, ``norm``, ``target``), the top-5 before and after, whether the attack
    achieved its goal, and ``loss_trace``, the objective after steps 1..steps."""

    x_adv: torch.Tensor
    eps: float
    alpha: float
    steps: int
    norm: str
    target: int | None
    top5_clean: list[Prediction]
    top5_adv: list[Prediction]
    success: bool
    loss_trace: list[float]


@dataclass
class StoredAttack:
    """One batched PGD over an eps grid, every step kept (E budgets, S steps, K classes).

    ``deltas`` (S, E, C, H, W) int8 and ``scales`` (S, E): the perturbation after each step is
    ``deltas * scales / 127``; ``probs`` (S, E, K) float32; ``objective`` (S, E) float32.
    """

    epsilons: torch.Tensor
    alpha_over_eps: float
    norm: str
    target: int | None
    deltas: torch.Tensor
    scales: torch.Tensor
    probs: torch.Tensor
    objective: torch.Tensor

    def x_adv(self, x: torch.Tensor, e: int, k: int) -> torch.Tensor:
        """The adversarial image (1, C, H, W) at budget index e after step k (from 0)."""
        delta = self.deltas[k, e].float() * (self.scales[k, e] / _INT8_MAX)
        return (x + delta.to(x.device)).clamp(0.0, 1.0)


def store_attack(model, x: torch.Tensor, y: int, *, norm: str, alpha_over_eps: float,
                 targeted: bool, seed: int, progress: bool = True) -> StoredAttack:
    """Run PGD at every budget of ``eps_grid(norm)`` on the image x (1, C, H, W) for
    ``MAX_STEPS`` steps, from the random start drawn from ``seed``; keep every step."""
    epsilons = eps_grid(norm)
    deltas, scales, probs, objective = [], [], [], []
    bar = tqdm(total=MAX_STEPS, desc=f"PGD over {len(epsilons)} budgets", leave=False,
               disable=not progress)

    def keep(step: PGDStep) -> None:
        delta = (step.x_adv - x).float().cpu()  # (E, C, H, W)
        scale = delta.flatten(1).abs().amax(1).clamp_min(1e-12)
        deltas.append((delta / scale.view(-1, 1, 1, 1) * _INT8_MAX).round().to(torch.int8))
        scales.append(scale)
        probs.append(step.logits.float().softmax(dim=1).cpu())
        objective.append(step.objective.cpu())
        bar.update(1)

    try:
        pgd_sweep(model, x, torch.tensor([y], device=x.device), epsilons, steps=MAX_STEPS,
                  alpha_over_eps=alpha_over_eps, norm=norm, targeted=targeted,
                  generator=torch.Generator().manual_seed(seed), on_step=keep)
    finally:
        bar.close()
    return StoredAttack(epsilons=epsilons, alpha_over_eps=alpha_over_eps, norm=norm,
                        target=y if targeted else None, deltas=torch.stack(deltas),
                        scales=torch.stack(scales), probs=torch.stack(probs),
                        objective=torch.stack(objective))


class PGDPanel:
    """Widgets over :func:`workbench.attacks.pgd_sweep`.

    ``.controls``: "eps" and "steps" (lookups: they update live), "alpha" (step size as a
    fraction of eps), "norm", "targeted", "target" (each of these runs the attack again, with
    a progress bar, unless the panel already ran it: the last :data:`ATTACKS_KEPT` settings'
    attacks are kept, and the target of an untargeted attack does not matter).
    ``.result`` is the latest :class:`PGDPanelResult`, updated synchronously whenever a
    control's ``.value`` changes; ``.update()`` redraws for the current values. An eps
    between two grid points shows the nearer one.
    """

    def __init__(self, model, image: torch.Tensor, label: int | None = None, *, seed: int = 0,
                 progress: bool = True):
        import ipywidgets as w

        self.model, self.x, self.seed = model, single_image(model, image), seed
        self.progress = progress
        self.view = AttackView(model, self.x, label)
        self.label = self.view.label
        points, spacing, default = EPS_GRIDS["linf"]
        self.controls = {
            "eps": w.FloatSlider(value=default, min=0.0, max=points * spacing, step=spacing,
                                 description="eps", readout_format=".4f"),
            "steps": w.IntSlider(value=10, min=1, max=MAX_STEPS, description="steps"),
            "alpha": w.FloatSlider(value=0.25, min=0.05, max=1.0, step=0.05,
                                   description="alpha / eps", continuous_update=False),
            "norm": w.Dropdown(options=list(EPS_GRIDS), value="linf", description="norm"),
            "targeted": w.Checkbox(value=False, description="targeted"),
            "target": w.Dropdown(options=class_options(model.categories),
                                 value=self.view.runner_up(), description="target",
                                 disabled=True),
        }
        self.curve = w.HTML()
        c = self.controls
        self.widget = w.VBox([
            w.HBox([c["eps"], c["steps"], c["alpha"]]),
            w.HBox([c["norm"], c["targeted"], c["target"]]),
            w.HBox([self.view.widget, self.curve]),
        ])
        self._frames: dict[tuple[int, int], Frame] = {}
        self._attacks: dict[tuple, StoredAttack] = {}  # by settings, the newest last
        self.stored: StoredAttack | None = None
        self.result: PGDPanelResult | None = None
        self._quiet = False  # set while the panel moves its own sliders
        for name in ("eps", "steps"):
            c[name].observe(lambda change: self._redraw(), names="value")
        for name in ("alpha", "targeted", "target"):
            c[name].observe(lambda change: self._attack_again(), names="value")
        c["norm"].observe(self._on_norm, names="value")
        self._attack_again()

    def _on_norm(self, change) -> None:
        points, spacing, default = EPS_GRIDS[change["new"]]
        slider = self.controls["eps"]
        self._quiet = True
        try:
            slider.value = min(slider.value, points * spacing)  # keep value <= max meanwhile
            slider.max, slider.step, slider.value = points * spacing, spacing, default
            slider.readout_format = ".4f" if change["new"] == "linf" else ".2f"
        finally:
            self._quiet = False
        self._attack_again()

    def _attack_again(self) -> None:
        """Attack with the current norm, step size and target (or take the attack of these
        settings the panel kept); then redraw."""
        c = self.controls
        c["target"].disabled = not c["targeted"].value
        targeted = bool(c["targeted"].value)
        y = int(c["target"].value) if targeted else self.label
        norm, alpha_over_eps = c["norm"].value, float(c["alpha"].value)
        settings = (norm, alpha_over_eps, targeted, y)
        stored = self._attacks.pop(settings, None)
        if stored is None:
            stored = store_attack(self.model, self.x, y, norm=norm,
                                  alpha_over_eps=alpha_over_eps, targeted=targeted,
                                  seed=self.seed, progress=self.progress)
        self._attacks[settings] = stored
        while len(self._attacks) > ATTACKS_KEPT:
            del self._attacks[next(iter(self._attacks))]
        if stored is not self.stored:
            self.stored = stored
            self._frames.clear()
        self.update()

    def _redraw(self) -> None:
        if not self._quiet:
            self.update()

    def _position(self) -> tuple[int, int]:
        """(budget index, step index) of the controls' values on the stored grid."""
        epsilons = self.stored.epsilons
        e = int(torch.argmin((epsilons - float(self.controls["eps"].value)).abs()))
        k = min(max(int(self.controls["steps"].value), 1), MAX_STEPS) - 1
        return e, k

    def _frame(self, e: int, k: int) -> Frame:
        if (e, k) not in self._frames:
            stored = self.stored
            eps = float(stored.epsilons[e])
            budget = f"{eps * 255:.0f}/255" if stored.norm == "linf" else f"{eps:.2f}"
            scale = eps if stored.norm == "linf" else float(stored.scales[k, e])
            self._frames[e, k] = self.view.frame(
                stored.x_adv(self.x, e, k), stored.probs[k, e], scale=scale,
                target=stored.target,
                status=(f"{self.model.cfg.label}: {stored.norm} PGD, eps = {budget}, "
                        f"alpha = {stored.alpha_over_eps:.2f} eps, step {k + 1}"))
        return self._frames[e, k]

    def update(self) -> PGDPanelResult:
        """Show the stored step for the eps and steps sliders; refresh ``.result``."""
        stored = self.stored
        e, k = self._position()
        frame = self._frame(e, k)
        self.view.show_frame(frame)
        eps = float(stored.epsilons[e])
        trace = stored.objective[:k + 1, e].tolist()
        kind = "targeted " if stored.target is not None else ""
        self.curve.value = loss_curve_svg(
            trace, steps=MAX_STEPS, title=f"{kind}PGD objective, {stored.norm} eps {eps:.4f}",
            ylabel="-CE of the target (nats)" if kind else "CE of the label (nats)")
        self.result = PGDPanelResult(
            x_adv=stored.x_adv(self.x, e, k)[0], eps=eps, alpha=stored.alpha_over_eps * eps,
            steps=k + 1, norm=stored.norm, target=stored.target,
            top5_clean=self.view.top5_clean, top5_adv=frame.top5, success=frame.success,
            loss_trace=trace)
        return self.result


def pgd_panel(model, image: torch.Tensor, label: int | None = None, *, seed: int = 0,
              progress: bool = True) -> PGDPanel:
    """Build the PGD panel for one image (3, H, W) in [0, 1]; ``label`` None uses the model's
    prediction; ``seed`` seeds the random starts. It attacks once (a progress bar), then
    every move of eps or steps is a lookup."""
    return PGDPanel(model, image, label, seed=seed, progress=progress)
