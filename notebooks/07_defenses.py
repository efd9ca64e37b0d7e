# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Defences beyond adversarial training, and the adaptive attacks that test them
#
# Adversarial training (notebooks 03 to 05) is expensive. The defences people reach for first
# are cheaper: squeeze the input (fewer colours, a median filter), distil the model at a high
# temperature, or clean the input with an autoencoder. Many of them look strong against the
# attack they were tested with and fall to an attack that knows they are there (Athalye,
# Carlini and Wagner 2018, "Obfuscated Gradients Give a False Sense of Security"; Carlini and
# Wagner 2017 on distillation; Tramer et al. 2020, "On Adaptive Attacks to Adversarial Example
# Defenses"). In this notebook you
#
# * build three such defences on the digits model of notebook 03 and see how each one
#   **breaks the gradient** that PGD follows;
# * write the two adaptive attacks that repair it: **BPDA** (Backward Pass Differentiable
#   Approximation) through bit-depth reduction, and the attack **through the autoencoder**;
# * compare every defence under the naive, the autograd and the adaptive attack over three
#   seeds, with a slider over epsilon, and run the **sanity checks** every robustness
#   evaluation should pass.
#
# The lesson Athalye et al. draw: a gap between the naive and the adaptive accuracy means the
# defence was masking gradients, not removing adversarial examples.

# %%
# Colab only: install the course package (resilient-ai-workbench) without upgrading what
# Colab ships (torch, torchvision, ipywidgets, TensorFlow, keras); pip's output shows if it fails.
import importlib.util
import subprocess
import sys

PACKAGE = "resilient-ai-workbench @ git+https://github.com/resilient-ai/workbench"
NEEDED = ('workbench',)
if "google.colab" in sys.modules and any(importlib.util.find_spec(m) is None for m in NEEDED):
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE],
                             capture_output=True, text=True)
    if install.returncode != 0:
        print(install.stdout[-4000:], install.stderr[-4000:], sep="\n")
        raise RuntimeError("pip could not install the course package: its output is above. Check "
                           "that the runtime is online, then run this cell again; if it fails "
                           "again, Runtime > Disconnect and delete runtime, and run it once more.")

# %%
import inspect

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import display
from torch import nn

from workbench.attacks import pgd
from workbench.config import start
from workbench.data import load_digits_split
from workbench.defense_experiment import defences
from workbench.defenses.evaluation import accuracy
from workbench.defenses.squeezing import bit_depth, median_smooth
from workbench.exercises import check

device = start(seed=0)
x_train, y_train, x_test, y_test = load_digits_split()
models = defences(0, progress=True)  # trained here, or read from the cache (digits: CPU)
for name, defence in models.items():
    print(f"{name:21s} clean accuracy {accuracy(defence.served, x_test, y_test):.1%}")
print(models["none"].served.source)

# %% [markdown]
# ## 1. Three defences, and how each breaks the gradient
#
# **Feature squeezing** (Xu, Evans and Qi 2018) reduces the colour depth and smooths the
# image before the classifier sees it. Here is the code the defended model runs:

# %%
print(inspect.getsource(bit_depth))
print(inspect.getsource(median_smooth))

squeezer = models["feature_squeezing"].served.preprocess
figure, axes = plt.subplots(1, 4, figsize=(8, 2.3))
digit = x_test[:1]
for ax, (image, title) in zip(axes, [(digit, "digit"), (bit_depth(digit, 2), "2 bits"),
                                     (median_smooth(digit, 2), "median 2 x 2"),
                                     (squeezer(digit), f"squeezer: {squeezer.extra_repr()}")]):
    ax.imshow(image[0, 0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
figure.suptitle("what the squeezed classifier sees (16 x 16 pixels)", fontsize=10);

# %% [markdown]
# Rounding is flat almost everywhere: its derivative is zero. So the gradient autograd gives
# for the squeezed model is zero too, and PGD, which follows it, learns nothing:

# %%
xb, yb = x_test[:64], y_test[:64]


def input_gradient(model, x, y):
    """The gradient of the cross-entropy with respect to the input, (N, 1, 16, 16)."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return grad


for name in ("none", "feature_squeezing", "distillation"):
    grad = input_gradient(models[name].served, xb, yb)
    zero = (grad.flatten(1).abs().amax(1) == 0).float().mean().item()
    print(f"{name:18s}: the gradient is exactly zero for {zero:.0%} of 64 test digits")

# %% [markdown]
# **Defensive distillation** (Papernot et al. 2016) trains a teacher with its softmax at a
# temperature $T$, then a student to match the teacher's soft labels at $T$, and serves the
# student at $T = 1$. The student's logits come out about $T$ times larger than a normal
# model's: its softmax saturates, and in float32 the cross-entropy's gradient
# $p - \mathrm{onehot}(y)$ is exactly zero wherever $p_y$ rounds to 1. The zeros above come
# from there. Nothing about the model's decisions changed; only the gradient hides.
#
# **Input reconstruction** (MagNet, Meng and Chen 2017) puts a small autoencoder, trained on
# clean digits only, in front of the classifier:

# %%
autoencoder = models["reconstruction"].served.preprocess
print(autoencoder)
with torch.no_grad():
    reconstructed = autoencoder(xb)
print(f"mean squared reconstruction error on 64 test digits: "
      f"{F.mse_loss(reconstructed, xb).item():.4f}")

# %% [markdown]
# Its gradient is fine. What made MagNet look strong was the attack it was evaluated with:
# crafted on the classifier alone, as if the autoencoder were not there.
#
# The distillation and the autoencoder's training, as the package runs them:

# %%
from workbench.defenses.distillation import distillation_loss, train_student
from workbench.defenses.reconstruction import train_autoencoder

for function in (distillation_loss, train_student, train_autoencoder):
    print(inspect.getsource(function))

# %% [markdown]
#
# ## 2. Exercise: BPDA through bit-depth reduction
#
# > **Difficulty**: 🔴🔴⚪⚪⚪ · **Importance**: 🔵🔵🔵🔵🔵 · **Time**: about 10 minutes
#
# Write `bpda_attack(model, x, y, *, bits, eps, alpha, steps, generator=None)`: PGD against
# the classifier `model` behind `bit_depth(·, bits)`, with BPDA (Athalye et al.): in the
# forward pass the squeezer runs as it is; in the backward pass it is replaced by the identity,
# whose gradient is 1. The trick is one line, a **straight-through** step:
#
# $$\tilde{x} = x + \mathrm{stopgrad}\big(\mathrm{bit\_depth}(x) - x\big)$$
#
# Its value is `bit_depth(x, bits)`; its gradient with respect to `x` is the identity's. Wrap
# it in a small `nn.Module`, put it in front of `model` (`nn.Sequential(it, model)`) and run
# notebook 03's `pgd` on that, with the `eps`, `alpha`, `steps` and `generator` you were given.
# Return `x_adv`, the adversarial image itself (not its squeezed version).
#
# <details><summary>Hint 1: stopgrad</summary>
#
# `.detach()` is stopgrad: `x + (bit_depth(x, bits) - x).detach()`.
# </details>
#
# <details><summary>Hint 2: the structure</summary>
#
# ```python
# class StraightThroughBitDepth(nn.Module):
#     def forward(self, x):
#         return ...
#
# return pgd(nn.Sequential(StraightThroughBitDepth(), model), x, y, eps=eps, alpha=alpha,
#            steps=steps, generator=generator).x_adv
# ```
# </details>

# %% tags=["exercise"]
def bpda_attack(model, x, y, *, bits, eps, alpha, steps, generator=None):
    """PGD through bit-depth reduction with BPDA. x (N, C, H, W) in [0, 1] -> x_adv."""
    # BEGIN SOLUTION
    class StraightThroughBitDepth(nn.Module):
        def forward(self, x):
            return x + (bit_depth(x, bits) - x).detach()

    target = nn.Sequential(StraightThroughBitDepth(), model)
    return pgd(target, x, y, eps=eps, alpha=alpha, steps=steps, generator=generator).x_adv
    # END SOLUTION


# %%
check("bpda_attack", bpda_attack)

# %% [markdown]
# Your BPDA against the squeezed model (2 bits, then the median filter), next to PGD with
# autograd's gradient, on 200 test digits at eps = 0.15:

# %%
from workbench.defenses.models import Preprocessed
from workbench.defenses.squeezing import Squeezer

base = models["none"].served
squeezed = models["feature_squeezing"].served
median_only = Squeezer(median=squeezer.median)
x200, y200 = x_test[:200], y_test[:200]
settings = dict(eps=0.15, alpha=0.0375, steps=10)
autograd_adv = pgd(squeezed, x200, y200, generator=torch.Generator().manual_seed(0),
                   **settings).x_adv
bpda_adv = bpda_attack(Preprocessed(median_only, base), x200, y200, bits=squeezer.bits,
                       generator=torch.Generator().manual_seed(0), **settings)
print(f"squeezed model, clean:                     {accuracy(squeezed, x200, y200):.1%}")
print(f"under PGD with autograd's (zero) gradient: {accuracy(squeezed, autograd_adv, y200):.1%}")
print(f"under your BPDA:                           {accuracy(squeezed, bpda_adv, y200):.1%}")

# %% [markdown]
# (The median filter is differentiable almost everywhere, so BPDA is needed only for the
# rounding: your attack runs through the median filter with autograd.)
#
# ## 3. Exercise: the attack through the autoencoder
#
# > **Difficulty**: 🔴⚪⚪⚪⚪ · **Importance**: 🔵🔵🔵🔵⚪ · **Time**: about 5 minutes
#
# Write `attack_through_autoencoder(classifier, autoencoder, x, y, *, eps, alpha, steps,
# generator=None)`: PGD against the whole defended pipeline, `classifier(autoencoder(x))`.
# It is differentiable end to end, so no trick is needed: only the right model. Return the
# adversarial image `x_adv` (not its reconstruction).
#
# <details><summary>Hint</summary>
#
# `nn.Sequential(autoencoder, classifier)` is the pipeline; run `pgd` on it.
# </details>

# %% tags=["exercise"]
def attack_through_autoencoder(classifier, autoencoder, x, y, *, eps, alpha, steps,
                               generator=None):
    """PGD on classifier(autoencoder(x)). x (N, C, H, W) in [0, 1] -> x_adv."""
    # BEGIN SOLUTION
    pipeline = nn.Sequential(autoencoder, classifier)
    return pgd(pipeline, x, y, eps=eps, alpha=alpha, steps=steps, generator=generator).x_adv
    # END SOLUTION


# %%
check("attack_through_autoencoder", attack_through_autoencoder)

# %%
reconstruction = models["reconstruction"].served
grey_box_adv = pgd(base, x200, y200, generator=torch.Generator().manual_seed(0),
                   **settings).x_adv
through_adv = attack_through_autoencoder(base, autoencoder, x200, y200,
                                         generator=torch.Generator().manual_seed(0), **settings)
print(f"reconstruction defence, clean:                 {accuracy(reconstruction, x200, y200):.1%}")
print(f"attacked through the classifier alone (naive): "
      f"{accuracy(reconstruction, grey_box_adv, y200):.1%}")
print(f"attacked through the pipeline (yours):         "
      f"{accuracy(reconstruction, through_adv, y200):.1%}")

# %% [markdown]
# ## 4. Three attacks on every defence, and a slider
#
# From here on every defence meets the same three attacks, at the same L-inf budget:
#
# * **naive**: PGD-10 crafted on the model the defence protects, as if the defence were not
#   there (the classifier behind a preprocessing step; otherwise the model itself);
# * **autograd**: PGD-10 on the defended model as served, with autograd's gradient;
# * **adaptive**: the worst case per digit over PGD-20 with the cross-entropy and with
#   Carlini and Wagner's logit margin, on the attacker's stand-in: BPDA for the squeezer (the
#   exercise of section 2), the logits divided by $T$ for distillation, the whole pipeline
#   for the autoencoder (section 3);
#
# and the **worst** case over all three is the number to trust.
#
# Move epsilon and watch each defended model's prediction on the naive and on the adaptive
# adversarial digit (red: fooled). Every budget was attacked once, up front; a move is a
# lookup.

# %%
from workbench.widgets import defenses_panel

correct = torch.stack([m.served(x_test[:50]).argmax(1) == y_test[:50]
                       for m in models.values()]).all(0)
index = int(correct.nonzero()[0])  # the first test digit every defended model gets right
panel = defenses_panel(models, x_test[index], int(y_test[index]))
display(panel.widget)

# %%
panel.controls["eps"].value = 0.15
shown = panel.result
for name, fooled in shown.fooled.items():
    print(f"eps 0.15, {name:21s}: naive attack {'fools' if fooled['naive'] else 'does not fool'}"
          f" it, adaptive attack {'fools' if fooled['adaptive'] else 'does not fool'} it")

# %% [markdown]
# ## 5. Randomness and EOT
#
# A randomised defence changes its input by a fresh random draw on every call. One draw's
# gradient is then a noisy estimate of the direction that fools the model on average;
# **Expectation over Transformation** (EOT) averages the prediction over many draws and
# attacks that. Here: Gaussian noise of std 0.2, then the squeezer (so BPDA is needed too),
# attacked with one draw per step, and with EOT over 8 draws per step.

# %%
from workbench.attacks.adaptive import BPDA, EOT
from workbench.defenses.randomized import RandomNoise

x100, y100 = x_test[:100], y_test[:100]


def noisy_squeezed(squeeze, seed):
    """Gaussian noise (std 0.2, from ``seed``), then ``squeeze``, then the standard model."""
    return Preprocessed(nn.Sequential(RandomNoise(0.2, seed=seed), squeeze), base)


defended = noisy_squeezed(squeezer, seed=1)
print(f"noise + squeezer, clean: {accuracy(defended, x100, y100):.1%}")
for label, target in (("one draw per step", noisy_squeezed(BPDA(squeezer), seed=2)),
                      ("EOT over 8 draws", EOT(noisy_squeezed(BPDA(squeezer), seed=2), 8))):
    x_adv = pgd(target, x100, y100, generator=torch.Generator().manual_seed(0),
                **settings).x_adv
    print(f"BPDA, {label:17s}: accuracy {accuracy(defended, x_adv, y100):.1%}")

# %% [markdown]
# ## 6. Every defence, three seeds: naive, autograd and adaptive
#
# The three attacks of section 4 on every defence, on the 450 test digits at eps = 0.15
# (L-inf, pixel units), for seeds 0, 1 and 2 (each seed trains every model afresh). It also measures the squeezing **detector** (Xu et al.: an input is flagged when squeezing
# moves its prediction; threshold at 5% false positives on clean digits) against the naive
# examples and against adaptive ones pushed to fool every squeezed view at once, and runs the
# sanity checks of section 7. Everything is trained and attacked once and cached:
# `workbench experiment defenses` prints the same table. It runs on the digits in both modes
# (distillation, the autoencoder and adversarial training need training); section 8 takes
# squeezing to ImageNet.

# %%
from workbench.defense_experiment import format_defenses_table, reading, run_defenses_experiment
from workbench.viz import defense_curves_figure

result = run_defenses_experiment(progress=True)
print(format_defenses_table(result))
defense_curves_figure(result["rows"], title=f"accuracy vs eps, naive and adaptive attacks "
                      f"(mean over seeds {result['seeds']}, "
                      f"{result['settings']['curve_images']} test digits)");

# %% [markdown]
# ## 7. Sanity checks every evaluation should pass
#
# (Carlini et al. 2019, "On Evaluating Adversarial Robustness".) A robust accuracy is only as
# good as the attack behind it, and a broken attack leaves traces:
#
# * **unbounded**: at eps = 1 any image is within reach; accuracy must fall to about zero;
# * **more effort**: more steps and restarts can only find more; accuracy must not rise;
# * **white box beats black box**: examples transferred from another, undefended model must
#   not do better than the white-box attack.
#
# The table above ran them on every defence, under the autograd and under the adaptive
# attack; `workbench.defenses.sanity.sanity_checks(model, x, y, eps=..., attack=...,
# source=...)` runs them on any model and attack. Which ones fail, per defence:

# %%
for entry in result["sanity"]:
    failed = [c["name"] for c in entry["checks"] if not c["passed"]]
    print(f"{entry['defense']:21s} {entry['attack']:9s} "
          f"{'fails: ' + ', '.join(failed) if failed else 'passes all three'}")

# %% [markdown]
# ## 8. Feature squeezing on an ImageNet classifier
#
# Squeezing needs no training, so it also runs on notebook 02's ImageNet classifier (in lite
# mode EfficientNet-Lite0 with its real weights; in full mode MobileNetV2). Xu et al. used 5
# bits and a 2 x 2 median filter on ImageNet. The same attacks as in section 4, on the five
# labelled sample photos, at eps = 4/255 (five photos give coarse numbers: 20% steps).

# %%
from workbench.data import photo_batch
from workbench.defense_experiment import accuracies, squeezing_defence
from workbench.models import load_classifier

imagenet = load_classifier("mobilenet_v2").to(device)
print(f"model: {imagenet.cfg.label}; {imagenet.source}")
photos, labels = photo_batch(crops_per_photo=1, size=imagenet.input_size[-1])
photos, labels = photos.to(device), labels.to(device)
photo_defence = squeezing_defence(imagenet, Squeezer(bits=5, median=2))
photo_result = accuracies(photo_defence, photos, labels, eps=4 / 255,
                          generator=torch.Generator().manual_seed(0))
for key, value in photo_result.items():
    print(f"squeezed {imagenet.cfg.label}, {key.removesuffix('_acc'):9s}: "
          f"{value:.0%} of {len(labels)} photos")

# %% [markdown]
# ## 9. An honest reading
#
# Each sentence below is computed from the numbers of section 6 (gaps count when they exceed
# 0.05 on every seed):

# %%
for sentence in reading(result):
    print("*", sentence)

# %% [markdown]
# What to take away:
#
# * A defence that breaks the gradient (rounding, a saturated softmax) makes the attack you
#   trust fail, not the adversarial examples disappear. The sanity checks catch it without
#   knowing how the defence works: an unbounded attack that leaves accuracy high, a transfer
#   attack that beats the white-box one.
# * The adaptive attacks here are small changes to the same PGD: a different backward pass
#   (BPDA), an average over randomness (EOT), a different loss or scale (the margin, logits
#   divided by $T$), a different model (the whole pipeline).
# * Read the rows above for which defences kept any accuracy under the worst case, and
#   compare with adversarial training, which pays for its robustness in training time rather
#   than in a hidden gradient. Even for it the naive PGD-10 is an upper bound: report the
#   worst case of the strongest attacks you have.
