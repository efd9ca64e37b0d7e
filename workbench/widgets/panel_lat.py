"""The latent panel of notebook 04: pick a layer and a radius, see where the perturbation lives.

A latent attack (:func:`workbench.lat.latent_pgd`) perturbs a hidden layer's output instead of
the image. For one image the panel shows, for the chosen layer and radius: the image and, next
to it, the perturbation's mean over channels (the layer's H x W, upsampled to the image by
nearest neighbour, blue < 0 < red on a scale symmetric about 0 that spans its largest
|value|, printed under it); ``||delta|| / ||h||``, the perturbation's L2 norm relative to the
clean activation's at that layer; and the top-5 prediction with the perturbation added
(through :func:`workbench.lat.perturbed`) against the clean one.

The radius slider is a fraction of the activation norm (:func:`workbench.lat.relative_eps`:
for one image, ``eps = fraction * ||h||``). Everything is computed once, when the panel is
built (a progress bar): per layer, latent PGD at every radius of the grid, one batched forward
with each perturbation added, and every frame (a PNG heatmap and some HTML). A move of either
slider is then a lookup and a few widget assignments: no model call, no encoding, no
matplotlib (ipywidgets 7 and 8).

``latent_pgd`` takes one float radius (``check_eps``), so the precompute calls it once per
grid point, each from the same seed; with an (N,) radius it could attack the whole grid in
one batched call (``benchmarks/bench_lat_panel.py`` times the precompute).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.attacks.core import attack_mode, check_labels
from workbench.lat import activations, get_layer, latent_pgd, perturbed, relative_eps
from workbench.viz import Prediction, png_bytes, top_k, top_k_html
from workbench.widgets.views import enlarged_png, single_image

LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
FRACTIONS = tuple(round(i * 0.05, 6) for i in range(21))  # 0, 0.05, ..., 1.0
START_FRACTION = 0.3  # notebook 04's default radius (workbench.lat.experiment.DEFAULT_FRACTION)
DISPLAY_PX = 192  # small images are shown enlarged by a whole factor, pixels kept sharp
# A diverging colour map (ColorBrewer RdBu, reversed): blue for < 0, near white at 0, red > 0.
_ANCHORS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
_COLOURS = np.array([(33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130),
                     (178, 24, 43)], dtype=np.float64)


@dataclass
class LatentPanelResult:
    """What the panel shows.

    ``layer`` and ``fraction`` are the sliders' values; ``eps`` the absolute radius latent PGD
    had (``fraction * ||h||``, the layer's own units); ``relative_norm`` the perturbation's
    ``||delta|| / ||h||`` (at most ``fraction``; below it when the steps did not reach the
    ball's edge); ``channel_mean`` (h, w) the mean over channels of delta at the layer's
    resolution (what the heatmap draws); the top-5 clean and with the perturbation added;
    ``predicted`` the class predicted with it; ``changed`` whether that differs from the
    clean prediction.
    """

    layer: str
    fraction: float
    eps: float
    relative_norm: float
    channel_mean: torch.Tensor
    top5_clean: list[Prediction]
    top5_perturbed: list[Prediction]
    predicted: int
    changed: bool


@dataclass(frozen=True)
class LatentFrame:
    """What one (layer, radius) position shows, computed once: the heatmap as PNG bytes, its
    colour legend, the norm line, the status line and the "top-5 perturbed" bars as HTML, and
    the numbers."""

    heatmap: bytes
    legend: str
    norm_html: str
    status: str
    top5_html: str
    top5: list[Prediction]
    eps: float
    relative_norm: float


@dataclass
class LayerGrid:
    """Latent PGD at one layer over the radius grid (E radii, K classes): ``eps`` (E,)
    absolute radii, ``relative_norms`` (E,), ``probs`` (E, K), ``channel_means`` (E, h, w),
    ``limits`` (E,) each heatmap's symmetric colour limit (its largest |value|; 1 when all
    are 0), ``shape`` the layer's output shape for one example, and one
    :class:`LatentFrame` per radius."""

    layer: str
    activation_norm: float
    shape: tuple[int, ...]
    eps: torch.Tensor
    relative_norms: torch.Tensor
    probs: torch.Tensor
    channel_means: torch.Tensor
    limits: torch.Tensor
    frames: list[LatentFrame]


# ----------------------------------------------------------------------------- input checks

def _one_image(model, image) -> torch.Tensor:
    """One image (C, H, W) or (1, C, H, W) in [0, 1] -> (1, C, H, W) on the model's device;
    C must be the model's channel count when it declares ``input_size``."""
    expected = getattr(model, "input_size", None)
    channels = int(expected[0]) if expected else None
    c = channels if channels else "C"
    if isinstance(image, torch.Tensor):
        wrong = image.dim() not in (3, 4) or (image.dim() == 4 and image.shape[0] != 1) or (
            channels is not None and image.shape[-3] != channels)
        got = tuple(image.shape)
    else:
        wrong, got = True, type(image).__name__
    if wrong:
        size = f" (the model takes {tuple(expected)})" if expected else ""
        raise ValueError(f"the panel shows one image: pass a tensor ({c}, H, W) or (1, {c}, H, "
                         f"W) in [0, 1]{size}, got {got}")
    return single_image(model, image)


def _fractions(fractions) -> list[float]:
    if isinstance(fractions, torch.Tensor):
        fractions = fractions.flatten().tolist()
    values = []
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, Real) or not math.isfinite(f) or f < 0:
            raise ValueError(f"fractions must be finite numbers >= 0 (radius / activation "
                             f"norm), got {f!r}")
        values.append(round(float(f), 6))
    if not values:
        raise ValueError("fractions is empty: give the radius grid, e.g. (0, 0.1, 0.3, 1.0)")
    return sorted(set(values))


def _layers(model, layers) -> list[str]:
    if isinstance(layers, str):
        layers = (layers,)
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ValueError("layers is empty: name at least one layer, e.g. ('layer2',)")
    for layer in layers:
        if not isinstance(layer, str):
            raise ValueError(f"layer names must be strings, got {layer!r}")
        get_layer(model, layer)  # ValueError listing the valid names
    return layers


# ----------------------------------------------------------------------------- pictures

def channel_mean(delta: torch.Tensor) -> torch.Tensor:
    """The mean over channels of perturbations (E, C, h, w) -> (E, h, w); other shapes: (E, C,
    L) -> (E, 1, L) and (E, D) -> (E, 1, D) (a strip: no channel axis to average)."""
    delta = delta.detach().float()
    if delta.dim() == 4:
        return delta.mean(1)
    if delta.dim() == 3:
        return delta.mean(1, keepdim=True)
    return delta.flatten(1)[:, None, :]


def diverging_rgb(values: np.ndarray, limit: float) -> np.ndarray:
    """Values (...) -> colours (..., 3) uint8: -limit blue, 0 near white, +limit red."""
    t = np.clip(values / limit, -1.0, 1.0) if limit > 0 else np.zeros_like(values)
    rgb = np.stack([np.interp(t, _ANCHORS, _COLOURS[:, i]) for i in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def _legend_html(limit: float, layer: str, shape: tuple[int, ...]) -> str:
    stops = ", ".join(f"rgb{tuple(int(v) for v in c)}" for c in _COLOURS)
    where = (f"{shape[-2]} x {shape[-1]}, upsampled" if len(shape) == 3
             else f"{int(np.prod(shape))} values as a strip")
    return (f"<div style='font-size:11px'><div>mean over channels of delta at <b>"
            f"{html.escape(layer)}</b> ({where})</div>"
            "<div style='display:flex;align-items:center;gap:4px'>"
            f"<span>-{limit:.3g}</span><div style='width:120px;height:10px;"
            f"background:linear-gradient(to right, {stops})'></div><span>+{limit:.3g}</span>"
            "<span>(activation units)</span></div></div>")


def _display_factor(height: int, width: int) -> int:
    return max(1, round(DISPLAY_PX / max(height, width)))


# ----------------------------------------------------------------------------- precompute

def attack_layer(model, layer: str, x: torch.Tensor, y: torch.Tensor, fractions: list[float],
                 *, steps: int, seed: int, bar=None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Latent PGD at ``layer`` on the image x (1, C, H, W) with label y (1,), at radius
    ``fraction * ||h||`` for each fraction (E,), each from ``seed``. Returns (deltas (E, ...)
    float32, eps (E,) absolute radii, ||h||). A radius of 0 is the zero perturbation (what
    latent_pgd returns for it) without running the attack."""
    activation_norm = relative_eps(model, layer, x, 1.0)  # one image: its ||h||
    eps = torch.tensor([f * activation_norm for f in fractions], dtype=torch.float64)
    deltas = []
    for e in eps.tolist():
        if e == 0:
            with attack_mode(model):  # eval mode, as latent_pgd runs
                hidden = activations(model, layer, x)
            deltas.append(torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device))
        else:
            deltas.append(latent_pgd(model, layer, x, y, eps=e, steps=steps,
                                     generator=torch.Generator().manual_seed(seed)))
        if bar is not None:
            bar.update(1)
    return torch.cat(deltas), eps, activation_norm


def _layer_grid(model, layer: str, x: torch.Tensor, y: torch.Tensor, fractions: list[float], *,
                steps: int, seed: int, categories, clean: int, label: int, model_label: str,
                image_size: tuple[int, int], factor: int, bar) -> LayerGrid:
    deltas, eps, activation_norm = attack_layer(model, layer, x, y, fractions, steps=steps,
                                                seed=seed, bar=bar)
    n = deltas.shape[0]
    batch = x.expand(n, *x.shape[1:])
    with attack_mode(model), torch.no_grad(), perturbed(model, layer, deltas):
        probs = model(batch).float().softmax(dim=1).cpu()
    norms = deltas.flatten(1).norm(dim=1).cpu().double()
    relative = norms / activation_norm if activation_norm > 0 else torch.zeros_like(norms)
    maps = channel_mean(deltas).cpu()  # (E, h, w)
    shape = tuple(deltas.shape[1:])
    del deltas
    limits = maps.flatten(1).abs().amax(1)
    limits = torch.where(limits > 0, limits, torch.ones_like(limits))
    upsampled = F.interpolate(maps[:, None], size=image_size, mode="nearest")[:, 0]
    upsampled = upsampled.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    frames = []
    for e, fraction in enumerate(fractions):
        top5 = top_k(probs[e], categories, k=min(5, len(categories)))
        predicted = top5[0].index
        changed = predicted != clean
        verdict = ("<span style='color:#c62828'>prediction changed</span>" if changed
                   else "prediction unchanged")
        limit = float(limits[e])
        frames.append(LatentFrame(
            heatmap=png_bytes(diverging_rgb(upsampled[e].numpy(), limit)),
            legend=_legend_html(limit if fraction > 0 else 0.0, layer, shape),
            norm_html=(f"<span style='font-size:14px'>||delta|| / ||h|| = "
                       f"<b>{float(relative[e]):.2f}</b> (budget {fraction:.2f}; ||h|| = "
                       f"{activation_norm:.3g}, eps = {float(eps[e]):.3g})</span>"),
            status=(f"{html.escape(model_label)}: latent L2 PGD at <b>{html.escape(layer)}</b>, "
                    f"eps = {fraction:.2f} x ||h|| = {float(eps[e]):.3g}, {steps} steps; now "
                    f"'{html.escape(top5[0].name)}' ({100 * top5[0].prob:.1f}%), clean "
                    f"'{html.escape(str(categories[clean]))}': {verdict}"),
            top5_html=top_k_html("top-5 with the perturbation", top5, label=label),
            top5=top5, eps=float(eps[e]), relative_norm=float(relative[e])))
    return LayerGrid(layer=layer, activation_norm=activation_norm,
                     shape=shape, eps=eps.float(),
                     relative_norms=relative.float(), probs=probs, channel_means=maps,
                     limits=limits, frames=frames)


# ----------------------------------------------------------------------------- the panel

class LatentPanel:
    """Widgets over :func:`workbench.lat.latent_pgd` for one image.

    ``.controls``: "layer" (a SelectionSlider over the layer names) and "eps" (a
    SelectionSlider over the radius grid; its value is the fraction of ``||h||``); both are
    lookups and update live. ``.result`` is the latest :class:`LatentPanelResult`, updated
    synchronously whenever a control's ``.value`` changes; ``.grids`` maps each layer to its
    :class:`LayerGrid`; ``.update()`` redraws for the current values.
    """

    def __init__(self, model, image: torch.Tensor, label: int | None = None, *,
                 layers=LAYERS, fractions=FRACTIONS, steps: int = 6, seed: int = 0,
                 progress: bool = True):
        import ipywidgets as w

        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
        self.model, self.x = model, _one_image(model, image)
        self.layers = _layers(model, layers)
        self.fractions = _fractions(fractions)
        self.steps, self.seed = steps, seed
        with attack_mode(model), torch.no_grad():
            clean_probs = model(self.x).float().softmax(dim=1)[0].cpu()
        categories = getattr(model, "categories", None) or [str(i) for i in
                                                            range(clean_probs.numel())]
        self.categories = list(categories)
        self.top5_clean = top_k(clean_probs, self.categories, k=min(5, len(self.categories)))
        self.clean = self.top5_clean[0].index
        self.label = self.clean if label is None else int(label)
        check_labels(torch.tensor([self.label]), len(self.categories), name="label")
        cfg = getattr(model, "cfg", None)
        model_label = getattr(cfg, "label", None) or type(model).__name__

        height, width = self.x.shape[-2:]
        factor = _display_factor(height, width)
        y = torch.tensor([self.label], device=self.x.device)
        self.grids: dict[str, LayerGrid] = {}
        bar = tqdm(total=len(self.layers) * len(self.fractions), leave=False,
                   disable=not progress,
                   desc=f"latent PGD over {len(self.layers)} layers x "
                        f"{len(self.fractions)} radii")
        try:
            for layer in self.layers:
                bar.set_postfix_str(layer)
                grid = _layer_grid(model, layer, self.x, y, self.fractions, steps=steps,
                                   seed=seed, categories=self.categories, clean=self.clean,
                                   label=self.label, model_label=model_label,
                                   image_size=(height, width), factor=factor, bar=bar)
                self.grids[layer] = grid
        finally:
            bar.close()

        side = dict(width=f"{width * factor}px", height=f"{height * factor}px")
        self.images = {
            "image": w.Image(value=enlarged_png(self.x, factor), format="png",
                             layout=w.Layout(**side)),
            "heatmap": w.Image(format="png", layout=w.Layout(**side)),
        }
        self.legend = w.HTML()
        self.norm = w.HTML()
        self.status = w.HTML()
        label_note = ("" if self.label == self.clean else
                      f" (attacked label '{html.escape(str(self.categories[self.label]))}')")
        self.bars_clean = w.HTML(top_k_html("top-5 clean", self.top5_clean, label=self.label)
                                 + label_note)
        self.bars_perturbed = w.HTML()
        start_layer = self.layers[(len(self.layers) - 1) // 2]
        start = min(self.fractions, key=lambda f: abs(f - START_FRACTION))
        self.controls = {
            "layer": w.SelectionSlider(options=self.layers, value=start_layer,
                                       description="layer"),
            "eps": w.SelectionSlider(options=[(f"{f:.2f}", f) for f in self.fractions],
                                     value=start, description="eps / ||h||"),
        }
        self.widget = w.VBox([
            w.HBox([self.controls["layer"], self.controls["eps"]]),
            self.status,
            w.HBox([w.VBox([w.HTML("<b>image</b>"), self.images["image"]]),
                    w.VBox([w.HTML("<b>latent perturbation</b>"), self.images["heatmap"],
                            self.legend])]),
            self.norm,
            w.HBox([self.bars_clean, self.bars_perturbed]),
        ])
        self.result: LatentPanelResult | None = None
        for control in self.controls.values():
            control.observe(lambda change: self.update(), names="value")
        self.update()

    def update(self) -> LatentPanelResult:
        """Show the precomputed frame for the sliders' values; refresh ``.result``."""
        layer = self.controls["layer"].value
        fraction = self.controls["eps"].value
        grid = self.grids[layer]
        e = self.fractions.index(fraction)
        frame = grid.frames[e]
        self.images["heatmap"].value = frame.heatmap
        self.legend.value = frame.legend
        self.norm.value = frame.norm_html
        self.status.value = frame.status
        self.bars_perturbed.value = frame.top5_html
        predicted = frame.top5[0].index
        self.result = LatentPanelResult(
            layer=layer, fraction=fraction, eps=frame.eps, relative_norm=frame.relative_norm,
            channel_mean=grid.channel_means[e], top5_clean=self.top5_clean,
            top5_perturbed=frame.top5, predicted=predicted, changed=predicted != self.clean)
        return self.result


def lat_panel(model, image: torch.Tensor, label: int | None = None, *, layers=LAYERS,
              fractions=FRACTIONS, steps: int = 6, seed: int = 0,
              progress: bool = True) -> LatentPanel:
    """Build the latent panel for one image (C, H, W) in [0, 1].

    Args:
        model: classifier returning logits, whose ``layers`` are dotted paths
            (:func:`workbench.lat.get_layer`; an unknown name raises ValueError listing the
            valid ones). ``image``: one image the model takes, (C, H, W) or (1, C, H, W).
        label: the class latent PGD attacks away from; None uses the model's prediction.
        fractions: the radius grid, as fractions of the activation norm ``||h||`` at each
            layer (:func:`workbench.lat.relative_eps`), e.g. 0, 0.05, ..., 1.0.
        steps: latent PGD steps (step size ``eps / steps``); ``seed`` seeds its random start.
        progress: show a progress bar over the precompute.

    Building it runs latent PGD at every layer and radius once (a progress bar); every slider
    move after that is a lookup (``benchmarks/bench_lat_panel.py`` times both). Display it
    with ``display(panel.widget)``; drive it with ``panel.controls["layer"].value = "layer3"``
    and ``panel.controls["eps"].value = 0.5``; read ``panel.result``.
    """
    return LatentPanel(model, image, label, layers=layers, fractions=fractions, steps=steps,
                       seed=seed, progress=progress)
