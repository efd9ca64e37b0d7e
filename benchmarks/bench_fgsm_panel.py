"""FGSM panel: one slider move, the panel's way against the previous and the naive way.

The panel (notebook 02) computes FGSM's direction once per image and target, then one batched
forward over the slider's whole eps grid (0..16/255); a move is a lookup of that grid point's
frame (built, two JPEG encodings, on its first show) and four widget assignments. Compared in
the same run, interleaved move by move so that all see the same machine load:

* previous: the panel before the grid, cached direction but per move one forward pass, two
  PNG encodings and the HTML;
* naive: per move a new gradient, a forward pass and a matplotlib figure (images and top-5
  bars) rendered to PNG.

The one-off precompute (a new panel; a new target) is timed separately. Prints medians and
ratios; the goal (issue 8): panel median well under 20 ms per move on 2 CPU cores. Ratios are
the result, not the absolute figures, which follow the machine's load.

    .venv/bin/python benchmarks/bench_fgsm_panel.py [--sweeps 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from workbench.attacks import fgsm, fgsm_direction  # noqa: E402
from workbench.data import sample_image  # noqa: E402
from workbench.models import load_classifier  # noqa: E402
from workbench.viz import (amplified_perturbation, attack_figure, jpeg_bytes,  # noqa: E402
                           png_bytes, top_k, top_k_html)
from workbench.widgets import fgsm_panel  # noqa: E402
from workbench.widgets.panel_fgsm import EPS_MAX_LEVELS  # noqa: E402


def naive_move(model, x, y, eps, before):
    x_adv = fgsm(model, x[None], torch.tensor([y]), eps)
    with torch.no_grad():
        after = model(x_adv).softmax(1)[0]
    figure = attack_figure(x, x_adv[0], eps, before, top_k(after, model.categories))
    figure.savefig(io.BytesIO(), format="png")
    plt.close(figure)


def previous_move(model, view, direction, eps):
    """What the panel did per move before the eps grid: forward, PNG, HTML."""
    x_adv = (view.x + eps * direction).clamp(0, 1)
    with torch.no_grad():
        probs = model(x_adv).float().softmax(dim=1)[0]
    top5 = top_k(probs, view.categories)
    view.images["perturbation"].value = png_bytes(amplified_perturbation(view.x, x_adv, eps))
    view.images["adversarial"].value = png_bytes(x_adv)
    view.bars_adv.value = top_k_html("top-5 after", top5, label=view.label)
    view.status.value = f"eps = {eps * 255:.0f}/255; now '{top5[0].name}'"


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def ms(seconds) -> str:
    return f"{1000 * statistics.median(seconds):6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweeps", type=int, default=2,
                        help="drags of the slider 0 -> 16/255 -> 0 (34 moves each)")
    parser.add_argument("--repeats", type=int, default=5, help="timings of the precompute")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_classifier("mobilenet_v2", mode="lite", device="cpu")
    x, y = sample_image("coffee")
    with torch.no_grad():
        before = top_k(model(x[None]).softmax(1)[0], model.categories)
    naive_move(model, x, y, 1 / 255, before)  # warm up every path

    # One-off precompute: a new panel (clean forward, gradient, batched forward, first frame),
    # and a new target on an existing panel (gradient, batched forward, first frame).
    build, retarget, single = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        panel = fgsm_panel(model, x, y)
        build.append(time.perf_counter() - start)
        panel.controls["target"].value = panel.view.runner_up()
        retarget.append(timed(setattr, panel.controls["targeted"], "value", True))
        with torch.no_grad():
            single.append(timed(model, x[None]))
    panel = fgsm_panel(model, x, y)
    direction = fgsm_direction(model, x[None], torch.tensor([y]))
    previous_view = fgsm_panel(model, x, y).view

    up = list(range(EPS_MAX_LEVELS + 1))
    levels = (up + up[::-1]) * args.sweeps
    panel_first, panel_again, previous, naive = [], [], [], []
    seen = set()
    for level in levels:
        eps = level / 255
        (panel_again if level in seen else panel_first).append(
            timed(setattr, panel.controls["eps"], "value", eps))
        seen.add(level)
        previous.append(timed(previous_move, model, previous_view, direction, eps))
        naive.append(timed(naive_move, model, x, y, eps, before))
    panel_all = panel_first + panel_again

    adv = (x[None] + 4 / 255 * direction).clamp(0, 1)
    pert = amplified_perturbation(x[None], adv, 4 / 255)
    encode = {name: [timed(encoder, image) for _ in range(20) for image in (adv, pert)]
              for name, encoder in (("png", png_bytes), ("jpeg", jpeg_bytes))}

    print(f"torch threads: {torch.get_num_threads()}, moves per method: {len(levels)} "
          f"({args.sweeps} drags 0 -> {EPS_MAX_LEVELS}/255 -> 0)")
    print(f"one-off, new panel (clean forward, gradient, batched forward over "
          f"{EPS_MAX_LEVELS + 1} eps, first frame): {ms(build)}")
    print(f"one-off, new target (gradient, batched forward, first frame):          "
          f"{ms(retarget)}")
    print(f"reference: one forward pass {ms(single)}; one 224 px encoding of a noisy image: "
          f"PNG {ms(encode['png'])}, JPEG {ms(encode['jpeg'])}")
    print(f"panel, every move:              median {ms(panel_all)}")
    print(f"panel, first show of an eps:    median {ms(panel_first)} (frame built: 2 JPEGs)")
    print(f"panel, eps shown before:        median {ms(panel_again)} (lookup only)")
    print(f"previous (forward + 2 PNG):     median {ms(previous)}")
    print(f"naive (gradient + forward + matplotlib PNG): median {ms(naive)}")
    p = statistics.median(panel_all)
    print(f"ratios: previous / panel {statistics.median(previous) / p:.1f}x, "
          f"naive / panel {statistics.median(naive) / p:.1f}x, "
          f"precompute (new target) / previous move "
          f"{statistics.median(retarget) / statistics.median(previous):.1f} moves; "
          f"goal: panel well under 20 ms")


if __name__ == "__main__":
    main()
