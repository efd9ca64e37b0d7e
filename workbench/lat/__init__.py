"""Latent adversarial training (Casper et al., TMLR 2025): perturbations of a hidden layer's
activations instead of the input, the fine-tuning loops FT, RLP, AT and LAT, and the trojan
experiment of notebook 04."""

from workbench.lat.latent import (activations, get_layer, latent_pgd, layer_names, perturbed,
                                  random_latent, relative_eps)
from workbench.lat.training import METHODS, Perturbation, finetune, lat_loss

__all__ = ["METHODS", "Perturbation", "activations", "finetune", "get_layer", "lat_loss",
           "latent_pgd", "layer_names", "perturbed", "random_latent", "relative_eps"]
