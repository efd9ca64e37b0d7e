"""APGD: ours (``workbench.attacks.apgd``) against torchattacks' APGD, side by side in one run.

The same models (notebook 03's digits CNNs, trained standard, AdvProp and PGD-AT from seed 0,
loaded from the cache or trained), the same 450 held-out digits, the same budget (L-inf
eps 0.15, the training budget), 100 steps, one random start, for the cross-entropy and the
DLR loss. Prints, per model and loss, the robust accuracy each attack leaves (lower is a
stronger attack) and its time, then the worst case over PGD-10, APGD-CE and APGD-DLR
(``workbench.defenses.worst_case.evaluate_robustness``), which notebook 03 reports.

torch runs on one thread, as the digits experiments do. Install torchattacks for
benchmarks only, without its dependencies (it pins an old requests)::

    .venv/bin/pip install --no-deps torchattacks
    .venv/bin/python benchmarks/bench_apgd.py
"""

from __future__ import annotations

import sys
import time

import torch

from workbench.attacks.apgd import apgd
from workbench.data import load_digits_split
from workbench.defenses.worst_case import evaluate_robustness
from workbench.experiments import train_or_load

EPS, STEPS = 0.15, 100


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> int:
    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not installed: .venv/bin/pip install --no-deps torchattacks",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    _, _, x, y = load_digits_split()
    print(f"torchattacks {torchattacks.__version__}; {len(y)} held-out digits; L-inf eps {EPS}, "
          f"{STEPS} steps, 1 random start; robust accuracy (lower: stronger attack) and time")
    print(f"{'model':9s} {'loss':4s} {'workbench':>16s} {'torchattacks':>16s}")
    for method in ("standard", "advprop", "pgd_at"):
        model = train_or_load(method, seed=0).eval()
        for loss in ("ce", "dlr"):
            start = time.perf_counter()
            ours = apgd(model, x, y, eps=EPS, steps=STEPS, loss=loss,
                        generator=torch.Generator().manual_seed(0))
            ours_time = time.perf_counter() - start
            ours_acc = accuracy(model, ours.x_adv, y)
            attack = torchattacks.APGD(model, norm="Linf", eps=EPS, steps=STEPS, n_restarts=1,
                                       loss=loss, seed=0)
            start = time.perf_counter()
            theirs = attack(x, y)
            theirs_time = time.perf_counter() - start
            theirs_acc = accuracy(model, theirs, y)
            print(f"{method:9s} {loss:4s} {ours_acc:7.3f} {ours_time:6.2f} s "
                  f"{theirs_acc:7.3f} {theirs_time:6.2f} s")
        report = evaluate_robustness(model, x, y, eps=EPS, apgd_steps=STEPS)
        print(f"{method:9s} worst case: {report.robust_acc:.3f} ({report.description}; "
              + ", ".join(f"after {k} {v:.3f}" for k, v in report.after.items()) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
