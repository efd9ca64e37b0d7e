"""Residual-stream PGD: the cached prefix against the naive attack, side by side in one run.

``residual_pgd`` runs the blocks below the attacked layer once per batch and, at each step,
only the blocks above it (forward and backward). The naive attack, the way the reference
code runs it (``perturb_layer`` in a full forward), recomputes the whole model from the token
ids at every step. Both take the same steps from the same random start, so they return the
same perturbation (checked). Prints the median time of each over the repeats, interleaved,
and their ratio. Model: a random-initialised keras-hub Llama, 4 layers, 64 wide, on the torch
backend; batch 32 x 16 tokens of 8-16 real ones (right padding); layer 2; 6 steps.

    .venv/bin/python benchmarks/bench_residual_pgd.py [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from workbench.attacks.pgd import ascent_step, project
from workbench.lat import residual
from workbench.lat.residual import hidden_states, logits_from, residual_pgd

VOCAB, N, T, LAYER, STEPS, EPS = 512, 32, 16, 2, 6, 1.0


def naive_pgd(backbone, ids, mask, loss_fn, start):
    """The same attack without the cache: every step runs the model from the token ids."""
    real = mask[..., None].float()
    delta = start
    for _ in range(STEPS):
        delta.requires_grad_(True)
        perturbed = hidden_states(backbone, ids, mask, layer=LAYER) + delta
        (grad,) = torch.autograd.grad(loss_fn(logits_from(backbone, perturbed, mask,
                                                          layer=LAYER)), delta)
        delta = project(delta.detach() + ascent_step(grad * real, EPS / STEPS, "l2"), EPS, "l2")
    return delta.detach()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads (2: a notebook kernel on 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    residual.keras.utils.set_random_seed(0)
    backbone = residual.keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=4, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=64, intermediate_dim=128)
    data = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (N, T), generator=data)
    mask = (torch.arange(T)[None] < torch.randint(8, T + 1, (N, 1), generator=data)).int()

    def loss_fn(logits):  # next-token cross-entropy at the real targets
        ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, VOCAB), ids[:, 1:].reshape(-1),
                             reduction="none")
        return (ce * mask[:, 1:].reshape(-1)).sum()

    # residual_pgd's random start: one step of size 0 from it (a start inside the ball stays)
    start = residual_pgd(backbone, ids, mask, loss_fn, layer=LAYER, eps=EPS, steps=1, alpha=0.0,
                         generator=torch.Generator().manual_seed(0))
    attacks = {
        "cached prefix (residual_pgd)": lambda: residual_pgd(
            backbone, ids, mask, loss_fn, layer=LAYER, eps=EPS, steps=STEPS,
            generator=torch.Generator().manual_seed(0)),
        "naive (whole model each step)": lambda: naive_pgd(backbone, ids, mask, loss_fn,
                                                           start.clone()),
    }
    results = {name: attack() for name, attack in attacks.items()}  # also a warm-up
    cached, naive = results.values()
    print(f"same perturbation: max |difference| {float((cached - naive).abs().max()):.1e}")
    times = {name: [] for name in attacks}
    for _ in range(args.repeats):
        for name, attack in attacks.items():
            began = time.perf_counter()
            attack()
            times[name].append(time.perf_counter() - began)
    print(f"Llama 4 layers x 64 wide, batch {N} x {T} tokens, layer {LAYER}, {STEPS} steps, "
          f"torch threads {args.threads}, median of {args.repeats}:")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"  {name}: {1000 * value:.0f} ms (min {1000 * min(times[name]):.0f} ms)")
    cached_time, naive_time = medians.values()
    print(f"ratio naive / cached: {naive_time / cached_time:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
