"""Notebook 06 in full mode: keras-hub presets as the red LM and the chatbot, ShieldGemma as
the judge.

* :class:`PresetLM`: a keras-hub backbone and its tokenizer with
  :class:`~workbench.redteam.lm.TinyLM`'s ``name`` and ``sample``, so that
  :mod:`workbench.redteam.generation` drives it unchanged. It samples with
  :func:`workbench.redteam.sampling.sample`, the lite path's nucleus sampling: the same
  temperature, top-p set, ``torch.Generator`` and batching, only the logits come from the
  preset.
* :func:`load_red_lm_preset` and :func:`load_chatbot_preset`: ``gpt2_base_en`` by default for
  both, as in Perez et al.'s set-up where one pretrained LM writes the questions (zero-shot
  from ``List of questions to ask someone:\\n1.``) and, behind the dialogue preamble of
  :func:`~workbench.redteam.corpus.chatbot_prompt`, plays the chatbot ("Dialogue-Prompted
  Gopher"); larger GPT-2s and a few small instruct Gemma / Llama presets are allowed
  (:data:`PRESETS`). Prompts are used as given, without a chat template. On the torch backend,
  bfloat16 on a CUDA GPU, float32 on the CPU; without the weights, within seconds,
  :class:`RedTeamPresetUnavailableError` says where they come from and how to run lite mode.
* :func:`load_judge`: lite mode's profanity classifier, or notebook 01's full ShieldGemma
  scorer on the harassment and hate policies. keras-hub also has Llama Guard presets
  (``llama3.2_guard_1b``, ``llama3.1_guard_8b``), but Llama Guard answers in its own
  template ("safe" / "unsafe" and a category code), which nothing here reads yet: ShieldGemma
  is the only full judge.

Nothing here has run on real weights: the machines it is developed and tested on have no GPU
and no network. Loading is tested offline as far as it goes (the allow-list, the error), and
sampling, ``zero_shot`` and ``chatbot_replies`` end to end on a tiny randomly initialised
GPT-2 with a tiny in-memory byte-pair tokenizer; how fast the presets sample, and which
failure rates they give, are not known.

``import workbench.redteam.full`` is cheap (torch, no keras): keras-hub is imported when a
preset is loaded.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from workbench.config import cuda_available, get_mode, use_colab_secrets
from workbench.redteam.judges import ProfanityJudge, ShieldGemmaJudge
from workbench.redteam.sampling import sample

DEFAULT_PRESET = "gpt2_base_en"
# keras-hub presets accepted as the red LM or the chatbot: preset -> (causal LM class, Kaggle
# model, the licence to accept there or None, context length in tokens). keras-hub 0.32's
# GPT-2 presets (not the one fine-tuned on CNN/DailyMail), and its smallest instruct Gemma 2
# and Llama 3.2.
PRESETS = {
    "gpt2_base_en": ("GPT2CausalLM", "keras/gpt2", None, 1024),
    "gpt2_medium_en": ("GPT2CausalLM", "keras/gpt2", None, 1024),
    "gpt2_large_en": ("GPT2CausalLM", "keras/gpt2", None, 1024),
    "gpt2_extra_large_en": ("GPT2CausalLM", "keras/gpt2", None, 1024),
    "gemma2_instruct_2b_en": ("GemmaCausalLM", "keras/gemma2", "Gemma", 8192),
    "llama3.2_instruct_1b": ("Llama3CausalLM", "keras/llama3", "Llama 3.2", 131072),
    "llama3.2_instruct_3b": ("Llama3CausalLM", "keras/llama3", "Llama 3.2", 131072),
}
# End-of-turn tokens of the instruct presets (Gemma's, Llama 3's): sampling stops at them as
# at the tokenizer's end token.
END_OF_TURN = ("<end_of_turn>", "<|eot_id|>")
# Prompts sampled at once. Each step runs the whole batch so far through the backbone (no
# key-value cache), but only each row's last position through the output layer.
BATCH_SIZE = 32


class RedTeamPresetUnavailableError(RuntimeError):
    """A red LM or chatbot preset's weights are not in the Kaggle cache and could not be
    downloaded."""


# ----------------------------------------------------------------------------- sampling

def _texts(decoded) -> list[str]:
    """A tokenizer's ``detokenize`` output (a list of str, or a tensor or array of bytes)
    as a list of str."""
    decoded = decoded.numpy() if hasattr(decoded, "numpy") else decoded
    return [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
            for t in np.asarray(decoded, dtype=object).reshape(-1)]


def cut_after_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to and including the first place where one of ``stop`` ends; all of it
    when none occurs."""
    ends = [text.find(s) + len(s) for s in stop if s in text]
    return text[:min(ends)] if ends else text


class PresetLM:
    """A keras-hub causal LM's backbone and tokenizer, sampled like
    :class:`~workbench.redteam.lm.TinyLM`.

    ``backbone`` maps ``{"token_ids", "padding_mask"}`` (N, T) to hidden states (N, T, D)
    after its final norm, and ``backbone.token_embedding(h, reverse=True)`` maps those to
    next-token logits (as ``GPT2CausalLM``, ``GemmaCausalLM`` and ``Llama3CausalLM`` do);
    ``tokenizer`` has ``tokenize``, ``detokenize``, ``vocabulary_size``, ``get_vocabulary``,
    ``start_token_id`` and ``end_token_id``. ``max_length``: the most tokens the model reads
    (default the backbone's ``max_sequence_length``).

    Stop strings: sampling stops at every token whose text contains one of them (for
    GPT-2's byte-pair vocabulary ``?`` stops at ``?``, ``?"``, ``??``, ...; a line break at
    ``\\n``, ``\\n\\n``, ...), and the text is cut right after the first stop string, so that
    what comes back ends with it, as TinyLM's text ends with its stop token. A stop string
    of one character always lies inside one token, so sampling stops exactly there; a longer
    one split across two tokens is still cut there, but sampling runs on past it (to
    ``max_new_tokens`` or another stop) and spends those steps for nothing.
    """

    def __init__(self, backbone, tokenizer, name: str, *, max_length: int | None = None):
        self.backbone, self.tokenizer, self.name = backbone, tokenizer, name
        self.max_length = int(max_length if max_length is not None
                              else backbone.max_sequence_length)
        self.start_id = int(tokenizer.start_token_id)
        vocabulary = tokenizer.get_vocabulary()
        self.end_ids = {int(tokenizer.end_token_id)} | {
            vocabulary.index(t) for t in END_OF_TURN if t in vocabulary}
        self._token_texts: list[str] | None = None
        self._stop_ids: dict[tuple[str, ...], list[int]] = {}

    def __repr__(self) -> str:
        return f"<PresetLM: {self.name}>"

    @property
    def token_texts(self) -> list[str]:
        """The text of each token id alone (V strings; bytes that are not whole UTF-8
        characters as U+FFFD), decoded once."""
        if self._token_texts is None:
            ids = np.arange(int(self.tokenizer.vocabulary_size()), dtype="int32")[:, None]
            self._token_texts = _texts(self.tokenizer.detokenize(ids))
        return self._token_texts

    def stop_ids(self, stop: Sequence[str]) -> list[int]:
        """Sorted ids of the tokens whose text contains one of ``stop``, and the end ids.
        ValueError for an empty stop string."""
        stop = tuple(stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop strings must be non-empty str, got {list(stop)!r}")
        if stop not in self._stop_ids:
            self._stop_ids[stop] = sorted(self.end_ids | {
                i for i, text in enumerate(self.token_texts) if any(s in text for s in stop)})
        return self._stop_ids[stop]

    def encode(self, prompt: str) -> list[int]:
        """``[start, *tokenize(prompt)]``: the ids the model reads for ``prompt``."""
        ids = np.asarray(self.tokenizer.tokenize(prompt)).astype("int64").reshape(-1)
        return [self.start_id, *ids.tolist()]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of a continuation's ``ids`` up to its first end token."""
        kept = []
        for i in map(int, ids):
            if i in self.end_ids:
                break
            kept.append(i)
        if not kept:
            return ""
        return _texts(self.tokenizer.detokenize(np.asarray([kept], "int32")))[0]

    def logits(self, token_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """float32 (N, T, V) on the CPU, what :func:`~workbench.redteam.sampling.sample`
        reads: the next-token logits at each row's last real token, broadcast (a view, no
        copy) over the T positions; the other positions do not hold their own logits.

        Only the last positions go through the output layer: a whole (N, T, V) would be
        N * T * 50257 floats for GPT-2.
        """
        hidden = self.backbone({"token_ids": token_ids, "padding_mask": padding_mask},
                               training=False)
        last = padding_mask.long().sum(1).to(hidden.device) - 1  # right padding
        rows = torch.arange(len(last), device=hidden.device)
        out = self.backbone.token_embedding(hidden[rows, last], reverse=True)
        out = torch.as_tensor(out).float().cpu()
        return out[:, None, :].expand(-1, token_ids.shape[1], -1)

    def sample_ids(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str],
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   batch_size: int = BATCH_SIZE) -> list[list[int]]:
        """The sampled token ids of each prompt's continuation (at most ``max_new_tokens``,
        up to and including the first stop token of :meth:`stop_ids`), in batches of
        ``batch_size`` from one ``torch.Generator`` seeded with ``seed``.

        ValueError for an empty prompt, or one too long for ``max_new_tokens`` more tokens in
        :attr:`max_length` (never cut).
        """
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {i} is empty: give the text to continue")
        stop_ids = self.stop_ids(stop)
        encoded = [self.encode(p) for p in prompts]
        generator = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, len(encoded), batch_size):
            out += sample(self.logits, encoded[start:start + batch_size],
                          max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                          pad_id=int(self.tokenizer.pad_token_id), max_length=self.max_length,
                          temperature=temperature, top_p=top_p, generator=generator)
        return out

    def sample(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str],
               temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
               batch_size: int = BATCH_SIZE) -> list[str]:
        """The sampled continuation of each prompt (text, up to and including its first stop
        string; see the class docstring), as :meth:`TinyLM.sample
        <workbench.redteam.lm.TinyLM.sample>`; the ids are :meth:`sample_ids`'."""
        ids = self.sample_ids(prompts, max_new_tokens=max_new_tokens, stop=stop,
                              temperature=temperature, top_p=top_p, seed=seed,
                              batch_size=batch_size)
        return [cut_after_stop(self.decode(row), stop) for row in ids]


# ----------------------------------------------------------------------------- the presets

def check_preset(preset: str) -> None:
    """ValueError naming the accepted presets unless ``preset`` is one of them."""
    if preset not in PRESETS:
        raise ValueError(f"unknown red-team preset {preset!r}; choose one of "
                         f"{tuple(PRESETS)} (keras-hub names; larger is slower)")


def _unavailable(preset: str, err: Exception) -> RedTeamPresetUnavailableError:
    _, model, licence, _ = PRESETS[preset]
    cache = os.environ.get("KAGGLEHUB_CACHE", "~/.cache/kagglehub")
    access = ("They are public: no licence to accept, and kagglehub downloads public models "
              "without credentials, but if Kaggle refuses, set KAGGLE_USERNAME and KAGGLE_KEY"
              if licence is None else
              f"Accept the {licence} licence there, then set KAGGLE_USERNAME and KAGGLE_KEY")
    return RedTeamPresetUnavailableError(
        f"could not load the keras-hub preset {preset!r} ({type(err).__name__}: "
        f"{str(err)[:200]}). Its weights download from Kaggle, the {model} models "
        f"(https://www.kaggle.com/models/{model}). {access} (kaggle.com > Settings > API; in "
        "Colab add them to the Secrets panel, which workbench.config.use_colab_secrets() "
        f"reads); the files are kept in {cache}. Or run notebook 06 in lite mode, which runs "
        "offline on tiny models trained here: set WORKBENCH_MODE=lite.")


def load_preset(preset: str, role: str) -> PresetLM:
    """The keras-hub causal LM of ``preset`` as a :class:`PresetLM` named for ``role``, on
    the torch backend: bfloat16 on a CUDA GPU, float32 on the CPU.

    Raises:
        ValueError: a preset not in :data:`PRESETS`.
        RedTeamPresetUnavailableError: the weights are not cached and cannot be downloaded
            (offline, or Kaggle refuses); within seconds when offline.
    """
    check_preset(preset)
    use_colab_secrets()  # in Colab: Kaggle credentials from the Secrets panel
    from workbench.safety.scoring import import_keras_hub

    _, keras_hub = import_keras_hub()
    class_name, _, _, context = PRESETS[preset]
    dtype = "bfloat16" if cuda_available() else "float32"
    try:
        model = getattr(keras_hub.models, class_name).from_preset(preset, dtype=dtype)
    except Exception as err:
        raise _unavailable(preset, err) from err
    return PresetLM(model.backbone, model.preprocessor.tokenizer,
                    f"{role}: keras-hub {class_name} {preset} ({dtype})",
                    max_length=getattr(model.backbone, "max_sequence_length", None) or context)


def load_red_lm_preset(preset: str = DEFAULT_PRESET) -> PresetLM:
    """Full mode's red LM (see :func:`load_preset`): prompted zero-shot or few-shot by
    :mod:`workbench.redteam.generation`. Untested on real weights."""
    return load_preset(preset, "red LM")


def load_chatbot_preset(preset: str = DEFAULT_PRESET) -> PresetLM:
    """Full mode's chatbot (see :func:`load_preset`): the preset behind the dialogue
    preamble, as Perez et al.'s Dialogue-Prompted Gopher. Untested on real weights."""
    return load_preset(preset, "chatbot behind the dialogue preamble")


# ----------------------------------------------------------------------------- the judge

def load_judge(mode: str | None = None, *, preset: str = "shieldgemma_2b_en"):
    """The judge of ``mode`` ("lite" or "full"; default from WORKBENCH_MODE / GPU).

    Lite: :class:`~workbench.redteam.judges.ProfanityJudge` (shipped weights, loads on first
    score). Full: :class:`~workbench.redteam.judges.ShieldGemmaJudge` over the ShieldGemma
    ``preset`` (:func:`workbench.safety.loading.load_scorer`; without its weights it raises
    ``ShieldGemmaUnavailableError``). Untested on real weights.
    """
    if get_mode(mode) == "lite":
        return ProfanityJudge()
    from workbench.safety.loading import load_scorer  # keras-hub: only when asked

    return ShieldGemmaJudge(load_scorer("full", preset=preset))


__all__ = ["BATCH_SIZE", "DEFAULT_PRESET", "PRESETS", "PresetLM",
           "RedTeamPresetUnavailableError", "check_preset", "cut_after_stop",
           "load_chatbot_preset", "load_judge", "load_preset", "load_red_lm_preset"]
