"""P(Yes) from a Gemma's Yes and No logits at each row's own last real token.

ShieldGemma answers a policy prompt with ``Yes`` (the content violates the policy) or ``No``.
Its score is the softmax over just those two next-token logits::

    P(Yes) = exp(z_yes) / (exp(z_yes) + exp(z_no))

read at the last *real* token of each row. In a padded batch the rows end at different
positions; reading every row at row 0's last position (as the GDG DevFest 2024 codelab did)
gives wrong scores to every row of another length. :func:`yes_probability` is the reference
for the notebook's exercise; :class:`SafetyScorer` does the same without materialising the
logits of the whole vocabulary at every position.

A scorer also says when it cannot read a text (:meth:`SafetyScorer.readable`): when at least
:data:`UNREADABLE_SHARE` of the tokens of its user content or of its chatbot response are ones
the model cannot read (the tokenizer's unknown token; for the lite scorer also letters of a
script other than Latin), ``score`` warns that those scores mean nothing, rather than letting a
low P(Yes) pass for "safe".

Nothing here imports keras at import time: :func:`load_shieldgemma` does, on the torch backend,
when it is called. ``load_scorer``, which picks the lite or the full scorer, is in
:mod:`workbench.safety.loading`, above this module and :mod:`workbench.safety.lite`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from workbench.config import cuda_available, quiet_native_stderr, use_colab_secrets
from workbench.safety.policies import HarmType
from workbench.safety.prompts import check_unicode, make_prompt, parse_prompt

SHIELDGEMMA_PRESETS = ("shieldgemma_2b_en", "shieldgemma_9b_en", "shieldgemma_27b_en")
FULL_SEQUENCE_LENGTH = 1024
# A content is unreadable when at least this share of its tokens cannot be read. Measured with
# the lite scorer (tests/test_safety_scoring.py): every content of the shipped English sets is
# at most 0.04 (one [UNK] for the kana in a sentence about Japanese), Chinese, Japanese,
# Korean, Arabic, Cyrillic, Greek and Devanagari sentences are 0.83-0.95 and emoji 1.0; an
# English question quoting one Chinese word is 0.12. So: "most of its tokens".
UNREADABLE_SHARE = 0.5


def import_keras_hub():
    """``(keras, keras_hub)`` on the torch backend, imported on first use (slow: it loads
    TensorFlow for its tokenizers). Raises RuntimeError if keras was already imported with
    another backend, which cannot be changed in a running process."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(
            f"keras was imported with the {keras.backend.backend()!r} backend; the workbench "
            "runs keras on torch. Restart the kernel and set os.environ['KERAS_BACKEND'] = "
            "'torch' before anything imports keras.")
    with quiet_native_stderr():  # TensorFlow's oneDNN and CUDA start-up lines
        import keras_hub

    return keras, keras_hub


def last_real_index(padding_mask) -> "torch.Tensor":
    """Position of each row's last real token: ``padding_mask`` [B, T] (1 or True = real
    token, 0 = padding, on either side) -> int64 [B]. ValueError for a row with no token."""
    import torch

    mask = torch.as_tensor(padding_mask).bool()
    if mask.ndim != 2:
        raise ValueError(f"padding_mask must be [batch, time], got shape {tuple(mask.shape)}")
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} of padding_mask have no real token")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).amax(dim=1)


def yes_probability(logits, padding_mask, yes_id: int, no_id: int) -> "torch.Tensor":
    """P(Yes) per row from a causal LM's logits: softmax over the Yes and No logits at each
    row's own last real token.

    Args:
        logits: [B, T, V] next-token logits (any float dtype; computed in float32).
        padding_mask: [B, T], 1 for real tokens, 0 for padding.
        yes_id, no_id: vocabulary ids of the tokens ``Yes`` and ``No``.

    Returns:
        float32 [B] in [0, 1].
    """
    import torch

    logits = torch.as_tensor(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, time, vocabulary], got {tuple(logits.shape)}")
    last = last_real_index(padding_mask).to(logits.device)
    rows = torch.arange(logits.shape[0], device=logits.device)
    yes_no = logits[rows, last][:, [yes_id, no_id]].float()
    return torch.softmax(yes_no, dim=-1)[:, 0]


def pad_right(token_ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(token_ids, padding_mask)``, both int32 [B, longest], padded on the right.

    Right padding keeps every row's positions (and so its rotary embeddings) the same as when
    it is scored alone, so batched scores equal one-at-a-time scores.
    """
    longest = max(len(row) for row in token_ids)
    ids = np.full((len(token_ids), longest), pad_id, dtype="int32")
    mask = np.zeros((len(token_ids), longest), dtype="int32")
    for i, row in enumerate(token_ids):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


@dataclass
class EncodedPrompt:
    """A prompt as the model reads it: ``text`` (after any cut), its ``token_ids`` and
    whatever else a scorer needs (``extra``)."""

    text: str
    token_ids: list[int]
    extra: Any = None


def _cut(text: str, n_chars: int) -> str:
    """``text`` cut to at most ``n_chars`` characters, at a space when there is one."""
    if n_chars >= len(text):
        return text
    kept = text[:n_chars]
    space = kept.rstrip().rfind(" ")
    return (kept[:space] if space > 0 else kept).rstrip()


class SafetyScorer:
    """Scores ShieldGemma prompts; subclasses say how a prompt becomes tokens and how a batch
    becomes Yes/No logits.

    Attributes:
        name: what the model is, in one line (shown by the notebook).
        mode: "lite" or "full".
        sequence_length: the longest prompt in tokens; longer ones get their user content cut.
    """

    name: str
    mode: str
    sequence_length: int
    unknown_id: int  # the tokenizer's unknown token
    # what counts as a token the model cannot read, in words (for the warning)
    unreadable_tokens = "the tokenizer's unknown token"
    unreadable_advice = "Score such text with a model whose tokenizer covers it."

    # --- for subclasses
    def encode(self, prompt: str) -> EncodedPrompt:
        raise NotImplementedError

    def token_ids(self, text: str) -> np.ndarray:
        """int [n]: the tokenizer's ids of ``text`` alone, without ``<bos>``; ValueError for
        text that is not valid Unicode (:func:`~workbench.safety.prompts.check_unicode`)."""
        check_unicode("text", text)
        ids = self.tokenizer.tokenize(text)
        return np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids, dtype="int64")

    def unreadable_ids(self, ids: np.ndarray) -> np.ndarray:
        """bool [n]: which of the token ``ids`` the model cannot read (here: the unknown
        token; a subclass may count more)."""
        return ids == self.unknown_id

    def contents(self, prompt: str) -> dict[str, str]:
        """The texts the model judges in ``prompt``: ``{"user content": ..., "chatbot
        response": ...}`` as :func:`parse_prompt` reads them (no response in a prompt-only
        prompt); ``{"text": prompt}`` for text not in the template."""
        try:
            _, user, response = parse_prompt(prompt)
        except ValueError:
            return {"text": prompt}
        return {"user content": user} if response is None else {
            "user content": user, "chatbot response": response}

    def hidden_states_batch(self, encoded: list[EncodedPrompt]):
        """``(hidden [B, T, D], padding_mask [B, T])``: the backbone's output (after its final
        norm) for a right-padded batch."""
        raise NotImplementedError

    def yes_no_logits_batch(self, encoded: list[EncodedPrompt]) -> "torch.Tensor":
        """float32 [B, 2]: the (Yes, No) logits at each prompt's last real token. Only that
        position goes through the output layer (with Gemma 2's final logit soft-cap, which
        ``token_embedding(..., reverse=True)`` applies), so a batch never holds [B, T, V]."""
        import torch

        hidden, mask = self.hidden_states_batch(encoded)
        last = last_real_index(mask).to(hidden.device)
        h_last = hidden[torch.arange(len(encoded), device=hidden.device), last]
        logits = self.backbone.token_embedding(h_last, reverse=True)
        return logits[:, [self.yes_id, self.no_id]].float()

    def logits_at_every_position(self, prompts: Sequence[str]):
        """``(logits [B, T, V] float32, padding_mask [B, T], yes_id, no_id)`` on the CPU: the
        next-token logits at every position of a right-padded batch, as
        :func:`yes_probability` takes them. Slow and large (V is 256000 in full mode): for
        looking inside a small batch, not for scoring."""
        import torch

        encoded = [self.fit(prompt, i) for i, prompt in enumerate(prompts)]
        with torch.no_grad():
            hidden, mask = self.hidden_states_batch(encoded)
            logits = self.backbone.token_embedding(hidden, reverse=True)
        return (torch.as_tensor(logits).float().cpu(), torch.as_tensor(mask).cpu(),
                self.yes_id, self.no_id)

    # --- the public interface
    def unreadable_shares(self, prompt: str) -> dict[str, float]:
        """For each content of ``prompt`` (see :meth:`contents`), the share of its tokens that
        the model cannot read (see :meth:`unreadable_ids`); 1.0 for a content with no token."""
        shares = {}
        for field, text in self.contents(prompt).items():
            ids = self.token_ids(text)
            shares[field] = float(self.unreadable_ids(ids).mean()) if ids.size else 1.0
        return shares

    def unreadable_share(self, prompt: str) -> float:
        """The larger :meth:`unreadable_shares` of ``prompt``'s contents, in [0, 1]."""
        return max(self.unreadable_shares(prompt).values())

    def readable(self, prompts: Sequence[str] | str) -> np.ndarray:
        """bool [N]: False for each prompt whose user content or chatbot response has at least
        :data:`UNREADABLE_SHARE` of its tokens unreadable. Its score means nothing; ``score``
        warns about it."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return np.array([self.unreadable_share(p) < UNREADABLE_SHARE for p in prompts],
                        dtype=bool)

    def _warn_unreadable(self, encoded: list[EncodedPrompt]) -> None:
        """One UserWarning naming the prompts this scorer cannot read, if there are any."""
        unreadable = []
        for i, e in enumerate(encoded):
            field, share = max(self.unreadable_shares(e.text).items(), key=lambda kv: kv[1])
            if share >= UNREADABLE_SHARE:
                unreadable.append(f"prompt {i} ({share:.0%} of the {field}'s tokens)")
        if not unreadable:
            return
        count = len(unreadable)
        names = unreadable[:5] + ([f"{count - 5} more"] if count > 5 else [])
        shown = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        warnings.warn(
            f"the {self.mode} scorer cannot read {count} of {len(encoded)} prompts: in {shown} "
            f"they are {self.unreadable_tokens}. Their P(Yes) means nothing: a low score is "
            f"not 'safe'. {self.unreadable_advice} scorer.readable(prompts) says which prompts "
            "it can read.", UserWarning, stacklevel=4)

    def fit(self, prompt: str, index: int = 0) -> EncodedPrompt:
        """``prompt`` encoded; if longer than ``sequence_length``, its user content is cut
        (with a warning) so that the policy, the question and the instruction stay whole.

        ValueError if the prompt is empty, not valid Unicode (an unpaired surrogate: see
        :func:`~workbench.safety.prompts.check_unicode`), or too long and cannot be cut enough.
        """
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {index} is a {type(prompt).__name__}, not a str; build "
                             "prompts with make_prompt(harm_type, user_content, "
                             "model_content=None)")
        check_unicode(f"prompt {index}", prompt)
        if not prompt.strip():
            raise ValueError(f"prompt {index} is empty or whitespace only; build prompts with "
                             "make_prompt(harm_type, user_content, model_content=None)")
        encoded = self.encode(prompt)
        excess = len(encoded.token_ids) - self.sequence_length
        if excess <= 0:
            return encoded
        try:
            harm, user, model = parse_prompt(prompt)
        except ValueError:
            raise ValueError(
                f"prompt {index} is {len(encoded.token_ids)} tokens, {excess} more than this "
                f"scorer's sequence_length of {self.sequence_length}, and it is not in "
                "ShieldGemma's template, so its user content cannot be cut alone. Shorten it, "
                "or build it with make_prompt.") from None

        def encoded_with(n_chars: int) -> EncodedPrompt:
            return self.encode(make_prompt(harm, _cut(user, n_chars), model))

        shortest = encoded_with(1)
        if len(shortest.token_ids) > self.sequence_length:
            culprit = ("the chatbot response is too long. Shorten the response or use" if model
                       is not None else "the template (preamble, policy, question and "
                       "instruction) alone does not fit. Use")
            raise ValueError(
                f"prompt {index} is {len(encoded.token_ids)} tokens; even with its user content "
                f"cut to one word it is {len(shortest.token_ids) - self.sequence_length} tokens "
                f"over the sequence_length of {self.sequence_length}: {culprit} a scorer with a "
                "larger sequence_length.")
        low, high = 1, len(user)  # encoded_with(low) fits, encoded_with(high) does not
        while high - low > 1:
            middle = (low + high) // 2
            if len(encoded_with(middle).token_ids) <= self.sequence_length:
                low = middle
            else:
                high = middle
        fitted = encoded_with(low)
        kept = parse_prompt(fitted.text).user_content
        warnings.warn(
            f"prompt {index} is {len(encoded.token_ids)} tokens, {excess} over the "
            f"sequence_length of {self.sequence_length}: its user content was cut from "
            f"{len(user)} to {len(kept)} characters; the policy, the question and the "
            "instruction were kept whole", UserWarning, stacklevel=3)
        return fitted

    def yes_no_logits(self, prompts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        """float32 [N, 2]: the (Yes, No) logits of each prompt at its last real token."""
        import torch

        if isinstance(prompts, str):
            prompts = [prompts]
        elif isinstance(prompts, (bytes, dict)) or not hasattr(prompts, "__iter__"):
            raise ValueError(f"prompts must be a str or a list of str, got "
                             f"{type(prompts).__name__}")
        prompts = list(prompts)
        if len(prompts) == 0:
            raise ValueError("no prompts to score: the list is empty")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be an int of at least 1, got {batch_size!r}")
        encoded = [self.fit(prompt, i) for i, prompt in enumerate(prompts)]
        self._warn_unreadable(encoded)
        out = []
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                out.append(self.yes_no_logits_batch(encoded[start:start + batch_size]))
        return torch.cat(out).float().cpu().numpy()

    def score(self, prompts: Sequence[str] | str, batch_size: int = 8) -> np.ndarray:
        """P(Yes) for each prompt, float32 [N] in [0, 1]; one str gives a [1] array.

        Batches of different lengths give the same scores as one prompt at a time. A
        UserWarning names the prompts the model cannot read (see :meth:`readable`).
        """
        logits = self.yes_no_logits(prompts, batch_size)
        shifted = logits - logits.max(axis=1, keepdims=True)
        probabilities = np.exp(shifted)
        return (probabilities[:, 0] / probabilities.sum(axis=1)).astype("float32")

    def score_policies(self, user_content: str, model_content: str | None = None,
                       ) -> dict[HarmType, float]:
        """P(Yes) under each of the four policies for one user prompt (and response)."""
        harms = list(HarmType)
        prompts = [make_prompt(harm, user_content, model_content) for harm in harms]
        return dict(zip(harms, self.score(prompts).tolist()))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.mode}: {self.name}>"


class GemmaScorer(SafetyScorer):
    """A keras-hub ``GemmaCausalLM`` reading prompts through its own tokenizer: full mode's
    ShieldGemma (and any Gemma whose tokenizer has ``Yes`` and ``No`` tokens)."""

    def __init__(self, causal_lm, *, name: str, mode: str = "full",
                 sequence_length: int = FULL_SEQUENCE_LENGTH):
        tokenizer = causal_lm.preprocessor.tokenizer
        self.causal_lm = causal_lm
        self.backbone = causal_lm.backbone
        self.tokenizer = tokenizer
        self.name, self.mode, self.sequence_length = name, mode, sequence_length
        self.yes_id = int(tokenizer.token_to_id("Yes"))
        self.no_id = int(tokenizer.token_to_id("No"))
        self.bos_id = int(tokenizer.start_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self.unknown_id = int(tokenizer.token_to_id("<unk>"))

    def encode(self, prompt: str) -> EncodedPrompt:
        ids = self.tokenizer.tokenize(prompt)
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return EncodedPrompt(prompt, [self.bos_id] + [int(i) for i in ids])

    def hidden_states_batch(self, encoded):
        ids, mask = pad_right([e.token_ids for e in encoded], self.pad_id)
        return self.backbone({"token_ids": ids, "padding_mask": mask}), mask


def check_preset(preset: str) -> None:
    """ValueError naming the known presets unless ``preset`` is one of them."""
    if preset not in SHIELDGEMMA_PRESETS:
        raise ValueError(f"unknown ShieldGemma preset {preset!r}; choose one of "
                         f"{SHIELDGEMMA_PRESETS} (larger is slower and more accurate)")


class ShieldGemmaUnavailableError(RuntimeError):
    """Full mode's ShieldGemma preset is not in the Kaggle cache and could not be downloaded."""


def load_shieldgemma(preset: str = "shieldgemma_2b_en", *,
                     sequence_length: int = FULL_SEQUENCE_LENGTH) -> GemmaScorer:
    """Full mode: the keras-hub preset ``preset`` (bfloat16 on a GPU, float32 on the CPU).

    The weights come from Kaggle (accept the Gemma licence on kaggle.com/models/google/
    shieldgemma, then set KAGGLE_USERNAME and KAGGLE_KEY); kagglehub keeps them under
    ``$KAGGLEHUB_CACHE`` (default ``~/.cache/kagglehub``).
    """
    check_preset(preset)
    use_colab_secrets()  # in Colab: Kaggle credentials from the Secrets panel
    _, keras_hub = import_keras_hub()
    dtype = "bfloat16" if cuda_available() else "float32"
    try:
        causal_lm = keras_hub.models.GemmaCausalLM.from_preset(preset, dtype=dtype)
    except Exception as err:
        cache = os.environ.get("KAGGLEHUB_CACHE", "~/.cache/kagglehub")
        raise ShieldGemmaUnavailableError(
            f"could not load the keras-hub preset {preset!r} ({type(err).__name__}: "
            f"{str(err)[:200]}). It downloads from Kaggle: accept the Gemma licence at "
            "https://www.kaggle.com/models/google/shieldgemma, set KAGGLE_USERNAME and "
            f"KAGGLE_KEY (in Colab: the Secrets panel), and the files are kept in {cache}. "
            "Or use lite mode, which runs offline: set WORKBENCH_MODE=lite, or call "
            "load_scorer(mode='lite').") from err
    return GemmaScorer(causal_lm, name=f"ShieldGemma ({preset}, keras-hub, {dtype})",
                       sequence_length=sequence_length)


__all__ = ["FULL_SEQUENCE_LENGTH", "SHIELDGEMMA_PRESETS", "UNREADABLE_SHARE", "EncodedPrompt",
           "GemmaScorer", "SafetyScorer", "ShieldGemmaUnavailableError", "check_preset",
           "import_keras_hub", "last_real_index", "load_shieldgemma", "pad_right",
           "yes_probability"]
