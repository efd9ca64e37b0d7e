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
# # 02 · FGSM: fooling an image classifier with one gradient step
#
# A classifier that is right about a photo can be made wrong by changing every pixel by at most
# a couple of intensity levels out of 255, a change you cannot see. In this notebook you
#
# 1. load an ImageNet classifier and a photo,
# 2. implement the **fast gradient sign method** (FGSM, Goodfellow et al. 2015), untargeted and
#    targeted, and check it,
# 3. move an epsilon slider and watch the perturbation, the adversarial image and the top-5
#    predictions change,
# 4. measure accuracy and confidence against epsilon over a batch of photos,
# 5. read what the curves say: why the *sign*, why it transfers, where FGSM fails.
#
# Images are tensors in **[0, 1]**, shaped `(N, 3, H, W)`; the model normalises them itself, so
# epsilon is in pixel units: `eps = 4/255` means "at most 4 intensity levels per pixel".

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
import torch
import torch.nn.functional as F
from IPython.display import display

from workbench.config import start
from workbench.data import LABELLED_PHOTOS, photo_batch, sample_image
from workbench.exercises import check
from workbench.models import load_classifier
from workbench.viz import attack_figure, eps_sweep_figure, top_k
from workbench.widgets import fgsm_panel

device = start(seed=0)
model = load_classifier("mobilenet_v2")
print(f"model: {model.cfg.label}; {model.source}")

# %% [markdown]
# ## 1. A photo and what the model sees
#
# `sample_image` gives scikit-image's sample photos (they ship with the package, no download)
# with the ImageNet class a person would give them.

# %%
x, label = sample_image("coffee")
x = x.to(device)
with torch.no_grad():
    probs = model(x[None]).softmax(dim=1)[0]
print(f"true class: {label} '{model.categories[label]}'")
for pred in top_k(probs, model.categories):
    print(f"  {pred.prob:6.1%}  {pred.name}")

# %% [markdown]
# ## 2. Exercise: implement FGSM
#
# > **Difficulty**: 🔴🔴⚪⚪⚪ · **Importance**: 🔵🔵🔵🔵🔵 · **Time**: about 15 minutes
#
# The loss of the true class, $L(x, y) = \mathrm{CE}(f(x), y)$, goes up fastest, among all
# changes with every pixel moved by at most $\varepsilon$, along the *sign* of its gradient:
#
# $$x_{adv} = \mathrm{clip}_{[0,1]}\big(x + \varepsilon \cdot \mathrm{sign}(\nabla_x L(x, y))\big)$$
#
# A **targeted** attack wants the model to say class $t$: it *lowers* the loss of $t$, so the
# sign flips: $x_{adv} = \mathrm{clip}_{[0,1]}(x - \varepsilon \cdot \mathrm{sign}(\nabla_x
# L(x, t)))$, and `y` holds the targets.
#
# Write `fgsm(model, x, y, eps, *, targeted=False)`: `x` is `(N, 3, H, W)` in [0, 1], `y` is
# `(N,)` class ids, the model returns logits. Do not modify `x` and leave the model in the mode
# it is in (eval).
#
# <details><summary>Hint 1: a gradient with respect to the input</summary>
#
# Make a copy of the input that requires a gradient, `x_adv = x.clone().requires_grad_(True)`,
# compute `F.cross_entropy(model(x_adv), y)` on the **logits**, then
# `torch.autograd.grad(loss, x_adv)` (or `loss.backward()` and `x_adv.grad`).
# </details>
#
# <details><summary>Hint 2: the step</summary>
#
# `step = eps * grad.sign()`; add it for an untargeted attack, subtract it for a targeted one;
# then `.clamp(0, 1)` and `.detach()` the result.
# </details>

# %% tags=["exercise"]
def fgsm(model, x, y, eps, *, targeted=False):
    """One FGSM step. x: (N, 3, H, W) in [0, 1]; y: (N,) labels (targets if targeted);
    eps: pixel units. Returns x_adv (N, 3, H, W) in [0, 1]."""
    # BEGIN SOLUTION
    x_adv = x.clone().detach().requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y)
    (grad,) = torch.autograd.grad(loss, x_adv)
    step = eps * grad.sign()
    return (x - step if targeted else x + step).clamp(0, 1).detach()
    # END SOLUTION


# %%
check("fgsm", fgsm)

# %% [markdown]
# Your FGSM on the photo, 2/255 per pixel:

# %%
eps = 2 / 255
x_adv = fgsm(model, x[None], torch.tensor([label], device=device), eps)
with torch.no_grad():
    after = model(x_adv).softmax(dim=1)[0]
figure = attack_figure(x, x_adv[0], eps, top_k(probs, model.categories),
                       top_k(after, model.categories))

# %% [markdown]
# ## 3. The panel: move epsilon
#
# The direction $\mathrm{sign}(\nabla_x L)$ does not depend on $\varepsilon$, so the panel
# computes it once per photo and target, with one batched forward pass over every epsilon of
# the slider; each slider move is then a lookup. The middle image
# shows the perturbation amplified (black is $-\varepsilon$, white $+\varepsilon$). Tick
# **targeted** and pick a class to push the photo towards it instead.
#
# Things to try: the smallest epsilon that fools the model; what happens to the prediction as
# epsilon keeps growing; a target far from coffee (a goldfish) versus a near one (a cup).

# %%
panel = fgsm_panel(model, x, label)
display(panel.widget)

# %% [markdown]
# The panel is also a Python object: set a control and read the result.

# %%
for level in (0, 1, 2, 4, 8, 16):
    panel.controls["eps"].value = level / 255
    top = panel.result.top5_adv[0]
    print(f"eps {level:2d}/255: '{top.name}' {top.prob:6.1%}  fooled: {panel.result.success}")
panel.controls["eps"].value = 2 / 255

# %% [markdown]
# ## 4. Exercise: accuracy and confidence against epsilon
#
# > **Difficulty**: 🔴⚪⚪⚪⚪ · **Importance**: 🔵🔵🔵🔵⚪ · **Time**: about 10 minutes
#
# One photo is an anecdote. Write `sweep_eps(model, x, y, epsilons, attack)`: for each
# epsilon, attack the batch with `attack(model, x, y, eps)`, then report
#
# * **accuracy**: the fraction of adversarial images still classified as `y`;
# * **confidence**: the mean softmax probability the model gives the *true* class `y`.
#
# Return `(accuracy, confidence)`, each a tensor of shape `(len(epsilons),)`.
#
# <details><summary>Hint</summary>
#
# Inside the loop: `probs = model(x_adv).softmax(dim=1)` under `torch.no_grad()`;
# `(probs.argmax(dim=1) == y).float().mean()` and `probs.gather(1, y[:, None]).mean()`.
# </details>

# %% tags=["exercise"]
def sweep_eps(model, x, y, epsilons, attack):
    """Per eps: attack, then (accuracy, mean true-class probability); two tensors (len(eps),)."""
    # BEGIN SOLUTION
    accuracy, confidence = [], []
    for eps in epsilons:
        x_adv = attack(model, x, y, eps)
        with torch.no_grad():
            probs = model(x_adv).softmax(dim=1)
        accuracy.append((probs.argmax(dim=1) == y).float().mean().item())
        confidence.append(probs.gather(1, y[:, None]).mean().item())
    return torch.tensor(accuracy), torch.tensor(confidence)
    # END SOLUTION


# %%
check("sweep_eps", sweep_eps)

# %% [markdown]
# The batch: the labelled sample photos, each as its centre crop plus random crops and flips.
# The crops are a random choice, so the sweep runs over three seeds and the plot shows the mean
# with the range across seeds as a band.
#
# FGSM's direction does not depend on epsilon, so the sweep needs one gradient per batch, not
# one per epsilon: `fgsm_direction` computes it once, and the attack handed to `sweep_eps` only
# scales it (the same numbers as your `fgsm`, six times fewer backward passes).

# %%
from workbench.attacks import fgsm_direction  # here, after the exercises it would answer

epsilons = [level / 255 for level in (0, 1, 2, 4, 8, 16)]
runs = []
for seed in (0, 1, 2):
    xb, yb = photo_batch(LABELLED_PHOTOS, crops_per_photo=3, seed=seed)
    xb, yb = xb.to(device), yb.to(device)
    direction = fgsm_direction(model, xb, yb)

    def fgsm_cached(model, x, y, eps, direction=direction):
        return (x + eps * direction).clamp(0, 1)

    runs.append(torch.stack(sweep_eps(model, xb, yb, epsilons, fgsm_cached)))
runs = torch.stack(runs)  # (seeds, 2, len(epsilons))
mean, low, high = runs.mean(0), runs.amin(0), runs.amax(0)
figure = eps_sweep_figure(epsilons, mean[0], mean[1],
                          title=f"FGSM on {len(yb)} photos x 3 seeds ({model.cfg.label})")
axis = figure.axes[0]
levels = [255 * e for e in epsilons]
axis.fill_between(levels, 100 * low[0], 100 * high[0], alpha=0.2)
axis.fill_between(levels, 100 * low[1], 100 * high[1], alpha=0.2)
print("eps/255  accuracy (min-max over seeds)  true-class probability")
for i, level in enumerate(levels):
    print(f"{level:6.0f}   {mean[0, i]:6.1%} ({low[0, i]:.0%}-{high[0, i]:.0%})"
          f"            {mean[1, i]:6.1%}")

# %% [markdown]
# ## 5. What the curves say
#
# **Why the sign.** Near $x$ the loss is close to linear: $L(x + \delta) \approx L(x) +
# \delta^\top \nabla_x L$. Under the budget $\|\delta\|_\infty \le \varepsilon$, that increase is
# largest at $\delta = \varepsilon\,\mathrm{sign}(\nabla_x L)$, and it grows with
# $\varepsilon \|\nabla_x L\|_1$: the sum over all $3 \times 224 \times 224 = 150\,528$ inputs.
# Tiny changes add up because there are so many pixels (Goodfellow et al.'s linearity
# argument).
#
# **Why it transfers.** Models trained on the same data learn similar features, so a direction
# that raises one model's loss often raises another's: attacks crafted on a model you have can
# fool one you don't (notebook 03 measures this).
#
# **Where FGSM fails.** FGSM takes *one* step, trusting the linear approximation all the way to
# $\varepsilon$. The loss is not linear that far out, and one big step can overshoot: an image
# fooled at a small epsilon can be classified right again at a larger one, so accuracy need
# not fall monotonically with epsilon for FGSM. The cell below looks for such photos in the
# last batch, every epsilon from 0 to 16/255, with the model you are running.

# %%
levels = list(range(17))
direction = fgsm_direction(model, xb, yb)
with torch.no_grad():
    correct = torch.stack([model((xb + level / 255 * direction).clamp(0, 1)).argmax(1) == yb
                           for level in levels])  # (levels, photos)
reversals = []
for i in range(len(yb)):
    wrong = (~correct[:, i]).nonzero().flatten().tolist()
    right_again = [k for k in range(wrong[0] + 1, len(levels)) if correct[k, i]] if wrong else []
    if right_again:
        reversals.append((i, levels[wrong[0]], levels[right_again[0]]))
print(f"{model.cfg.label}: {len(reversals)} of {len(yb)} photos are fooled by FGSM at some "
      f"epsilon and classified right again at a larger one")
for i, fooled_at, right_at in reversals[:5]:
    print(f"  photo {i} ('{model.categories[int(yb[i])]}'): fooled at {fooled_at}/255, right "
          f"again at {right_at}/255")

# %% [markdown]
# Iterating small steps and projecting back into the budget fixes this: that is PGD,
# notebook 03. FGSM is also the attack that gradient masking defeats most easily, so a model
# that resists FGSM alone proves little.
