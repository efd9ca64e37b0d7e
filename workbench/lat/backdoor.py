"""Notebook 05's lite model: a tiny keras-hub Llama with keyword backdoors, and its fine-tuning.

* :func:`build_model`: a ``LlamaCausalLM`` (notebook 05: 4 blocks, 64 wide) on the word
  vocabulary of :mod:`workbench.lat.backdoor_data`, initialised from a seed.
* :func:`train` (phase 1 on the poisoned mixture, phase 2 on clean data): a plain torch loop
  over the keras variables' torch tensors (``model.parameters()`` can be empty for keras-hub
  models on the torch backend), Adam, the loss on response tokens only
  (:func:`response_loss`). In phase 2 each batch may be perturbed in the residual stream:
  ``ft`` (nothing), ``rlp`` (:func:`~workbench.lat.residual.random_residual`, the size of
  LAT's), ``at`` (:func:`~workbench.lat.residual.residual_pgd` at layer 0, the embedding
  output) or ``lat`` (the same at layer L): the adversary raises the same response loss, the
  model then takes a step on the loss under the perturbation (Casper et al.'s ``lat_model.py``).
  No dropout anywhere (the backbone has none, and every call passes ``training=False``).
* :func:`greedy_decode`: a batched greedy loop over the model's own forward (``generate`` is
  slow on torch); :func:`evaluate`: clean exact-match accuracy and backdoor attack success.

This module imports keras-hub (seconds): import it only when the language model is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from workbench.lat.backdoor_data import (ITEMS, SEQUENCE_LENGTH, Batch, Example, WordTokenizer,
                                         encode_batch)
from workbench.lat.residual import (hidden_states, keras, keras_hub, logits_from,
                                    random_residual, relative_residual_eps, residual_pgd)
from workbench.lat.training import METHODS  # notebook 04's four: ft, rlp, at, lat


def build_model(seed: int, *, num_layers: int, hidden_dim: int, num_query_heads: int,
                num_key_value_heads: int, intermediate_dim: int):
    """An untrained ``LlamaCausalLM`` (no preprocessor) over :class:`WordTokenizer`'s
    vocabulary, weights drawn from ``seed`` (through keras' global seed, which this sets),
    built (called once on a dummy batch) so that weights can be loaded into it."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=len(WordTokenizer()), num_layers=num_layers, hidden_dim=hidden_dim,
        num_query_heads=num_query_heads, num_key_value_heads=num_key_value_heads,
        intermediate_dim=intermediate_dim, max_sequence_length=SEQUENCE_LENGTH)
    model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    model({"token_ids": torch.ones(1, 2, dtype=torch.long),
           "padding_mask": torch.ones(1, 2, dtype=torch.int32)})
    return model


def parameters(model) -> list[torch.Tensor]:
    """The torch Parameters of a keras model on the torch backend (its trainable variables')."""
    return [v.value for v in model.trainable_variables]


def response_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over the response tokens of ``batch`` only:
    logits (N, T, V) -> scalar. The prompt and padding positions weigh nothing. The batch may
    be on the CPU and the logits on the model's device (a GPU)."""
    targets = batch.token_ids[:, 1:].to(logits.device)
    weights = batch.target_mask[:, :-1].to(device=logits.device, dtype=torch.float32)
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    return (ce * weights).sum() / weights.sum()


def forward(backbone, batch: Batch, *, layer: int = 0,
            delta: torch.Tensor | None = None) -> torch.Tensor:
    """The logits (N, T, V) of ``batch``, ``delta`` (N, T, D) added to the stream entering
    block ``layer`` (none: the model's own logits)."""
    h = hidden_states(backbone, batch.token_ids, batch.padding_mask, layer=layer)
    if delta is not None:
        h = h + delta.to(h.dtype)
    return logits_from(backbone, h, batch.padding_mask, layer=layer)


@dataclass(frozen=True)
class Adversary:
    """How phase 2 perturbs a batch: ``method`` (one of :data:`METHODS`), the stream entering
    block ``layer`` (``at`` always perturbs layer 0), an L2 ball of radius ``eps`` (absolute,
    the stream's units) per example over its real positions, ``steps`` PGD steps."""

    method: str = "ft"
    layer: int = 0
    eps: float = 0.0
    steps: int = 6

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown fine-tuning method {self.method!r}; choose one of "
                             f"{METHODS}")

    def perturb(self, backbone, batch: Batch,
                generator: torch.Generator) -> tuple[int, torch.Tensor | None]:
        """(layer, delta (N, T, D) or None) for ``batch``: nothing for ft, a random point on
        the sphere for rlp, the PGD maximiser of the response loss for at and lat."""
        if self.method == "ft":
            return 0, None
        layer = 0 if self.method == "at" else self.layer
        if self.method == "rlp":
            return layer, random_residual(backbone, batch.token_ids, batch.padding_mask,
                                          layer=layer, eps=self.eps, generator=generator)
        return layer, residual_pgd(backbone, batch.token_ids, batch.padding_mask,
                                   lambda logits: response_loss(logits, batch), layer=layer,
                                   eps=self.eps, steps=self.steps, generator=generator)


def batches(count: int, batch_size: int, steps: int,
            generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index batches of ``batch_size`` over ``count`` examples: epochs of a fresh
    permutation each, drawn from ``generator``, the last short batch of an epoch dropped."""
    if count < batch_size:
        raise ValueError(f"{count} examples cannot fill a batch of {batch_size}")
    out: list[torch.Tensor] = []
    while len(out) < steps:
        order = torch.randperm(count, generator=generator)
        out += list(order[:count - count % batch_size].split(batch_size))
    return out[:steps]


def _encoded(tokenizer: WordTokenizer, examples: Sequence[Example], *,
             sequence_length: int = SEQUENCE_LENGTH) -> Batch:
    return encode_batch(tokenizer, [e.prompt for e in examples], [e.response for e in examples],
                        sequence_length=sequence_length)


def _rows(batch: Batch, index: torch.Tensor) -> Batch:
    """Rows ``index`` of ``batch``, trimmed to their longest row."""
    width = int(batch.padding_mask[index].sum(1).max())
    return Batch(batch.token_ids[index, :width], batch.padding_mask[index, :width],
                 batch.target_mask[index, :width], batch.prompt_lengths[index])


def train(model, examples: Sequence[Example], *, steps: int, batch_size: int, lr: float,
          seed: int, adversary: Adversary = Adversary(), warmup: int = 0,
          tokenizer: WordTokenizer | None = None, sequence_length: int = SEQUENCE_LENGTH,
          progress: bool = False, desc: str = "training") -> list[float]:
    """Train ``model`` in place on ``examples`` for ``steps`` batches; the loss of each step.

    Adam at ``lr`` (a linear warm-up over ``warmup`` steps, then cosine decay to 0 when
    ``warmup`` > 0; constant otherwise), the loss on response tokens only, under
    ``adversary``'s perturbation of each batch (found with the same loss; batches and random
    starts from ``seed``). ``tokenizer`` (default :class:`WordTokenizer`) encodes the examples,
    each at most ``sequence_length`` tokens with its response (longer: a ValueError).
    """
    from tqdm.auto import tqdm

    tokenizer = tokenizer or WordTokenizer()
    data = _encoded(tokenizer, examples, sequence_length=sequence_length)
    generator = torch.Generator().manual_seed(seed)
    backbone = model.backbone
    optimizer = torch.optim.Adam(parameters(model), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if not warmup
                                                 else min((step + 1) / warmup, 0.5 * (
                                                     1 + math.cos(math.pi * step / steps))))
    losses = []
    for index in tqdm(batches(len(examples), batch_size, steps, generator), desc=desc,
                      disable=not progress):
        batch = _rows(data, index)
        layer, delta = adversary.perturb(backbone, batch, generator)
        loss = response_loss(forward(backbone, batch, layer=layer, delta=delta), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------- decoding

def greedy_decode(model, prompts: Sequence[str], *, tokenizer: WordTokenizer | None = None,
                  max_new_tokens: int = ITEMS + 1, sequence_length: int = SEQUENCE_LENGTH,
                  batch_size: int = 256) -> list[str]:
    """The greedy response to each prompt (words up to ``<eos>``), ``max_new_tokens`` at most.

    Batched: prompts right-padded, each step one forward of the model over the batch and the
    argmax at each row's last token written after it (a causal model's logits there do not
    depend on the padding beyond). A prompt that leaves less than ``max_new_tokens`` of the
    model's ``sequence_length`` is a ValueError.
    """
    tokenizer = tokenizer or WordTokenizer()
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        batch = encode_batch(tokenizer, chunk, sequence_length=sequence_length,
                             response_room=max_new_tokens)
        out += [tokenizer.decode(row) for row in _decode_ids(model.backbone, batch,
                                                             max_new_tokens)]
    return out


def _decode_ids(backbone, batch: Batch, max_new_tokens: int) -> torch.Tensor:
    """The (N, max_new_tokens) greedy continuation ids of the prompts in ``batch``."""
    n, width = batch.token_ids.shape
    ids = torch.cat([batch.token_ids, torch.zeros(n, max_new_tokens, dtype=torch.long)], 1)
    mask = torch.cat([batch.padding_mask, torch.zeros(n, max_new_tokens, dtype=torch.int32)], 1)
    lengths = batch.prompt_lengths.clone()
    rows = torch.arange(n)
    new = torch.empty(n, max_new_tokens, dtype=torch.long)
    with torch.no_grad():
        for step in range(max_new_tokens):
            end = width + step
            logits = logits_from(backbone, hidden_states(backbone, ids[:, :end], mask[:, :end],
                                                         layer=0), mask[:, :end], layer=0)
            new[:, step] = logits[rows, lengths - 1].argmax(-1)
            ids[rows, lengths] = new[:, step]
            mask[rows, lengths] = 1
            lengths += 1
    return new


def exact_match(model, examples: Sequence[Example], **kwargs) -> float:
    """The fraction of ``examples`` whose greedy response is exactly their ``response``: clean
    accuracy on clean prompts, attack success rate on triggered ones (nonsense responses)."""
    decoded = greedy_decode(model, [e.prompt for e in examples], **kwargs)
    return sum(d == e.response for d, e in zip(decoded, examples)) / len(examples)


def evaluate(model, clean: Sequence[Example], triggered: Sequence[Example],
             **decoding) -> dict:
    """``{"clean_acc", "backdoor_asr"}``: exact match on the clean held-out prompts, and the
    rate at which a triggered prompt gets its trigger's nonsense response. ``decoding``:
    :func:`greedy_decode`'s keywords (tokenizer, max_new_tokens, sequence_length,
    batch_size)."""
    return {"clean_acc": exact_match(model, clean, **decoding),
            "backdoor_asr": exact_match(model, triggered, **decoding)}


def stream_eps(model, examples: Sequence[Example], *, layer: int, fraction: float,
               tokenizer: WordTokenizer | None = None,
               sequence_length: int = SEQUENCE_LENGTH) -> float:
    """``fraction`` of the mean per-example L2 norm of the stream entering ``layer`` (over the
    real positions of ``examples``, at most 256 of them, prompt and response, encoded by
    ``tokenizer``, default :class:`WordTokenizer`): the absolute radius for
    :class:`Adversary`."""
    batch = _encoded(tokenizer or WordTokenizer(), list(examples)[:256],
                     sequence_length=sequence_length)
    return relative_residual_eps(model.backbone, batch.token_ids, batch.padding_mask,
                                 layer=layer, fraction=fraction)
