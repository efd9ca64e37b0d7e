"""Tensors to pixels and predictions to text, fast enough to run on every slider move."""

from __future__ import annotations

import html
import io
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image


class Prediction(NamedTuple):
    """One row of a top-k list: class id, class name, probability in [0, 1]."""

    index: int
    name: str
    prob: float


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8 array for display."""
    if image.dim() == 4:
        image = image[0]
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0)
    return array.cpu().numpy()


def png_bytes(image: torch.Tensor | np.ndarray) -> bytes:
    """PNG-encode an image tensor (see :func:`to_uint8`) or (H, W, 3) uint8 array.

    Uses the fastest zlib level: a 224 x 224 image encodes in a few milliseconds.
    """
    array = to_uint8(image) if isinstance(image, torch.Tensor) else image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def jpeg_bytes(image: torch.Tensor | np.ndarray, *, quality: int = 95) -> bytes:
    """JPEG-encode an image tensor (see :func:`to_uint8`) or (H, W, 3) uint8 array.

    Five to fifteen times cheaper than :func:`png_bytes` on a noisy 224 x 224 image (an
    adversarial photo or an amplified perturbation, which zlib barely compresses), so it suits
    images encoded for every slider position. Colour is kept at full resolution (4:4:4, no chroma
    subsampling): the perturbation's per-channel signs would otherwise blur into grey.
    ``quality`` is PIL's 1-95 scale. Show the bytes with ``ipywidgets.Image(format="jpeg")``.
    """
    array = to_uint8(image) if isinstance(image, torch.Tensor) else image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def amplified_perturbation(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """The perturbation made visible: ``0.5 + (x_adv - x) / (2 eps)``, so -eps is black, 0 mid
    grey and +eps white. Shapes: (..., 3, H, W) -> same, in [0, 1]."""
    if eps <= 0:
        return torch.full_like(x, 0.5)
    return (0.5 + (x_adv - x) / (2 * eps)).clamp(0, 1)


def top_k(probs: torch.Tensor, categories: Sequence[str], k: int = 5) -> list[Prediction]:
    """The k most probable classes of one example. probs: (num_classes,) or (1, num_classes)."""
    probs = probs.detach().float().reshape(-1).cpu()
    values, indices = probs.topk(k)
    return [Prediction(int(i), categories[int(i)], float(v)) for v, i in zip(values, indices)]


def top_k_html(title: str, predictions: Sequence[Prediction], *, label: int | None = None,
               target: int | None = None) -> str:
    """A top-k list as an HTML table of bars: the true label in green, the target in red."""
    rows = []
    for pred in predictions:
        colour = "#2e7d32" if pred.index == label else "#c62828" if pred.index == target else "#1565c0"
        width = max(1.0, 100 * pred.prob)
        rows.append(
            "<tr>"
            f"<td style='padding:1px 6px;white-space:nowrap'>{html.escape(pred.name)}</td>"
            "<td style='width:160px;padding:1px 0'>"
            f"<div style='background:{colour};height:12px;width:{width:.1f}%'></div></td>"
            f"<td style='padding:1px 6px;text-align:right'>{100 * pred.prob:.1f}%</td>"
            "</tr>"
        )
    return (f"<div><b>{html.escape(title)}</b><table style='font-size:12px'>"
            f"{''.join(rows)}</table></div>")


def loss_curve_svg(values: Sequence[float], *, steps: int, title: str,
                   ylabel: str = "objective (nats)", width: int = 320, height: int = 180) -> str:
    """A small line chart as inline SVG (no matplotlib, cheap enough to redraw every step).

    ``values`` are the objective after steps 1..len(values); the x axis runs to ``steps``.
    """
    left, right, top, bottom = 48, 10, 22, 34
    inner_w, inner_h = width - left - right, height - top - bottom
    shown = [float(v) for v in values]
    low, high = (min(shown), max(shown)) if shown else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    xs = [left + inner_w * (i + 1) / max(steps, 1) for i in range(len(shown))]
    ys = [top + inner_h * (1 - (v - low) / (high - low)) for v in shown]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    axis = "stroke='#555' stroke-width='1'"
    text = "font-size='10' fill='#333' font-family='sans-serif'"
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
        f"<text x='{width / 2}' y='14' text-anchor='middle' {text} font-weight='bold'>"
        f"{html.escape(title)}</text>"
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + inner_h}' {axis}/>"
        f"<line x1='{left}' y1='{top + inner_h}' x2='{left + inner_w}' y2='{top + inner_h}' {axis}/>"
        f"<text x='{left - 4}' y='{top + 4}' text-anchor='end' {text}>{high:.2f}</text>"
        f"<text x='{left - 4}' y='{top + inner_h}' text-anchor='end' {text}>{low:.2f}</text>"
        f"<text x='{left}' y='{height - 18}' text-anchor='middle' {text}>0</text>"
        f"<text x='{left + inner_w}' y='{height - 18}' text-anchor='middle' {text}>{steps}</text>"
        f"<text x='{left + inner_w / 2}' y='{height - 4}' text-anchor='middle' {text}>step</text>"
        f"<text x='10' y='{top + inner_h / 2}' text-anchor='middle' {text} "
        f"transform='rotate(-90 10 {top + inner_h / 2})'>{html.escape(ylabel)}</text>"
        f"<polyline points='{points}' fill='none' stroke='#1565c0' stroke-width='2'/>"
        "</svg>"
    )
