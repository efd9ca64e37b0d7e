"""Temperature and nucleus (top-p) sampling, batched over many sequences.

* :func:`nucleus_mask`: the top-p set of each row (Holtzman et al. 2020): the most probable
  tokens, in order, until their probability reaches ``top_p``; the most probable token is
  always in it.
* :func:`sample_next`: one token per row from logits divided by the temperature, restricted
  to the top-p set and renormalised, drawn with a ``torch.Generator``: the same seed, the
  same tokens.
* :func:`sample`: continuations of many prompts at once, each step one forward of the model
  over the whole batch (a causal model's logits at a row's last token do not depend on the
  right padding beyond it); faster than keras-hub's ``generate`` on torch for short texts.

Torch only (no keras): the model is any function from (token ids, padding mask) to logits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from workbench.safety.scoring import pad_right

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_sampling(temperature: float, top_p: float) -> None:
    """ValueError unless ``temperature`` > 0 and ``top_p`` is in (0, 1]."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}: 1 samples from the whole "
                         "distribution, smaller values from the most probable tokens only")


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """bool (N, V): True for the tokens of each row's top-p set.

    ``probs`` (N, V), rows summing to 1. A token is in the set when the probability of the
    tokens more probable than it is below ``top_p`` (ties broken by token id).
    """
    check_sampling(1.0, top_p)
    order = torch.sort(probs, dim=-1, descending=True, stable=True)
    before = order.values.cumsum(-1) - order.values  # mass of the tokens ranked above
    keep_sorted = before < top_p
    keep_sorted[:, 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order.indices, keep_sorted)


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator) -> torch.Tensor:
    """int64 (N,): one token per row of ``logits`` (N, V), from softmax(logits / temperature)
    restricted to its top-p set (:func:`nucleus_mask`) and renormalised."""
    check_sampling(temperature, top_p)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    probs = torch.where(nucleus_mask(probs, top_p), probs, 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample(logits_fn: LogitsFn, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
           stop_ids: Sequence[int], pad_id: int, max_length: int, temperature: float = 1.0,
           top_p: float = 1.0, generator: torch.Generator) -> list[list[int]]:
    """The sampled continuation of each prompt (token ids), up to and including its first
    token of ``stop_ids``, at most ``max_new_tokens``.

    Args:
        logits_fn: (token ids int64 (N, T), padding mask int32 (N, T)) -> logits (N, T, V).
        prompts: N lists of token ids (``<bos>`` included), of any lengths.
        max_length: the longest sequence the model reads; a prompt with less room than
            ``max_new_tokens`` after it is a ValueError naming it (never cut).

    Prompts are right-padded; every step runs ``logits_fn`` over the unfinished rows so far
    and draws a next token for every row (:func:`sample_next`, over the whole batch, so that
    the generator's stream does not depend on which rows have stopped); it stops when every
    row has stopped. Tokens drawn for a stopped row are not kept.
    """
    check_sampling(temperature, top_p)
    if not prompts:
        raise ValueError("no prompts to continue")
    lengths = torch.tensor([len(p) for p in prompts])
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty: it needs at least the <bos> token")
        if len(p) + max_new_tokens > max_length:
            raise ValueError(f"prompt {i} is {len(p)} tokens; with {max_new_tokens} new tokens "
                             f"that is over the {max_length} the model reads: shorten it or "
                             f"ask for fewer new tokens")
    n = len(prompts)
    padded, padding = pad_right(prompts, pad_id)
    ids = torch.cat([torch.from_numpy(padded).long(),
                     torch.full((n, max_new_tokens), pad_id, dtype=torch.long)], 1)
    mask = torch.cat([torch.from_numpy(padding),
                      torch.zeros((n, max_new_tokens), dtype=torch.int32)], 1)
    rows, stops = torch.arange(n), torch.tensor(list(stop_ids))
    running = torch.ones(n, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(n)]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            end = int(lengths.max())
            live = running.nonzero().flatten()
            picked = logits_fn(ids[live, :end], mask[live, :end])[
                torch.arange(len(live)), lengths[live] - 1]
            logits = picked.new_zeros((n, picked.shape[-1]))  # a stopped row's draw is unkept
            logits[live] = picked
            token = sample_next(logits, temperature=temperature, top_p=top_p,
                                generator=generator)
            for i in live.tolist():
                out[i].append(int(token[i]))
            ids[rows, lengths], mask[rows, lengths] = token, 1
            lengths += 1
            running &= ~torch.isin(token, stops)
            if not running.any():
                break
    return out
