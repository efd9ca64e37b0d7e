"""PGD panel: one eps or steps move, the panel's way against the naive way, side by side.

The panel (``workbench.widgets.pgd_panel``) attacks once per image, norm, step size and target
(one batched PGD over the whole eps grid for 20 steps, every step kept); a move of eps or
steps is then a lookup of a stored step and, the first time it is shown, two JPEG encodings.
The naive way, per move: a fresh PGD at that eps and number of steps, then the same view.
Both show the same thing; the moves run in an interleaved order over the same positions.
Prints the precompute time, the medians of both kinds of move and their ratio. Goal (issue 8):
panel median under 50 ms per move on 2 CPU cores (aim: 20 ms).

    .venv/bin/python benchmarks/bench_pgd_panel.py [--moves 24]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from workbench.attacks import pgd
from workbench.config import keep_freed_memory
from workbench.data import sample_image
from workbench.models import load_classifier
from workbench.widgets import pgd_panel


def naive_move(panel, model, x, label, eps, steps):
    """What a panel without the precompute does on a move: attack, then draw."""
    result = pgd(model, x[None], torch.tensor([label]), eps=eps, alpha=0.25 * eps, steps=steps,
                 generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = model(result.x_adv).softmax(1)[0]
    panel.view.show(result.x_adv, probs, scale=eps, target=None, status=f"eps {eps:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=24, help="timed moves of each kind")
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()  # as config.start() sets it in every notebook
    model = load_classifier("efficientnet_b0", mode="lite", device="cpu")
    x, label = sample_image("coffee")

    start = time.perf_counter()
    panel = pgd_panel(model, x, label, progress=False)
    precompute = time.perf_counter() - start
    print(f"model {model.cfg.label}, coffee photo at 224 px, torch threads 2")
    print(f"precompute (once per image, norm, step size and target): {precompute:.2f} s for "
          f"{len(panel.stored.epsilons)} budgets x {panel.stored.deltas.shape[0]} steps")

    rng = random.Random(0)
    positions = [(rng.randint(1, 16) / 255, rng.randint(1, 20)) for _ in range(args.moves)]
    panel_times, naive_times = [], []
    for i, (eps, steps) in enumerate(positions):
        t = time.perf_counter()
        panel.controls["eps"].value = eps  # each setting of a control is one move
        panel.controls["steps"].value = steps
        panel_times.append((time.perf_counter() - t) / 2)
        if i % 3 == 0:  # the naive way is slow: time a third as many moves
            t = time.perf_counter()
            naive_move(panel, model, x, label, eps, steps)
            naive_times.append(time.perf_counter() - t)
    panel_median = statistics.median(panel_times)
    naive_median = statistics.median(naive_times)
    print(f"panel move (lookup; a frame is built on its first show): median "
          f"{1000 * panel_median:.1f} ms, "
          f"max {1000 * max(panel_times):.1f} ms over {len(panel_times)} moves "
          f"(goal < 50 ms, aim 20 ms)")
    print(f"naive move (a fresh PGD of that many steps, then the view): median "
          f"{1000 * naive_median:.0f} ms over {len(naive_times)} moves")
    print(f"ratio naive / panel: {naive_median / panel_median:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
