"""FGSM panel: one slider move, the panel's way against the naive way, side by side.

The panel computes FGSM's direction once per image and target (it does not depend on eps);
a move is then one forward pass and three small PNG encodings. The naive way, per move:
a new gradient, a forward pass, and a matplotlib figure (images and top-5 bars) rendered to
PNG. Prints both medians and their ratio. Goal (issue 2): panel median <= 50 ms and at least
5 times faster than naive, on 2 CPU cores.

    .venv/bin/python benchmarks/bench_fgsm_panel.py [--moves 34]
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

from workbench.attacks import fgsm  # noqa: E402
from workbench.data import sample_image  # noqa: E402
from workbench.models import load_classifier  # noqa: E402
from workbench.viz import attack_figure, top_k  # noqa: E402
from workbench.widgets import fgsm_panel  # noqa: E402


def naive_move(model, x, y, eps, before):
    x_adv = fgsm(model, x[None], torch.tensor([y]), eps)
    with torch.no_grad():
        after = model(x_adv).softmax(1)[0]
    figure = attack_figure(x, x_adv[0], eps, before, top_k(after, model.categories))
    figure.savefig(io.BytesIO(), format="png")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--moves", type=int, default=34, help="slider moves per method")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_classifier("mobilenet_v2", mode="lite", device="cpu")
    x, y = sample_image("coffee")
    with torch.no_grad():
        before = top_k(model(x[None]).softmax(1)[0], model.categories)
    panel = fgsm_panel(model, x, y)
    levels = [i % 17 for i in range(args.moves)]
    naive_move(model, x, y, 1 / 255, before)  # warm up both paths
    panel.controls["eps"].value = 3 / 255

    panel_times, naive_times = [], []
    for level in levels:  # interleaved, so both see the same machine load
        start = time.perf_counter()
        panel.controls["eps"].value = level / 255
        panel_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        naive_move(model, x, y, level / 255, before)
        naive_times.append(time.perf_counter() - start)
    panel_ms = 1000 * statistics.median(panel_times)
    naive_ms = 1000 * statistics.median(naive_times)
    print(f"moves per method: {len(levels)}, torch threads: {torch.get_num_threads()}")
    print(f"panel (cached direction, PNG + HTML): median {panel_ms:.1f} ms per move")
    print(f"naive (gradient + forward + matplotlib PNG): median {naive_ms:.1f} ms per move")
    print(f"speed-up: {naive_ms / panel_ms:.1f}x (goal >= 5x; panel goal <= 50 ms)")


if __name__ == "__main__":
    main()
