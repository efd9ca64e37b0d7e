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
