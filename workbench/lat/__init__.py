"""Latent adversarial training (Casper et al., TMLR 2025): perturbations of a hidden layer's
activations instead of the input, the fine-tuning loops FT, RLP, AT and LAT, and the trojan
experiment of notebook 04."""
