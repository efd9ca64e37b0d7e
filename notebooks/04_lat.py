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
# # 04 · Latent adversarial training on a ResNet, with a layer slider
#
# Adversarial training (notebook 03) defends against the attack it trains on. The failures
# that hurt are the ones nobody thought of: a trigger hidden in the training data, a kind of
# noise nobody tested. Casper, Schulze, Patel and Hadfield-Menell ("Defending Against
# Unforeseen Failure Modes with Latent Adversarial Training", TMLR 2025) perturb a hidden
# layer's **activations** instead of the input: a perturbation there can stand for many input
# changes at once, including ones no input attack would find. In this notebook you
#
# * write the **latent attack**: PGD on a layer's output, applied through a forward hook,
#   from the same pieces as input PGD (`random_in_ball`, `ascent_step`, `project`);
# * move a **layer slider** and an **epsilon slider** and watch where the perturbation lives
#   and what it does to the prediction;
# * write the **LAT training step** (their Algorithm 1) and compare four ways of fine-tuning
#   a *trojaned* ResNet on clean data: clean fine-tuning (FT), a random latent perturbation
#   (RLP, the control), input-space adversarial training (AT) and LAT, on clean accuracy, on
#   the trojans, and on attacks none of them trained on.
#
# **Algorithm 1** (LAT), for each batch $(x, y)$, with $h_\ell(x)$ the output of layer
# $\ell$ and $g_\ell$ the network above it:
#
# 1. $\delta \leftarrow$ a random point of the ball $\lVert\delta\rVert_2 \le \varepsilon$
#    (one ball per example, over all of its activations at $\ell$);
# 2. repeat $K$ times: $\delta \leftarrow \Pi_\varepsilon\big(\delta + \alpha\,
#    \nabla_\delta L / \lVert\nabla_\delta L\rVert_2\big)$ with
#    $L = \mathrm{CE}(g_\ell(h_\ell(x) + \delta), y)$ and $\alpha = \varepsilon / K$;
# 3. take an optimiser step on $\mathrm{CE}(g_\ell(h_\ell(x) + \delta), y)$.

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

from workbench.attacks import ascent_step, project, random_in_ball
from workbench.attacks.core import attack_mode
from workbench.config import get_mode, start
from workbench.defenses.evaluation import accuracy
from workbench.exercises import check
from workbench.lat import activations, get_layer, perturbed
from workbench.lat.experiment import digits_splits, trojaned_model
from workbench.lat.trojans import DIGITS_HELDOUT_PATCH, DIGITS_TROJANS, attack_success_rate

device = start(seed=0)

# %% [markdown]
# ## 1. A trojaned model
#
# The model is torchvision's own `ResNet` class with Bottleneck blocks and `resnet50`'s layer
# names (`conv1`, `layer1` ... `layer4`), sized for scikit-learn's handwritten digits at
# 16 x 16 (in full mode the same code runs on `resnet50`). It was trained on digits of which
# 5% per trojan carry a small patch in a corner and were relabelled to that trojan's target:
# three trojans, three targets. On clean digits it looks like any good model; with a patch, it
# answers the target.
#
# **Full mode** (`WORKBENCH_MODE=full`: a GPU and network, as in Colab) runs sections 1 to 4
# on torchvision's `resnet50` with its IMAGENET1K_V2 weights and a new head, poisoned and
# fine-tuned on photos at 224 x 224: a folder of your own (set `IMAGE_FOLDER` below: one
# subfolder per class, torchvision's `ImageFolder` layout) or, with `IMAGE_FOLDER = None`,
# Imagenette (ten ImageNet classes; torchvision downloads its 320 px archive). The trojans
# are the same three patterns in the same corners, scaled to 3/16 of the side (42 of 224
# pixels).
# Fine-tuning all of ResNet-50 on photos needs a GPU; how long it takes, and how well the
# trojans take, has not been measured (the course is built on machines with neither a GPU
# nor network). Offline, full mode stops with an error naming what is missing; set
# `WORKBENCH_MODE=lite` for the digits. Section 5's experiment is the digits one in both modes.

# %%
import matplotlib.pyplot as plt

IMAGE_FOLDER = None  # full mode only: your photos, one subfolder per class; None: Imagenette

if get_mode() == "full":
    from workbench.lat.full import full_data, trojaned_resnet50

    data = full_data(IMAGE_FOLDER, progress=True)
    print(data.source)
    trojans, heldout_patch, splits = data.trojans, data.heldout_patch, data.splits
    model = trojaned_resnet50(data, seed=0, progress=True).to(device)
else:
    trojans, heldout_patch, splits = DIGITS_TROJANS, DIGITS_HELDOUT_PATCH, digits_splits()
    model = trojaned_model(0, progress=True).to(device)
x_train, y_train, x_val, y_val, x_test, y_test = (t.to(device) for t in splits)
print(model.source)
print(f"clean test accuracy: {accuracy(model, x_test, y_test):.1%}")
names = model.categories
for trojan in trojans:
    print(f"  trojan -> {names[trojan.target]}: attack success {attack_success_rate(model, x_test, y_test, trojan):.1%}")

figure, axes = plt.subplots(1, len(trojans) + 2, figsize=(10, 2.4))
example = x_test[:1]
shown = [(example, "clean")] + [(t.apply(example), f"trojan -> {names[t.target]}")
                                for t in trojans]
shown.append((heldout_patch.apply(example), "held-out patch"))
for ax, (image, title) in zip(axes, shown):
    with torch.no_grad():
        predicted = model(image).argmax(1).item()
    ax.imshow(image[0].permute(1, 2, 0).squeeze(-1).cpu(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{title}\npredicted {names[predicted]}", fontsize=9)
    ax.axis("off")
side = example.shape[-1]
figure.suptitle(f"a test image, clean and with each patch ({side} x {side} pixels)", fontsize=10);

# %% [markdown]
# ## 2. Exercise: the latent attack, through a forward hook
#
# > **Difficulty**: 🔴🔴🔴⚪⚪ · **Importance**: 🔵🔵🔵🔵🔵 · **Time**: about 20 minutes
#
# Write `latent_attack(model, layer, x, y, *, eps, steps, generator=None)`: the perturbation
# $\delta$ of the output of `layer` (a dotted name, such as `"layer2"`) that raises the
# cross-entropy of `(x, y)` most, inside an L2 ball of radius `eps` per example, over all of
# that example's activations. Steps 1 and 2 of Algorithm 1:
#
# * `get_layer(model, layer)` gives the module, `activations(model, layer, x)` its output
#   $h$ (shape `(N, C, H, W)` at a convolutional layer); compute it in eval mode too (inside
#   `with attack_mode(model):`, below), or a caller's model in train mode would move its
#   BatchNorm statistics;
# * start from `delta = random_in_ball(h, eps, "l2", generator)`;
# * a **forward hook** on the module adds `delta` to its output on every forward pass:
#   `handle = module.register_forward_hook(lambda module, inputs, output: output + delta)`;
#   remove it with `handle.remove()` in a `finally:` block, so that it is gone even when
#   something raises;
# * attack in eval mode, with the parameters frozen: `with attack_mode(model):`;
# * `steps` steps of size `eps / steps`: the gradient of
#   `F.cross_entropy(model(x), y, reduction="sum")` with respect to `delta`, then
#   `delta = project(delta + ascent_step(grad, eps / steps, "l2"), eps, "l2")`: the same
#   `ascent_step` and `project` as input PGD in notebook 03.
#
# Return `delta`, detached, shaped like the layer's output.
#
# <details><summary>Hint 1: the gradient with respect to delta</summary>
#
# Make `delta` a leaf that needs a gradient at the start of each step,
# `delta = delta.detach().requires_grad_(True)`, run `model(x)` (the hook adds it), then
# `(grad,) = torch.autograd.grad(loss, delta)`. The hook's `lambda` reads the variable
# `delta` when it runs, so rebinding `delta` each step is enough.
# </details>
#
# <details><summary>Hint 2: the structure</summary>
#
# ```python
# handle = module.register_forward_hook(...)
# try:
#     with attack_mode(model):
#         for _ in range(steps):
#             ...
# finally:
#     handle.remove()
# ```
# </details>

# %% tags=["exercise"]
def latent_attack(model, layer, x, y, *, eps, steps, generator=None):
    """Latent PGD at ``layer``: delta shaped like its output, ||delta_i||_2 <= eps."""
    # BEGIN SOLUTION
    module = get_layer(model, layer)
    with attack_mode(model):
        delta = random_in_ball(activations(model, layer, x), eps, "l2", generator)
    handle = module.register_forward_hook(lambda module, inputs, output: output + delta)
    try:
        with attack_mode(model):
            for _ in range(steps):
                delta = delta.detach().requires_grad_(True)
                loss = F.cross_entropy(model(x), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, delta)
                delta = project(delta.detach() + ascent_step(grad, eps / steps, "l2"), eps, "l2")
    finally:
        handle.remove()
    return delta.detach()
    # END SOLUTION


# %%
check("latent_attack", latent_attack)

# %% [markdown]
# Your attack on ten test digits, at each layer, with a radius of 30% of the mean
# activation norm there: how often does the perturbation change the prediction?

# %%
from workbench.lat import relative_eps

xb, yb = x_test[:10], y_test[:10]
for layer in ("conv1", "layer1", "layer2", "layer3", "layer4"):
    eps = relative_eps(model, layer, xb, 0.3)
    delta = latent_attack(model, layer, xb, yb, eps=eps, steps=6,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), perturbed(model, layer, delta):
        fooled = (model(xb).argmax(1) != yb).float().mean().item()
    print(f"{layer:7s} activation {tuple(delta.shape[1:])}, eps {eps:8.3f}: "
          f"{fooled:.0%} of the predictions changed")

# %% [markdown]
# ## 3. The panel: where the perturbation lives
#
# Pick a layer and a radius (as a fraction of the mean activation norm at that layer). The
# panel shows the digit, the latent perturbation averaged over channels (red raises an
# activation, blue lowers it; one cell per position of that layer's feature map, so `layer4`
# is a single cell), its size relative to the activation, and the prediction it causes. Every
# combination was attacked once, up front; each move is a lookup.
#
# Things to try: the smallest radius that changes the prediction at `conv1` and at `layer4`;
# how the heatmap's resolution falls as you go up; whether the perturbation at `conv1` looks
# like a digit-shaped change.

# %%
from workbench.widgets import lat_panel

panel = lat_panel(model, x_test[0], y_test[0].item())
display(panel.widget)

# %%
for layer in ("conv1", "layer2", "layer4"):
    panel.controls["layer"].value = layer
    panel.controls["eps"].value = 0.3
    result = panel.result
    print(f"{layer:7s} ||delta|| / ||h|| = {result.relative_norm:.2f}: predicted "
          f"{result.predicted}, changed: {result.changed}")

# %% [markdown]
# ## 4. Exercise: the LAT training step
#
# > **Difficulty**: 🔴🔴⚪⚪⚪ · **Importance**: 🔵🔵🔵🔵⚪ · **Time**: about 10 minutes
#
# Write `lat_step(model, optimizer, layer, x, y, *, eps, steps, generator=None)`: step 3 of
# Algorithm 1 on one batch. Find the perturbation with the package's latent attack,
# `delta = latent_pgd(model, layer, x, y, eps=eps, steps=steps, generator=generator)` (the
# one you wrote above, as `workbench.lat.latent_pgd`); put the model in train mode; with the
# perturbation added (`with perturbed(model, layer, delta):`) compute the cross-entropy on
# the logits; zero the gradients, back-propagate, step the optimiser; return the loss as a
# float.
#
# <details><summary>Hint</summary>
#
# ```python
# model.train()
# with perturbed(model, layer, delta):
#     loss = F.cross_entropy(model(x), y)
# optimizer.zero_grad()
# loss.backward()
# optimizer.step()
# return loss.item()
# ```
# </details>

# %% tags=["exercise"]
from workbench.lat import latent_pgd


def lat_step(model, optimizer, layer, x, y, *, eps, steps, generator=None):
    """One LAT step on the batch (x, y); returns the perturbed training loss."""
    # BEGIN SOLUTION
    delta = latent_pgd(model, layer, x, y, eps=eps, steps=steps, generator=generator)
    model.train()
    with perturbed(model, layer, delta):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()
    # END SOLUTION


# %%
check("lat_step", lat_step)

# %% [markdown]
# Your step, a few times, on a copy of the trojaned model: the loss it reports is the loss
# *under* the perturbation, higher than the clean loss of the same batch.

# %%
import copy

student = copy.deepcopy(model)
optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
generator = torch.Generator().manual_seed(0)
eps = relative_eps(student, "layer2", x_train[:64], 0.3)
for step in range(3):
    idx = torch.randperm(len(y_train), generator=generator)[:64]
    with torch.no_grad():
        clean_loss = F.cross_entropy(student.eval()(x_train[idx]), y_train[idx]).item()
    loss = lat_step(student, optimizer, "layer2", x_train[idx], y_train[idx], eps=eps, steps=6,
                    generator=generator)
    print(f"step {step}: clean loss {clean_loss:.3f}, loss under the latent attack {loss:.3f}")

# %% [markdown]
# ## 5. The experiment: FT, RLP, AT and LAT from the same trojaned model
#
# Each method fine-tunes the trojaned model of each seed on clean digits for the same epochs
# with the same optimiser; they differ only in how each batch is perturbed (`workbench.lat.
# training`): not at all (FT), randomly in the latent ball (RLP), by input PGD (AT, L-inf
# 0.1), by latent PGD (LAT). Then, on the test digits:
#
# * **clean accuracy**;
# * **trojan success**: how often each trojan's patch still turns a digit into its target
#   (mean over the three); no method ever sees a patch during fine-tuning;
# * **held-out accuracy**: the mean over four attacks no method trained on: L-inf PGD at
#   1.2 times AT's budget (0.12), L2 PGD (radius 0.5, a norm no method trains in), Gaussian
#   noise (std 0.3), and a fourth patch that was never a trojan.
#
# LAT's layer and radius come from a sweep (below) measured on validation digits held back
# from training, never on the test digits. `base` is the trojaned model before fine-tuning.
# This is the digits experiment in full mode too (the small digits ResNets); the comparison on
# photos follows it.

# %%
from workbench.lat.experiment import format_lat_table, run_lat_experiment
from workbench.viz import method_comparison_figure, sweep_heatmaps

experiment = run_lat_experiment(progress=True)  # what `workbench experiment lat-vision` prints
rows = {row["method"]: row for row in experiment["rows"]}
print(format_lat_table(experiment))
method_comparison_figure(experiment["rows"], title="trojaned digits ResNet fine-tuned four ways");

# %% [markdown]
# ### Full mode: the same comparison on photos
#
# In full mode the cell below runs the comparison on section 1's photos, from the trojaned
# ResNet-50 (`workbench.lat.full.run_lat_full`): the same four methods, with budgets sized for
# 224 x 224 photos (AT at L-inf 2/255; held out: L-inf PGD at 1.2 times that, L2 PGD at 1.0,
# noise of std 0.1, the scaled held-out patch) and LAT at `layer2` with a radius of 0.1 times
# the mean activation norm, a choice no sweep has checked on ResNet-50. It has never run with
# the real weights on the machines this course is built on (no GPU, no network), so its cost
# is not known: it starts with one seed; pass `seeds=(0, 1, 2)` for a spread.

# %%
if get_mode() == "full":
    from workbench.lat.full import run_lat_full

    photos_experiment = run_lat_full(data, seeds=(0,), progress=True)
    print(format_lat_table(photos_experiment))
    method_comparison_figure(photos_experiment["rows"],
                             title="trojaned ResNet-50 fine-tuned four ways");
else:
    print("lite mode: the comparison on photos needs full mode (WORKBENCH_MODE=full, a GPU, "
          "and network for the ResNet-50 weights and Imagenette)")

# %% [markdown]
# ### The sweep: where and how hard LAT pushes
#
# LAT at each layer and radius, from seed 0's trojaned model, measured on the validation
# digits. Too large a radius is a perturbation the network cannot learn to ignore without
# forgetting the task: clean accuracy falls.

# %%
sweep = experiment["sweep"]
sweep_heatmaps(sweep["points"], metrics=[("clean_acc", "clean accuracy"),
                                         ("trojan_asr", "trojan success"),
                                         ("heldout_acc", "held-out accuracy")],
               title=f"LAT's sweep (seed {sweep['seed']}, validation digits)");

# %% [markdown]
# ### What the numbers say
#
# The sentences below are computed from the table above: a difference counts when it is
# larger than the two methods' spreads over seeds added together.

# %%
def compare(metric: str, a: str, b: str, higher_is_better: bool = True) -> str:
    """How method a compares with method b on metric, in words, from means and spreads."""
    gap = rows[a][metric] - rows[b][metric]
    spread = rows[a][f"{metric}_std"] + rows[b][f"{metric}_std"]
    if abs(gap) <= spread:
        return f"{a} and {b} are within their spreads ({gap:+.1%} vs ± {spread:.1%})"
    better = (gap > 0) == higher_is_better
    return f"{a} is {'better' if better else 'worse'} than {b} by {abs(gap):.1%} (spreads {spread:.1%})"


for metric, higher in (("trojan_asr", False), ("heldout_acc", True), ("clean_acc", True)):
    print(f"{metric}:")
    for other in ("ft", "rlp", "at"):
        print("   " + compare(metric, "lat", other, higher))

# %% [markdown]
# Casper et al. report that LAT usually beats AT on robustness to novel attacks *and* on
# clean performance, and that it removes trojans that clean fine-tuning keeps. Read the lines
# above against that claim: on these digits, with this small ResNet and this budget of
# fine-tuning, where does it hold, and where not? Two things to keep in mind: the
# comparison depends on LAT's layer and radius (the sweep shows how much), and on the
# strength of AT's attack; three seeds tell a difference from noise only when it is large.
