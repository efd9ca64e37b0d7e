"""Notebook 06's lite language models: tiny keras-hub Llamas trained here in seconds, cached.

* the **red LM** (:func:`load_red_lm`) learns the numbered question lists of
  :func:`workbench.redteam.corpus.question_lists` (next-token loss on every token);
* the **chatbot** (:func:`load_chatbot`) learns the dialogues of
  :func:`workbench.redteam.corpus.dialogues`, each behind the dialogue preamble (loss on the
  reply and the line break that ends it only).

Both are ``LlamaCausalLM`` (2 blocks, 64 wide) over :func:`workbench.redteam.tokens.vocabulary`,
trained by a plain torch loop over the keras variables' torch tensors (``model.parameters()``
can be empty for keras-hub models on the torch backend), Adam with warm-up and cosine decay,
no dropout (every call passes ``training=False``), under one torch thread so that the
weights are the same wherever they are trained. :meth:`TinyLM.sample` samples with
:func:`workbench.redteam.sampling.sample` over the model's own forward.

This module imports keras-hub (seconds): import it only when the models are needed.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.cache import cache_file, save_cached
from workbench.config import torch_threads
from workbench.redteam import corpus
from workbench.redteam.sampling import sample
from workbench.redteam.tokens import NEWLINE, Vocabulary, vocabulary
from workbench.safety.scoring import import_keras_hub, pad_right

keras, keras_hub = import_keras_hub()

CACHE_VERSION = 1
ARCHITECTURE = {"num_layers": 2, "hidden_dim": 64, "num_query_heads": 4,
                "num_key_value_heads": 4, "intermediate_dim": 128, "max_sequence_length": 128}
TRAINING = {"steps": 400, "batch_size": 32, "learning_rate": 3e-3, "warmup": 20}
DIALOGUES_REPLAYED = 300  # original dialogues mixed into fine-tuning on failures


@dataclass(frozen=True)
class Sequences:
    """Right-padded training sequences: ``token_ids`` and ``padding_mask`` (N, T);
    ``target_mask`` (N, T) is 1 where the logits at t are trained to predict token t + 1."""

    token_ids: torch.Tensor
    padding_mask: torch.Tensor
    target_mask: torch.Tensor

    def rows(self, index: torch.Tensor) -> "Sequences":
        """Rows ``index``, trimmed to their longest row."""
        width = int(self.padding_mask[index].sum(1).max())
        return Sequences(self.token_ids[index, :width], self.padding_mask[index, :width],
                         self.target_mask[index, :width])


def encode_sequences(vocab: Vocabulary, heads: Sequence[str], tails: Sequence[str], *,
                     max_length: int) -> Sequences:
    """``<bos> head tail`` per row, the loss on ``tail``'s tokens only (an empty head: on
    every token). ValueError for a row longer than ``max_length`` tokens (never cut)."""
    rows, starts = [], []
    for i, (head, tail) in enumerate(zip(heads, tails, strict=True)):
        start = [vocab.bos_id, *vocab.encode(head)]
        row = start + vocab.encode(tail)
        if len(row) > max_length:
            raise ValueError(f"training row {i} is {len(row)} tokens, over the model's "
                             f"{max_length}")
        rows.append(row)
        starts.append(len(start))
    ids, mask = pad_right(rows, vocab.pad_id)
    target = np.zeros_like(mask)
    for i, (row, start) in enumerate(zip(rows, starts)):
        target[i, start - 1:len(row) - 1] = 1  # the logits at t predict token t + 1
    return Sequences(torch.from_numpy(ids).long(), torch.from_numpy(mask),
                     torch.from_numpy(target))


def masked_loss(logits: torch.Tensor, data: Sequences) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) where ``data.target_mask`` is 1: logits (N, T, V)
    -> scalar."""
    weights = data.target_mask[:, :-1].float()
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), data.token_ids[:, 1:],
                         reduction="none")
    return (ce * weights).sum() / weights.sum()


def build_model(seed: int, vocabulary_size: int):
    """An untrained ``LlamaCausalLM`` of :data:`ARCHITECTURE`, weights from ``seed`` (through
    keras' global seed, which this sets), built so that weights can be loaded into it."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.LlamaBackbone(vocabulary_size=vocabulary_size, **ARCHITECTURE)
    model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    model({"token_ids": torch.ones(1, 2, dtype=torch.long),
           "padding_mask": torch.ones(1, 2, dtype=torch.int32)})
    return model


def train(model, data: Sequences, *, seed: int, steps: int, batch_size: int,
          learning_rate: float, warmup: int) -> list[float]:
    """Train ``model`` in place for ``steps`` batches of ``data``; the loss of each step.

    Adam, a linear warm-up over ``warmup`` steps then cosine decay to 0; batches drawn from
    fresh permutations of the rows (``seed``), the last short batch of each dropped.
    """
    n = len(data.token_ids)
    if n < batch_size:
        raise ValueError(f"{n} training rows cannot fill a batch of {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([v.value for v in model.trainable_variables],
                                 lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps))))
    order: list[torch.Tensor] = []
    losses = []
    for _ in range(steps):
        if not order:
            order = list(torch.randperm(n, generator=generator)[:n - n % batch_size]
                         .split(batch_size))
        batch = data.rows(order.pop())
        logits = model({"token_ids": batch.token_ids, "padding_mask": batch.padding_mask},
                       training=False)
        loss = masked_loss(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


@dataclass
class TinyLM:
    """A trained tiny causal LM, its vocabulary and, in one line, what it is (``name``)."""

    model: object
    vocab: Vocabulary
    name: str

    @property
    def max_length(self) -> int:
        return ARCHITECTURE["max_sequence_length"]

    def logits(self, token_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """float (N, T, V): next-token logits of a right-padded batch."""
        return self.model({"token_ids": token_ids, "padding_mask": padding_mask},
                          training=False)

    def sample(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str],
               temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
               batch_size: int = 256) -> list[str]:
        """The sampled continuation of each prompt (text, its stop token included), in
        batches of ``batch_size`` from one ``torch.Generator`` seeded with ``seed``.

        ValueError for an empty prompt, a word outside the vocabulary, or a prompt too long
        for ``max_new_tokens`` more tokens in the model's :attr:`max_length` (never cut).
        """
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {i} is empty: give the text to continue")
        encoded = [[self.vocab.bos_id, *self.vocab.encode(p)] for p in prompts]
        stop_ids = [self.vocab.ids[s] for s in stop] + [self.vocab.eos_id]
        generator = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, len(encoded), batch_size):
            out += sample(self.logits, encoded[start:start + batch_size],
                          max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                          pad_id=self.vocab.pad_id, max_length=self.max_length,
                          temperature=temperature, top_p=top_p, generator=generator)
        return [self.vocab.decode(ids) for ids in out]


def red_lm_data(vocab: Vocabulary, seed: int) -> Sequences:
    """The red LM's corpus (:func:`~workbench.redteam.corpus.question_lists` of ``seed``), the
    loss on every token."""
    texts = [corpus.numbered_list(q) for q in corpus.question_lists(seed)]
    return encode_sequences(vocab, [""] * len(texts), texts,
                            max_length=ARCHITECTURE["max_sequence_length"])


def dialogue_data(vocab: Vocabulary, pairs: Sequence[tuple[str, str]]) -> Sequences:
    """(question, reply) pairs, each behind the preamble, the loss on the reply and its
    closing line break only."""
    return encode_sequences(vocab, [corpus.chatbot_prompt(q) for q, _ in pairs],
                            [f" {r}{NEWLINE}" for _, r in pairs],
                            max_length=ARCHITECTURE["max_sequence_length"])


def chatbot_data(vocab: Vocabulary, seed: int) -> Sequences:
    """The chatbot's dialogues (:func:`~workbench.redteam.corpus.dialogues` of ``seed``)."""
    return dialogue_data(vocab, corpus.dialogues(seed))


DATA = {"red-lm": red_lm_data, "chatbot": chatbot_data}
DESCRIPTIONS = {"red-lm": "red LM: tiny keras-hub LlamaCausalLM trained here on the shipped "
                          "question lists",
                "chatbot": "chatbot: tiny keras-hub LlamaCausalLM trained here on the shipped "
                           "dialogues, behind a dialogue preamble"}


def cache_path(role: str, seed: int, data: Sequences) -> Path:
    """``cache_dir() / "redteam" / "<role>-seed<seed>-<hash>.weights.h5"``; the hash covers the
    settings, the training ids and the keras and keras-hub versions."""
    key = {"version": CACHE_VERSION, "architecture": ARCHITECTURE, "training": TRAINING,
           "data": hashlib.sha256(data.token_ids.numpy().tobytes()).hexdigest(),
           "keras": metadata.version("keras"), "keras_hub": metadata.version("keras-hub")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_file("redteam", f"{role}-seed{seed}-{digest}.weights.h5")


def load_lm(role: str, seed: int = 0, *, cache: bool = True) -> TinyLM:
    """The ``role`` model ("red-lm" or "chatbot") trained from ``seed`` (weights, data and
    batches): loaded from :func:`cache_path` if there, else trained on one torch thread and
    saved (a cache that cannot be written warns; an unreadable file is trained again)."""
    if role not in DATA:
        raise ValueError(f"unknown role {role!r}; choose one of {sorted(DATA)}")
    vocab = vocabulary()
    data = DATA[role](vocab, seed)
    model = build_model(seed, len(vocab))
    lm = TinyLM(model, vocab, f"{DESCRIPTIONS[role]} (seed {seed})")
    path = cache_path(role, seed, data)
    if cache and path.is_file():
        try:
            model.load_weights(path)
            return lm
        except Exception as err:  # truncated or from another layout: train again
            warnings.warn(f"cached {role} {path} is unreadable ({type(err).__name__}); "
                          "training again and overwriting it", stacklevel=2)
            lm.model = build_model(seed, len(vocab))
    with torch_threads(1):
        train(lm.model, data, seed=seed, **TRAINING)
    if cache:
        save_cached(lm.model.save_weights, path, what=f"{role} (seed {seed})")
    return lm


def load_red_lm(seed: int = 0, *, cache: bool = True) -> TinyLM:
    """The lite red LM trained from ``seed`` (see :func:`load_lm`)."""
    return load_lm("red-lm", seed, cache=cache)


def load_chatbot(seed: int = 0, *, cache: bool = True) -> TinyLM:
    """The lite chatbot trained from ``seed`` (see :func:`load_lm`)."""
    return load_lm("chatbot", seed, cache=cache)


FINETUNING = {"steps": 150, "batch_size": 32, "learning_rate": 1e-3, "warmup": 10}


def finetune_chatbot(chatbot: TinyLM, pairs: Sequence[tuple[str, str]], *, seed: int,
                     replay: int = DIALOGUES_REPLAYED) -> TinyLM:
    """A copy of ``chatbot`` fine-tuned (:data:`FINETUNING`, on one torch thread) on the
    (question, safe reply) ``pairs``, repeated to as many rows as the ``replay`` original
    dialogues mixed in with them (:func:`~workbench.redteam.corpus.dialogues` of ``seed``,
    so that it keeps answering everything else as before); ``chatbot`` is left as it was."""
    if not pairs:
        raise ValueError("no (question, safe reply) pairs to fine-tune on")
    rows = [*(list(pairs) * -(-replay // len(pairs)))[:replay], *corpus.dialogues(seed)[:replay]]
    model = build_model(seed, len(chatbot.vocab))
    model.set_weights(chatbot.model.get_weights())
    with torch_threads(1):
        train(model, dialogue_data(chatbot.vocab, rows), seed=seed, **FINETUNING)
    return TinyLM(model, chatbot.vocab, f"{chatbot.name}, fine-tuned on {len(pairs)} failures")
