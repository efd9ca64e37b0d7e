"""Fine-tuning by FT, RLP, AT and LAT: one training loop, four ways to perturb a batch.

Casper et al. (TMLR 2025) compare, from the same starting model:

* **ft**: clean fine-tuning, the baseline;
* **rlp**: a *random* latent perturbation of the layer, of the same size as LAT's (the control:
  does aiming matter, or only noise?);
* **at**: input-space adversarial training, PGD on the pixels (Madry et al.);
* **lat**: latent adversarial training (their Algorithm 1): per batch, the perturbation of the
  layer's activations that raises the training loss most (:func:`latent_pgd`), then a step
  on the loss under it.

Each method is a ``batch_loss`` for the loop :func:`workbench.defenses.training.fit`, which
shuffles, steps Adam and draws every random choice from one seeded generator. The
perturbations are found in eval mode (:func:`latent_pgd` and :func:`workbench.attacks.pgd`
put the model in eval mode and back); the step is taken in train mode, as for PGD-AT in
notebook 03.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.attacks import pgd
from workbench.defenses.training import default_alpha, fit
from workbench.lat.latent import latent_pgd, perturbed, random_latent

METHODS = ("ft", "rlp", "at", "lat")


@dataclass(frozen=True)
class Perturbation:
    """Where and how hard each method pushes.

    ``layer``, ``eps`` (absolute, in the layer's units), ``steps`` and ``norm``: the latent
    ball of RLP and LAT. ``input_eps`` (pixel units, L-inf) and ``input_steps``: AT's PGD.
    """

    layer: str = "layer2"
    eps: float = 1.0
    steps: int = 6
    norm: str = "l2"
    input_eps: float = 0.1
    input_steps: int = 5


def lat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, layer: str, eps: float,
             steps: int, norm: str = "l2",
             generator: torch.Generator | None = None) -> torch.Tensor:
    """One LAT step's loss (Algorithm 1): the latent PGD perturbation of ``layer`` for (x, y),
    then the cross-entropy of the model with it added. x (B, C, H, W), y (B,) -> scalar."""
    delta = latent_pgd(model, layer, x, y, eps=eps, steps=steps, norm=norm, generator=generator)
    with perturbed(model, layer, delta):
        return F.cross_entropy(model(x), y)


def batch_loss_for(method: str, perturbation: Perturbation):
    """The ``batch_loss(model, x, y, generator)`` of ``method`` (one of :data:`METHODS`)."""
    p = perturbation
    if method not in METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; choose one of {METHODS}")

    def ft(model, x, y, generator):
        return F.cross_entropy(model(x), y)

    def rlp(model, x, y, generator):
        delta = random_latent(model, p.layer, x, eps=p.eps, norm=p.norm, generator=generator)
        with perturbed(model, p.layer, delta):
            return F.cross_entropy(model(x), y)

    def at(model, x, y, generator):
        x_adv = pgd(model, x, y, eps=p.input_eps, steps=p.input_steps, generator=generator,
                    alpha=default_alpha(p.input_eps, p.input_steps)).x_adv
        return F.cross_entropy(model(x_adv), y)

    def lat(model, x, y, generator):
        return lat_loss(model, x, y, layer=p.layer, eps=p.eps, steps=p.steps, norm=p.norm,
                        generator=generator)

    return {"ft": ft, "rlp": rlp, "at": at, "lat": lat}[method]


def finetune(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, *, method: str,
             perturbation: Perturbation = Perturbation(), epochs: int = 3,
             batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
             progress: bool = True) -> dict:
    """Fine-tune ``model`` in place on (x_train, y_train) by ``method``; its history (see
    :func:`workbench.defenses.training.fit`). x_train (N, C, H, W) in [0, 1], y_train (N,)."""
    return fit(model, x_train, y_train, batch_loss_for(method, perturbation), epochs=epochs,
               batch_size=batch_size, lr=lr, seed=seed, progress=progress, name=method)
