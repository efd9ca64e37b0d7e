"""Latent panel: one layer or eps move, the panel's way against the naive way, side by side.

The panel (``workbench.widgets.lat_panel``, notebook 04) runs latent PGD once per layer and
radius of its grid when it is built, with one batched forward per layer for the predictions
and every frame encoded then; a move of the layer or eps slider is a lookup and five widget
assignments. The naive way, per move: a fresh ``latent_pgd`` at that layer and radius, a
forward pass with the perturbation added, and the same view (heatmap PNG, HTML). Both show
the same thing. Prints the precompute time, the median and max of the panel's moves over
every grid point, the naive median and their ratio. Goal (DESIGN, issue 11): every move under
50 ms on 2 CPU cores after the one-off precompute. The weights do not change the timings, so
the digits ResNet is used as initialised (seed 0), in eval mode.

    .venv/bin/python benchmarks/bench_lat_panel.py [--naive-every 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from workbench.attacks.core import attack_mode
from workbench.config import keep_freed_memory
from workbench.data import load_digits_split
from workbench.lat import activations, latent_pgd, perturbed, relative_eps
from workbench.lat.models import digits_resnet
from workbench.viz import png_bytes, top_k, top_k_html
from workbench.widgets import lat_panel
from workbench.widgets.panel_lat import channel_mean, diverging_rgb


def naive_move(panel, model, x, label, layer, fraction):
    """What a panel without the precompute does on a move: attack, predict, draw."""
    eps = relative_eps(model, layer, x, fraction)
    y = torch.tensor([label])
    delta = latent_pgd(model, layer, x, y, eps=eps, steps=panel.steps,
                       generator=torch.Generator().manual_seed(panel.seed))
    with attack_mode(model), torch.no_grad(), perturbed(model, layer, delta):
        probs = model(x).softmax(1)[0]
    with attack_mode(model):
        h_norm = float(activations(model, layer, x).norm())
    maps = channel_mean(delta)
    side = int(panel.images["heatmap"].layout.width.removesuffix("px"))  # the panel's size
    up = F.interpolate(maps[:, None], size=(side, side), mode="nearest")[0, 0]
    limit = float(maps.abs().max()) or 1.0
    panel.images["heatmap"].value = png_bytes(diverging_rgb(up.numpy(), limit))
    panel.norm.value = f"||delta|| / ||h|| = {float(delta.norm()) / h_norm:.2f}"
    panel.bars_perturbed.value = top_k_html("top-5 with the perturbation",
                                            top_k(probs, panel.categories), label=label)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--naive-every", type=int, default=3,
                        help="time the naive way on every n-th grid point (it is slow)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads (2: a notebook kernel on 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as config.start() sets it in every notebook
    model = digits_resnet(seed=0).eval()
    *_, x_test, y_test = load_digits_split()
    x, label = x_test[0], int(y_test[0])

    start = time.perf_counter()
    panel = lat_panel(model, x, label, progress=False)
    precompute = time.perf_counter() - start
    layers, fractions = panel.layers, panel.fractions
    print(f"model {model.cfg.label}, one 1 x 16 x 16 digit, torch threads {args.threads}, "
          f"{panel.steps} latent PGD steps")
    print(f"precompute (once per image): {precompute:.2f} s for {len(layers)} layers x "
          f"{len(fractions)} radii = {len(layers) * len(fractions)} latent PGD runs "
          f"({1000 * precompute / (len(layers) * len(fractions)):.0f} ms each, one call per "
          f"radius: latent_pgd takes a float eps)")

    rng = random.Random(0)
    positions = [(layer, f) for layer in layers for f in fractions]
    rng.shuffle(positions)
    panel_times, naive_times = [], []
    for i, (layer, fraction) in enumerate(positions):
        for name, value in (("layer", layer), ("eps", fraction)):
            t = time.perf_counter()
            panel.controls[name].value = value  # each setting of a control is one move
            panel_times.append(time.perf_counter() - t)
        assert (panel.result.layer, panel.result.fraction) == (layer, fraction)
        if i % args.naive_every == 0:
            t = time.perf_counter()
            naive_move(panel, model, x[None], label, layer, fraction)
            naive_times.append(time.perf_counter() - t)
    panel_median = statistics.median(panel_times)
    naive_median = statistics.median(naive_times)
    print(f"panel move (lookup): median {1000 * panel_median:.2f} ms, max "
          f"{1000 * max(panel_times):.2f} ms over {len(panel_times)} moves visiting all "
          f"{len(positions)} grid points (goal < 50 ms)")
    print(f"naive move (a fresh latent_pgd, a forward, the view): median "
          f"{1000 * naive_median:.0f} ms, max {1000 * max(naive_times):.0f} ms over "
          f"{len(naive_times)} moves")
    print(f"ratio naive / panel (medians): {naive_median / panel_median:.0f}x; the precompute "
          f"costs {precompute / naive_median:.0f} naive moves")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
