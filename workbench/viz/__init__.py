"""Matplotlib figures and fast image encodings for the notebooks and their panels.

matplotlib is imported inside the functions that draw, so the panels, which show images as
PNG or JPEG bytes and bars as HTML, never pay for it.
"""

from workbench.viz.images import (
    Prediction,
    amplified_perturbation,
    jpeg_bytes,
    loss_curve_svg,
    png_bytes,
    to_uint8,
    top_k,
    top_k_html,
)
from workbench.viz.plots import (attack_figure, defense_curves_figure, eps_sweep_figure,
                                 method_comparison_figure, sweep_heatmaps)

__all__ = ["Prediction", "amplified_perturbation", "attack_figure", "defense_curves_figure",
           "eps_sweep_figure",
           "jpeg_bytes", "loss_curve_svg", "method_comparison_figure", "png_bytes",
           "sweep_heatmaps", "to_uint8", "top_k", "top_k_html"]
