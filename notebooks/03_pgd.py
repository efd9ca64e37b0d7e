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
# # 03 · PGD on EfficientNet versus AdvProp, and training your own robust models
#
# FGSM (notebook 02) takes one step. **Projected gradient descent** (PGD, Madry et al. 2018)
# takes many small ones and, after each, projects back into the budget: it is the attack every
# robustness claim is measured against. In this notebook you
#
# * **Part A**: write PGD's pieces (the L-inf step with its projection, the L2 projection, the
#   targeted objective), then attack pretrained ImageNet models: a standard EfficientNet-B0
#   and, in full mode, the same network trained with AdvProp, each behind its own
#   normalisation;
# * **Part B**: train one small CNN three ways on handwritten digits (standard, AdvProp with
#   an auxiliary BatchNorm, PGD adversarial training) and compare their robustness over
#   epsilon and seeds, and how attacks transfer between them.
#
# The DevFest 2024 codelab this course modernises got PGD wrong in four ways: its projection
# *added* the clipped perturbation instead of *assigning* it, its epsilon was on the 0-255
# scale, its loss read probabilities as logits, and its AdvProp model ran behind ImageNet's
# normalisation instead of its own. The checks below name the first three; the fourth cannot
# happen here, because every model carries its own normalisation (printed below: read from
# the weights' own config, mean = std = 0.5 for AdvProp).

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

from workbench.attacks import fgsm, pgd, pgd_sweep, random_start_point
from workbench.attacks.core import attack_mode
from workbench.config import get_mode, start
from workbench.data import LABELLED_PHOTOS, photo_batch, sample_image
from workbench.exercises import check
from workbench.models import load_classifier
from workbench.viz import attack_figure, top_k
from workbench.widgets import pgd_panel

device = start(seed=0)
standard = load_classifier("efficientnet_b0")
print(f"model: {standard.cfg.label}; {standard.source}")
print("normalisation:", standard.normalize)
models = {"standard": standard}
if get_mode() == "full":
    models["advprop"] = load_classifier("efficientnet_b0_advprop")
    print(f"model: {models['advprop'].cfg.label}; {models['advprop'].source}")
    print("normalisation:", models["advprop"].normalize)  # mean = std = 0.5, from timm's config
else:
    print("AdvProp's ImageNet weights need full mode (WORKBENCH_MODE=full, with network): "
          "part A attacks the lite model only; part B trains an AdvProp model of your own.")

# %% [markdown]
# ## Part A · PGD, piece by piece
#
# ### Exercise A1: one L-inf step
#
# > **Difficulty**: 🔴🔴⚪⚪⚪ · **Importance**: 🔵🔵🔵🔵🔵 · **Time**: about 10 minutes
#
# From the current point `x_adv`, step `alpha` along the sign of the gradient, then **project
# by assignment** onto the L-inf ball of radius `eps` around the clean `x`, then onto the image
# box [0, 1]:
#
# $$x' = x_{adv} + \alpha\,\mathrm{sign}(g), \qquad
#   x_{adv} \leftarrow \mathrm{clip}_{[0,1]}\big(x + \mathrm{clip}_{[-\varepsilon,\varepsilon]}(x' - x)\big)$$
#
# `eps` and `alpha` are in pixel units (8/255), like the images.
#
# <details><summary>Hint</summary>
#
# `delta = (x_adv + alpha * grad.sign() - x).clamp(-eps, eps)`, then
# `(x + delta).clamp(0, 1)`. Not `x_adv + delta`: that is the codelab's bug, and it walks
# out of the ball.
# </details>

# %% tags=["exercise"]
def pgd_linf_step(x_adv, x, grad, *, alpha, eps):
    """One L-inf PGD step. All tensors (N, C, H, W); alpha, eps in pixel units.
    Returns the new x_adv, within eps of x and in [0, 1]."""
    # BEGIN SOLUTION
    delta = (x_adv + alpha * grad.sign() - x).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)
    # END SOLUTION


# %%
check("pgd_linf_step", pgd_linf_step)

# %% [markdown]
# ### Exercise A2: projection onto the L2 ball
#
# > **Difficulty**: 🔴🔴⚪⚪⚪ · **Importance**: 🔵🔵🔵⚪⚪ · **Time**: about 10 minutes
#
# An L2 budget bounds the perturbation's length, one per example: shrink `delta` to length
# `eps` when it is longer, leave it alone otherwise:
# $\delta \leftarrow \delta \cdot \min(1, \varepsilon / \|\delta\|_2)$.
#
# <details><summary>Hint</summary>
#
# `norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)` gives one norm per example, shape
# `(N,)`; reshape the factor to `(N, 1, 1, 1)` to broadcast.
# </details>

# %% tags=["exercise"]
def project_l2(delta, eps):
    """Project each example of delta (N, C, H, W) onto the L2 ball of radius eps."""
    # BEGIN SOLUTION
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = torch.clamp(eps / norms, max=1.0)
    return delta * factor.view(-1, 1, 1, 1)
    # END SOLUTION


# %%
check("project_l2", project_l2)

# %% [markdown]
# ### Exercise A3: the targeted objective
#
# > **Difficulty**: 🔴⚪⚪⚪⚪ · **Importance**: 🔵🔵🔵🔵⚪ · **Time**: about 5 minutes
#
# PGD *ascends* an objective. Untargeted, that is the cross-entropy of the true label. To make
# the model say `target`, ascend **minus** the cross-entropy of the target, computed from the
# **logits** (cross-entropy applies the softmax itself). Return one value per example.

# %% tags=["exercise"]
def targeted_objective(logits, target):
    """logits (N, num_classes), target (N,) -> (N,) objective to ascend."""
    # BEGIN SOLUTION
    return -F.cross_entropy(logits, target, reduction="none")
    # END SOLUTION


# %%
check("targeted_objective", targeted_objective)

# %% [markdown]
# ### Your pieces make PGD
#
# Put together, your three functions are the loop inside `workbench.attacks.pgd`: a random
# start, then per step the objective and its gradient, a step, the projection by assignment
# and the clamp. Below, `my_pgd` is that loop built from *your* `pgd_linf_step` (L-inf),
# `project_l2` (L2) and `targeted_objective`; it runs a targeted attack in both norms on a
# photo, from the same random start as the package's `pgd`, and the two agree.

# %%
from workbench.attacks import ascent_step  # here, after the exercises it would answer


def my_pgd(model, x, target, *, eps, alpha, steps, norm, generator):
    """Targeted PGD from your pieces: x (N, 3, H, W) in [0, 1], target (N,) class ids."""
    x_adv = random_start_point(x, eps, norm, generator)
    with attack_mode(model):  # eval mode, parameters frozen, both restored afterwards
        for _ in range(steps):
            x_grad = x_adv.clone().requires_grad_(True)
            objective = targeted_objective(model(x_grad), target)
            (grad,) = torch.autograd.grad(objective.sum(), x_grad)
            if norm == "linf":
                x_adv = pgd_linf_step(x_adv, x, grad, alpha=alpha, eps=eps)
            else:
                stepped = x_adv + ascent_step(grad, alpha, "l2")
                x_adv = (x + project_l2(stepped - x, eps)).clamp(0, 1)
    return x_adv


x, label = sample_image("rocket")
x, y = x[None].to(device), torch.tensor([label], device=device)
goal = torch.tensor([standard.categories.index("goldfish")], device=device)
for norm, eps in (("linf", 4 / 255), ("l2", 1.0)):
    settings = dict(eps=eps, alpha=eps / 4, steps=8, norm=norm)
    mine = my_pgd(standard, x, goal, generator=torch.Generator().manual_seed(0), **settings)
    package = pgd(standard, x, goal, targeted=True,
                  generator=torch.Generator().manual_seed(0), **settings)
    with torch.no_grad():
        reached = standard(mine).argmax(1) == goal
    print(f"targeted {norm} PGD, eps {eps:.4f}: largest difference from the package's "
          f"{(mine - package.x_adv).abs().max().item():.2e}; yours reached 'goldfish': "
          f"{bool(reached[0])}, the package's: {bool(package.success[0])}")

# %% [markdown]
# ### PGD against FGSM over epsilon
#
# The same budget, two attacks, a batch of photos (the labelled sample photos, centre crop and
# one random crop each). PGD takes 10 steps of `alpha = 2.5 eps / 10` from a random start and
# stops moving a photo once it is misclassified (`early_stop=True`: a photo fooled once stays
# fooled, so the accuracy can only be lower than or equal to that of PGD without it, and the
# attack is cheaper). One batched attack covers every budget: `pgd_sweep` repeats each
# photo once per epsilon and gives every copy its own budget (`eps` can be a tensor, one
# value per image), and FGSM takes a budget per image the same way. The random start is a
# random choice, so PGD runs with three seeds and the table shows the mean and the range of
# the accuracy under attack.

# %%
xb, yb = photo_batch(LABELLED_PHOTOS, crops_per_photo=2, seed=0)
xb, yb = xb.to(device), yb.to(device)
levels = torch.tensor([0.25, 0.5, 1, 2, 4])
epsilons = levels / 255


def accuracy_and_confidence(model, images, labels):
    """Top-1 accuracy and the mean probability of the true class, on images (M, 3, H, W)."""
    with torch.no_grad():
        probs = model(images).softmax(dim=1)
    return ((probs.argmax(dim=1) == labels).float().mean().item(),
            probs.gather(1, labels[:, None]).mean().item())


for name, model in models.items():
    clean_acc, clean_conf = accuracy_and_confidence(model, xb, yb)
    print(f"{name} ({model.cfg.label}): {len(yb)} photos, clean accuracy {clean_acc:.0%}, "
          f"true-class probability {clean_conf:.0%}")
    budgets = epsilons.repeat_interleave(len(yb)).to(device)  # (levels * photos,)
    fgsm_adv = fgsm(model, xb.repeat(len(levels), 1, 1, 1), yb.repeat(len(levels)), budgets)
    fgsm_adv = fgsm_adv.view(len(levels), *xb.shape)  # (levels, photos, 3, H, W)
    sweeps = [pgd_sweep(model, xb, yb, epsilons, steps=10, early_stop=True, batch_size=32,
                        generator=torch.Generator().manual_seed(seed)) for seed in (0, 1, 2)]
    print("   eps     FGSM: accuracy, probability   PGD: accuracy (min-max, 3 seeds), probability")
    for i, level in enumerate(levels.tolist()):
        fgsm_acc, fgsm_conf = accuracy_and_confidence(model, fgsm_adv[i], yb)
        runs = torch.tensor([accuracy_and_confidence(model, sweep.x_adv[i], yb)
                             for sweep in sweeps])  # (seeds, 2)
        print(f"{level:5.2f}/255   {fgsm_acc:6.0%}   {fgsm_conf:6.1%}              "
              f"{runs[:, 0].mean():6.0%} ({runs[:, 0].min():.0%}-{runs[:, 0].max():.0%})"
              f"   {runs[:, 1].mean():6.1%}")

# %% [markdown]
# PGD with `early_stop` stops at the first misclassification, so its true-class probability is
# that of a barely fooled photo; without it, PGD keeps pushing the probability down.
#
# In full mode, attacks also cross models: examples crafted on torchvision's MobileNetV2 (an
# attacker's own model), measured on the two EfficientNets (models the attacker cannot see).

# %%
from workbench.defenses import transfer_accuracy

if get_mode() == "full":
    surrogate = load_classifier("mobilenet_v2")
    for name, model in models.items():
        transferred = transfer_accuracy(surrogate, model, xb, yb, eps=4 / 255, steps=10, seed=0)
        print(f"MobileNetV2 -> {name}: accuracy {transferred:.0%} under transferred PGD at "
              f"4/255 (white box on {name}: see the table above)")
else:
    print("Transfer between ImageNet models needs full mode; part B measures transfer between "
          "the digits models you train.")

# %% [markdown]
# The loss per step, for each photo at 2/255: PGD climbs, step after step, where FGSM had one
# shot.

# %%
import matplotlib.pyplot as plt

result = pgd(standard, xb, yb, eps=2 / 255, alpha=0.5 / 255, steps=10,
             generator=torch.Generator().manual_seed(0))
figure, axis = plt.subplots(figsize=(6, 3.5))
axis.plot(range(1, 11), result.loss_trace.cpu(), alpha=0.6)
axis.set_xlabel("PGD step")
axis.set_ylabel("cross-entropy of the true label (nats)")
axis.set_title(f"PGD at eps 2/255 on {standard.cfg.label}: loss per step, {len(yb)} photos")
axis.grid(alpha=0.3)

# %% [markdown]
# ### A targeted example
#
# Push the rocket photo to a class of your choice: change `TARGET` (any ImageNet class name).

# %%
TARGET = "goldfish"
target = standard.categories.index(TARGET)
result = pgd(standard, x, torch.tensor([target], device=device), eps=8 / 255, alpha=1 / 255,
             steps=20, targeted=True, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    before = top_k(standard(x).softmax(1)[0], standard.categories)
    after = top_k(standard(result.x_adv).softmax(1)[0], standard.categories)
print(f"reached '{TARGET}': {bool(result.success[0])}")
figure = attack_figure(x[0], result.x_adv[0], 8 / 255, before, after,
                       title=f"targeted PGD on {standard.cfg.label}, L-inf eps 8/255, 20 steps")

# %% [markdown]
# ### The panel
#
# The panel attacks the photo once at every epsilon of its slider, for 20 steps, and keeps
# every step (a progress bar shows it working): then moving **eps** or **steps** is a lookup,
# and you see what PGD at that budget had produced after that many steps, with its loss curve
# up to there. Changing the step size (as a fraction of epsilon), the norm or the target
# attacks again. Try: the same epsilon at 1 step and at 20; L2 with eps 1.0 against L-inf
# 1/255.

# %%
panel = pgd_panel(standard, x[0], label)
display(panel.widget)

# %% [markdown]
# ## Part B · Train your own: standard, AdvProp, PGD adversarial training
#
# ImageNet training is out of reach here, so part B uses scikit-learn's handwritten digits
# (1797 images of 8 x 8 pixels, upsampled to 16 x 16; they ship with scikit-learn). One small
# CNN is trained three ways:
#
# * **standard**: cross-entropy on clean images;
# * **AdvProp** (Xie et al. 2020): every BatchNorm has a twin, an *auxiliary* BatchNorm used
#   only for adversarial examples; the loss is the clean loss through the main BatchNorms plus
#   the adversarial loss through the auxiliary ones; at test time only the main ones are used.
#   AdvProp was designed to improve *clean* accuracy with adversarial examples as extra data,
#   not to make models robust;
# * **PGD-AT** (Madry et al. 2018): train on PGD examples only.
#
# ### Exercise B1: AdvProp's dual-BatchNorm loss
#
# > **Difficulty**: 🔴🔴⚪⚪⚪ · **Importance**: 🔵🔵🔵⚪⚪ · **Time**: about 10 minutes
#
# Inside `with auxiliary_bn(model):` every dual BatchNorm of the model uses its auxiliary
# half. Return `CE(model(x_clean), y)` with the main BatchNorms plus `CE(model(x_adv), y)`
# with the auxiliary ones, from logits. The training loop crafts the adversarial batch
# `x_adv` through the auxiliary BatchNorms too (PGD inside `with auxiliary_bn(model):`), as
# Xie et al. do: the adversarial examples are made by, and for, the auxiliary half.
#
# <details><summary>Hint</summary>
#
# Two forward passes: `clean = F.cross_entropy(model(x_clean), y)`, then the adversarial one
# inside the `with` block; return their sum.
# </details>

# %%
from workbench.defenses import auxiliary_bn

# %% tags=["exercise"]
def advprop_loss(model, x_clean, x_adv, y):
    """AdvProp's training loss (a scalar): clean through main BN + adversarial through aux BN."""
    # BEGIN SOLUTION
    clean = F.cross_entropy(model(x_clean), y)
    with auxiliary_bn(model):
        adversarial = F.cross_entropy(model(x_adv), y)
    return clean + adversarial
    # END SOLUTION


# %%
check("advprop_loss", advprop_loss)

# %% [markdown]
# ### Train and compare, over three seeds
#
# `run_advprop_experiment` trains the three models for each seed (cached on disk after the
# first run) and measures, on a held-out split, clean accuracy, **robust accuracy** at the
# training budget and accuracy under FGSM and PGD over epsilon. `workbench experiment advprop
# --json` prints the same numbers.
#
# A robust accuracy is an **upper bound**: an attack that fails to fool an image does not
# prove that no attack can, and a weak attack makes a model look more robust than it is. So
# robust accuracy here is the worst case per image over three attacks: PGD-10, and Auto-PGD
# (Croce and Hein 2020, `workbench.attacks.apgd`: a step size that starts large and halves
# where progress stalls, with momentum) with the cross-entropy and with the DLR margin loss.
# An image counts as robust only if it survives all three. The PGD-10 column shows the bound
# PGD-10 alone would have reported.

# %%
from workbench.experiments import run_advprop_experiment

experiment = run_advprop_experiment(progress=True)
HEADLINE_EPS = experiment["eps"]
print(f"held-out digits; robust accuracy: {experiment['robust_attack']}; "
      f"mean ± {experiment['std']} std over seeds {experiment['seeds']}")
print("method     clean accuracy     robust accuracy     PGD-10 alone")
for row in experiment["rows"]:
    print(f"{row['method']:9s}  {row['clean_acc']:6.1%} ± {row['clean_acc_std']:4.1%}"
          f"     {row['robust_acc']:6.1%} ± {row['robust_acc_std']:4.1%}"
          f"     {row['pgd10_acc']:6.1%} ± {row['pgd10_acc_std']:4.1%}")

# %% [markdown]
# What more effort does to the bound, on the seed-0 PGD-AT model. More random starts give
# PGD more chances (the 5-start line keeps, per image, the first start's result when it
# already fooled it, so it cannot be higher than the 1-start line); more steps and the APGD
# attacks usually find more, though a different path can miss an image another one found.
# Where the numbers stop falling, the attack has probably found most of what it can; a
# bound that still falls with more effort was not worth reporting.

# %%
from workbench.attacks import pgd_restarts
from workbench.data import load_digits_split
from workbench.defenses import evaluate_robustness
from workbench.experiments import train_or_load

_, _, x_test, y_test = load_digits_split()
robust_model = train_or_load("pgd_at", seed=0)
print(f"{robust_model.cfg.label}, trained with PGD-AT, seed 0; L-inf eps {HEADLINE_EPS}")
for steps, restarts in ((10, 1), (10, 5), (100, 1)):
    attack = pgd_restarts(robust_model, x_test, y_test, eps=HEADLINE_EPS,
                          alpha=2.5 * HEADLINE_EPS / steps, steps=steps, restarts=restarts,
                          generator=torch.Generator().manual_seed(0))
    print(f"  PGD, {steps:3d} steps, {restarts} start(s): robust accuracy "
          f"{(~attack.success).float().mean():.1%}")
for apgd_steps, restarts in ((25, 1), (100, 1), (100, 3)):
    report = evaluate_robustness(robust_model, x_test, y_test, eps=HEADLINE_EPS,
                                 apgd_steps=apgd_steps, restarts=restarts, seed=0)
    print(f"  worst case, APGD {apgd_steps:3d} steps, {restarts} start(s): robust accuracy "
          f"{report.robust_acc:.1%} (" + ", ".join(f"after {name} {value:.1%}"
                                                   for name, value in report.after.items()) + ")")

# %%
figure, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for axis, attack in zip(axes, ("fgsm", "pgd")):
    for row in experiment["rows"]:
        axis.plot(row["curve_eps"], [100 * a for a in row[f"{attack}_curve"]], "o-",
                  label=row["method"])
    axis.set_title(f"digits: accuracy under {attack.upper()} (mean of {len(experiment['seeds'])}"
                   f" seeds)")
    axis.set_xlabel("epsilon (pixel units, L-inf)")
    axis.grid(alpha=0.3)
axes[0].set_ylabel("accuracy (%)")
axes[0].legend()
figure.tight_layout()

# %% [markdown]
# ### Black-box transfer
#
# An attacker who cannot see a model can attack one they have and hope the examples
# transfer. Rows: the model the PGD examples were crafted on; columns: the model measured.
# The diagonal is the white-box attack.

# %%
digit_models = {method: train_or_load(method, seed=0) for method in ("standard", "advprop",
                                                                     "pgd_at")}
print(f"accuracy under PGD transferred from row to column, eps = {HEADLINE_EPS:.3f}, seed 0")
print("crafted on \\ measured on " + "".join(f"{m:>10s}" for m in digit_models))
for source_name, source in digit_models.items():
    cells = [transfer_accuracy(source, target_model, x_test, y_test, eps=HEADLINE_EPS,
                               steps=10, seed=0) for target_model in digit_models.values()]
    print(f"{source_name:25s}" + "".join(f"{a:10.1%}" for a in cells))

# %% [markdown]
# The same comparisons, computed from the numbers above rather than written in advance:

# %%
rows = {row["method"]: row for row in experiment["rows"]}
for method in ("advprop", "pgd_at"):
    clean = 100 * (rows[method]["clean_acc"] - rows["standard"]["clean_acc"])
    robust = 100 * (rows[method]["robust_acc"] - rows["standard"]["robust_acc"])
    print(f"{method} against standard: clean accuracy {clean:+.1f} points, "
          f"robust accuracy at eps {HEADLINE_EPS:.2f} {robust:+.1f} points")
for method, row in rows.items():
    print(f"{method}: PGD-10 alone reports {100 * row['pgd10_acc']:.1f}% robust, the worst case "
          f"{100 * row['robust_acc']:.1f}%: {100 * (row['pgd10_acc'] - row['robust_acc']):.1f} "
          f"points too optimistic")

# %% [markdown]
# ## What to take away
#
# * **PGD is the stronger attack.** On the photos, compare the FGSM and PGD columns: with the
#   same budget, many small projected steps find adversarial examples where one step misses,
#   and in the table PGD's accuracy falls as epsilon grows while FGSM's need not.
# * **Robust accuracy is an upper bound.** It is only as good as the attack behind it: on
#   the digits, PGD-10 alone reports a clearly higher robust accuracy for the AdvProp and
#   PGD-AT models than the worst case over PGD-10 and APGD (compare the two columns). Report
#   which attacks, steps and budget a number comes from.
# * **Robustness has a price.** PGD adversarial training buys accuracy under attack with some
#   clean accuracy; a standard model falls to PGD at budgets where its clean accuracy is near
#   perfect.
# * **AdvProp is not designed as a defence.** Xie et al. use adversarial examples, through
#   their own BatchNorm, as extra training data to *improve clean accuracy* on ImageNet. Read
#   the table for what it does on these digits: whether its clean accuracy improves on
#   standard training, and how its robust accuracy sits between the standard and the
#   PGD-trained model. A small CNN on 8 x 8 digits is not ImageNet; full mode compares the
#   real AdvProp EfficientNet in part A.
# * **Transfer is real but weaker than the white-box attack.** In the transfer table, compare
#   each column's diagonal entry (white box) with the rest of the column (black box). Also
#   compare the two directions between a standard and a robust model: examples crafted on a
#   robust model follow features other models share, and tend to transfer better than the
#   reverse.
