"""Notebook 05's panels: the layer x radius sweep of LAT on the backdoored Llama, and a prompt box.

* :class:`SweepPanel`: a layer slider and a radius slider over the sweep of
  :func:`workbench.lat.llm_experiment.run_lat_llm_sweep` (validation split, seed 0): for the
  chosen point, backdoor success and clean accuracy after fine-tuning there, set against the
  FT control, and two small heat maps of the whole grid with the point outlined. Every
  frame is HTML built once, up front: a move is a lookup and one widget assignment (no model
  call, no matplotlib; ipywidgets 7 and 8).
* :class:`PromptPanel`: type a prompt, see each model's greedy answer (base, FT, RLP, AT,
  LAT); a prompt the tokenizer cannot read gets its message, not a traceback.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Mapping

METRICS = (("backdoor_asr", "backdoor success", True), ("clean_acc", "clean accuracy", False))


@dataclass(frozen=True)
class SweepPoint:
    """One point of the sweep: fine-tuned by ``method`` ("at" at layer 0, "lat" above it) in
    the ball of radius ``fraction`` x the mean stream norm entering block ``layer`` (``eps``
    absolute), and what it gave on the validation split."""

    layer: int
    fraction: float
    method: str
    eps: float
    clean_acc: float
    backdoor_asr: float


def _points(sweep: Mapping) -> dict[tuple[int, float], SweepPoint]:
    try:
        points = {(int(p["layer"]), float(p["fraction"])): SweepPoint(
            int(p["layer"]), float(p["fraction"]), p["method"], float(p["eps"]),
            float(p["clean_acc"]), float(p["backdoor_asr"])) for p in sweep["points"]}
        grid = [(layer, fraction) for layer in sweep["layers"] for fraction in sweep["fractions"]]
    except (KeyError, TypeError) as err:
        raise ValueError(f"sweep must be run_lat_llm_sweep's result (or the experiment's "
                         f"'sweep'), with 'layers', 'fractions' and 'points': {err!r}") from None
    missing = [g for g in grid if g not in points]
    if missing or not grid:
        raise ValueError(f"the sweep has no result at (layer, radius) {missing or 'any'}: run "
                         f"run_lat_llm_sweep again (it fills the whole grid)")
    return points


GOOD, BAD = (198, 239, 206), (255, 150, 140)  # light green, light red (RGB)


def _cell_colour(value: float, bad_when_high: bool) -> str:
    """A cell's background: light green when good, light red when bad, blended between (high
    backdoor success is bad, low clean accuracy is bad)."""
    badness = min(max(value if bad_when_high else 1.0 - value, 0.0), 1.0)
    return "rgb({},{},{})".format(*(round(g + (b - g) * badness) for g, b in zip(GOOD, BAD)))


def _layer_label(layer: int) -> str:
    return "0 (embedding: AT)" if layer == 0 else f"{layer} (LAT)"


class SweepPanel:
    """The sweep panel of the module's docstring: ``.widget`` to display, ``.controls`` the
    ``"layer"`` and ``"fraction"`` sliders, ``.result`` the :class:`SweepPoint` shown."""

    def __init__(self, sweep: Mapping, *, layer: int | None = None,
                 fraction: float | None = None):
        import ipywidgets as w

        self.points = _points(sweep)
        self.layers = [int(v) for v in sweep["layers"]]
        self.fractions = [float(v) for v in sweep["fractions"]]
        self.controls_line = self._control_line(sweep.get("ft_lr", []))
        start_layer = layer if layer in self.layers else self.layers[min(2, len(self.layers) - 1)]
        start_fraction = fraction if fraction in self.fractions else self.fractions[
            len(self.fractions) // 2]
        self.controls = {
            "layer": w.SelectionSlider(options=[(_layer_label(v), v) for v in self.layers],
                                       value=start_layer, description="layer",
                                       continuous_update=True),
            "fraction": w.SelectionSlider(options=[(f"{v:g}", v) for v in self.fractions],
                                          value=start_fraction, description="radius",
                                          continuous_update=True)}
        self.frames = {key: self._frame(*key) for key in self.points}
        self.view = w.HTML()
        for control in self.controls.values():
            control.observe(lambda change: self._show(), names="value")
        note = w.HTML("<div style='font-size:12px'>radius: a fraction of the mean L2 norm of "
                      "an example's stream entering the block (its real positions x hidden "
                      "units); validation split, seed 0</div>")
        self.widget = w.VBox([w.HBox([self.controls["layer"], self.controls["fraction"]]),
                              note, self.view])
        self._show()

    @staticmethod
    def _control_line(ft_lr) -> str:
        if not ft_lr:
            return ""
        cells = "; ".join(f"lr {c['lr']:g}: backdoor {c['backdoor_asr']:.2f}, clean "
                          f"{c['clean_acc']:.2f}" for c in ft_lr)
        return f"<div style='font-size:12px'>the FT control (no perturbation): {cells}</div>"

    def _table(self, metric: str, title: str, bad_when_high: bool, chosen) -> str:
        head = "".join(f"<th style='padding:2px 6px'>{f:g}</th>" for f in self.fractions)
        rows = []
        for layer in self.layers:
            cells = []
            for fraction in self.fractions:
                value = getattr(self.points[layer, fraction], metric)
                outline = ("outline:3px solid #111;" if (layer, fraction) == chosen else "")
                cells.append(f"<td style='padding:2px 6px;text-align:center;{outline}"
                             f"background:{_cell_colour(value, bad_when_high)}'>"
                             f"{value:.2f}</td>")
            rows.append(f"<tr><th style='padding:2px 6px;text-align:left'>"
                        f"{html.escape(_layer_label(layer))}</th>{''.join(cells)}</tr>")
        return (f"<table style='border-collapse:collapse;font-size:12px;margin-right:16px'>"
                f"<caption style='font-weight:bold'>{title}</caption><tr><th>layer \\ radius"
                f"</th>{head}</tr>{''.join(rows)}</table>")

    def _frame(self, layer: int, fraction: float) -> str:
        p = self.points[layer, fraction]
        method = "AT (the embedding output)" if p.method == "at" else \
            f"LAT (the stream entering block {layer})"
        status = (f"<div><b>{method}</b>, radius {fraction:g} x the stream norm (eps = "
                  f"{p.eps:.3f}): backdoor success <b>{p.backdoor_asr:.2f}</b>, clean "
                  f"accuracy <b>{p.clean_acc:.2f}</b></div>")
        tables = "".join(self._table(m, t, bad, (layer, fraction)) for m, t, bad in METRICS)
        return f"{status}{self.controls_line}<div style='display:flex'>{tables}</div>"

    def _key(self) -> tuple[int, float]:
        return self.controls["layer"].value, self.controls["fraction"].value

    def _show(self) -> None:
        self.view.value = self.frames[self._key()]

    @property
    def result(self) -> SweepPoint:
        return self.points[self._key()]


class PromptPanel:
    """A text box and each model's greedy answer to what is typed in it (on Enter or when the
    box loses focus). ``models``: name -> LlamaCausalLM, e.g. ``{"base": ..., "ft": ...}``.
    ``.widget`` to display, ``.controls["prompt"]`` the box, ``.answers`` name -> answer (empty
    when the prompt could not be read; ``.error`` then says why)."""

    def __init__(self, models: Mapping, *, prompt: str = "copy : sun cat red map owl =>"):
        import ipywidgets as w

        if not models:
            raise ValueError("models is empty: pass name -> model, e.g. "
                             "workbench.lat.llm_experiment.models_of(result)")
        self.models = dict(models)
        self.answers: dict[str, str] = {}
        self.error = ""
        self.controls = {"prompt": w.Text(value=prompt, description="prompt",
                                          continuous_update=False,
                                          layout=w.Layout(width="480px"))}
        self.view = w.HTML()
        self.controls["prompt"].observe(lambda change: self._show(), names="value")
        self.widget = w.VBox([self.controls["prompt"], self.view])
        self._show()

    def _show(self) -> None:
        from workbench.lat.backdoor import greedy_decode

        prompt = self.controls["prompt"].value.strip()
        try:
            self.answers = {name: greedy_decode(model, [prompt])[0]
                            for name, model in self.models.items()}
            self.error = ""
        except ValueError as err:
            self.answers, self.error = {}, str(err)
            self.view.value = (f"<div style='color:#b2182b'>{html.escape(self.error)}</div>")
            return
        rows = "".join(f"<tr><td style='padding:2px 8px'><b>{html.escape(name)}</b></td>"
                       f"<td style='padding:2px 8px;font-family:monospace'>"
                       f"{html.escape(answer) or '(nothing)'}</td></tr>"
                       for name, answer in self.answers.items())
        self.view.value = f"<table style='font-size:13px'>{rows}</table>"


def sweep_panel(sweep: Mapping, **kwargs) -> SweepPanel:
    """The sweep panel over ``sweep`` (:func:`~workbench.lat.llm_experiment.run_lat_llm_sweep`'s
    result); keywords as :class:`SweepPanel`."""
    return SweepPanel(sweep, **kwargs)


def prompt_panel(models: Mapping, **kwargs) -> PromptPanel:
    """The prompt box over ``models`` (name -> LlamaCausalLM); keywords as :class:`PromptPanel`."""
    return PromptPanel(models, **kwargs)
