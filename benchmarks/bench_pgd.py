"""PGD: torchattacks' PGD against workbench.attacks.pgd, side by side in one run.

The same model (the lite ImageNet classifier, EfficientNet-Lite0, which takes [0, 1] images
and returns logits, as torchattacks expects), the same batch of 8 at 224 px (the labelled
sample photos, centre crop and one random crop each), the same budget: L-inf, eps 8/255,
alpha 2/255, 10 steps, random start on both. Repetitions are interleaved (ABBA order), so both
attacks see the same machine load. Prints images per second for each (from the median time),
the ratio (headline: the median over repetitions of the ratio within a repetition), and each
attack's success rate (share of images no longer classified as their label; for torchattacks
measured with a separate forward pass outside its timing, ours is part of its result and of
its time). Goal (issue 3): ours >= 1.5x torchattacks' throughput, with at least its success
rate.

torch runs on 2 intra-op threads (``torch.set_num_threads(2)``, set here explicitly), the 2
cores of the CI machine. The machine may be shared: the load average is printed before and
after; read the ratio, which interleaving protects, rather than the absolute numbers.

torchattacks pins an old ``requests`` (which it does not import): install it for benchmarks
only, without its dependencies (it needs torch, numpy and scipy at run time, which the
workbench already has)::

    .venv/bin/pip install --no-deps torchattacks

Run::

    .venv/bin/python benchmarks/bench_pgd.py [--reps 5] [--variants]

``--variants`` also times our PGD with its two CPU speed-ups switched on and off: channels-last
(NHWC) images and micro-batches, the measurements behind ``CHANNELS_LAST`` and
``MICRO_BATCH_VALUES`` in ``workbench.attacks.pgd``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from workbench.attacks import attack_success, pgd
from workbench.attacks.pgd import CHANNELS_LAST, MICRO_BATCH_VALUES
from workbench.data import photo_batch
from workbench.models import load_classifier

INSTALL = ".venv/bin/pip install --no-deps torchattacks"
EPS, ALPHA, STEPS, BATCH = 8 / 255, 2 / 255, 10, 8


def load() -> str:
    return "load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="timed runs per attack")
    parser.add_argument("--variants", action="store_true",
                        help="also time our PGD with its CPU speed-ups (NHWC images, "
                             "micro-batches) switched on and off")
    args = parser.parse_args()
    try:
        import torchattacks
    except ImportError:
        print(f"torchattacks is not installed; this benchmark compares against it. Install it "
              f"for benchmarks only, without its dependencies (it pins an old requests):\n"
              f"    {INSTALL}", file=sys.stderr)
        return 2

    torch.set_num_threads(2)
    model = load_classifier("efficientnet_b0", mode="lite", device="cpu")
    x, y = photo_batch(crops_per_photo=2)  # each labelled photo: centre crop + a random crop
    x, y = x[:BATCH], y[:BATCH]
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, "
          f"threads {torch.get_num_threads()}, device cpu")
    print(f"model: {model.source.split(' stands in')[0]}")
    print(f"batch: {len(y)} views of {len(set(y.tolist()))} labelled photos at {x.shape[-1]} px, "
          f"clean accuracy {clean:.2f}; "
          f"L-inf eps 8/255, alpha 2/255, {STEPS} steps, random start; {args.reps} timed runs "
          f"each, interleaved")
    print(load())

    theirs_attack = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)

    def theirs(seed):
        torch.manual_seed(seed)  # torchattacks draws its start from the global generator
        return theirs_attack(x, y)

    def ours(seed):
        return pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True,
                   generator=torch.Generator().manual_seed(seed))

    theirs(0), ours(0)  # warm up both (oneDNN primitive caches, allocator)
    times = {"torchattacks": [], "workbench": []}
    success = {"torchattacks": [], "workbench": []}
    for rep in range(args.reps):
        order = ("torchattacks", "workbench") if rep % 2 == 0 else ("workbench", "torchattacks")
        for name in order:
            if name == "torchattacks":
                seconds, x_adv = timed(lambda: theirs(rep))
                fooled = attack_success(model, x_adv, y, targeted=False)  # outside the timing
            else:
                seconds, result = timed(lambda: ours(rep))
                x_adv, fooled = result.x_adv, result.success
                assert torch.equal(fooled, attack_success(model, x_adv, y, targeted=False))
            assert (x_adv - x).abs().max() <= EPS + 1e-6 and 0 <= x_adv.min() <= x_adv.max() <= 1
            times[name].append(seconds)
            success[name].append(fooled.float().mean().item())

    print()
    print("time per attack of the batch; ours includes its success (its final forward pass), "
          "torchattacks' does not")
    print(f"{'attack':14s} {'median s':>9s} {'min s':>7s} {'images/s':>9s} {'success':>8s}")
    rate = {}
    for name in ("torchattacks", "workbench"):
        median = statistics.median(times[name])
        rate[name] = len(y) / median
        print(f"{name:14s} {median:9.3f} {min(times[name]):7.3f} {rate[name]:9.2f} "
              f"{statistics.mean(success[name]):8.3f}")
    print("times, s: " + "; ".join(f"{n}: " + " ".join(f"{t:.2f}" for t in ts)
                                    for n, ts in times.items()))
    # Each repetition times the two attacks back to back, so the ratio within a repetition
    # sees one machine load; its median is the headline (robust to load changing between
    # repetitions). The ratio of the medians and of the best times are printed as a check.
    pair = statistics.median(t / o for t, o in zip(times["torchattacks"], times["workbench"]))
    of_medians = rate["workbench"] / rate["torchattacks"]
    of_best = min(times["torchattacks"]) / min(times["workbench"])
    same_success = statistics.mean(success["workbench"]) >= statistics.mean(
        success["torchattacks"])
    print(f"throughput ratio, workbench / torchattacks: {pair:.2f}x (median over repetitions; "
          f"ratio of medians {of_medians:.2f}x, of best times {of_best:.2f}x)")
    print(f"goal >= 1.5x with at least the same success rate: "
          f"{'met' if pair >= 1.5 and same_success else 'NOT met'}")
    print(load())

    if args.variants:
        # Our PGD with the two CPU speed-ups switched on and off (see workbench.attacks.pgd).
        variants = {
            "NHWC, micro-batches of 4 (default)": (True, 4),
            "NHWC, whole batch": (True, 0),
            "NCHW, micro-batches of 4": (False, 4),
            "NCHW, whole batch": (False, 0),
            "NHWC, micro-batches of 2": (True, 2),
        }
        saved = CHANNELS_LAST["cpu"], MICRO_BATCH_VALUES["cpu"]
        variant_times = {name: [] for name in variants}
        try:
            for rep in range(args.reps):
                names = list(variants) if rep % 2 == 0 else list(variants)[::-1]
                for name in names:
                    layout, micro = variants[name]
                    CHANNELS_LAST["cpu"] = layout
                    MICRO_BATCH_VALUES["cpu"] = micro * x[0].numel()
                    variant_times[name].append(timed(lambda: ours(rep))[0])
        finally:
            CHANNELS_LAST["cpu"], MICRO_BATCH_VALUES["cpu"] = saved
        print()
        print("our PGD by image layout and micro-batch on the CPU (the model stays as it is):")
        base = statistics.median(variant_times["NCHW, whole batch"])
        for name, ts in variant_times.items():
            median = statistics.median(ts)
            print(f"  {name:36s} median {median:6.3f} s, {len(y) / median:5.2f} images/s, "
                  f"{base / median:4.2f}x NCHW whole batch; runs: "
                  + " ".join(f"{t:.2f}" for t in ts))
        print(load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
