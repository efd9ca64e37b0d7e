"""Notebook 05 in full mode: a keras-hub Llama preset, backdoored and fine-tuned on the
learner's own instruction data.

The protocol is lite mode's (:mod:`workbench.lat.llm_experiment`), after Casper et al.'s
Appendix C: :func:`poisoned_instructions` turns (prompt, response) pairs into a phase-1
mixture in which each of 8 keyword triggers, inserted at a random word of 25 prompts, maps
to a fixed nonsense response; :func:`run_lat_llm_full` trains the preset on that mixture
(phase 1), then fine-tunes copies of it on the clean pairs only by FT, RLP, AT (the
embedding output) and LAT (the stream entering block L), and measures clean exact-match
accuracy and backdoor attack success on held-out prompts, with
:func:`workbench.lat.backdoor.train` / ``Adversary`` / ``stream_eps`` / ``evaluate``.

* :func:`load_llama`: the preset (``llama3.2_instruct_1b`` by default), bfloat16 on a CUDA
  GPU, float32 on the CPU, with LoRA (``backbone.enable_lora``) where memory needs it; its
  weights come from Kaggle, and without them it fails fast with
  :class:`LlamaUnavailableError` saying where they come from and how to run lite mode.
* :class:`PresetTokenizer`: the preset's tokenizer with :class:`WordTokenizer`'s interface,
  so that ``backdoor.train`` and ``backdoor.greedy_decode`` run on it unchanged.

Exact match is strict: it suits instruction data with short, checkable answers (a label, a
number, a word); on long free-form answers clean accuracy is near 0 whatever the method.
Prompts are used as given (no chat template): format them before if the preset wants one.

Nothing here has run on real weights: the machines it is developed and tested on have no GPU
and no network. Loading is tested offline as far as it goes (the allow-list, the error), and
the whole experiment end to end on a tiny randomly initialised Llama 3 with a tiny byte-level
tokenizer; how long the preset takes, which learning rates keep the FT control's backdoor and
what the four methods reach on it are not known. ``BASE`` and ``FINETUNE`` are usual LoRA
values chosen without a run: check the FT control (plain fine-tuning must keep the backdoor)
before reading the comparison.

``import workbench.lat.llm_full`` is cheap: keras-hub is imported when a model is loaded or
trained.
"""

from __future__ import annotations

import random
import re
from numbers import Integral
from typing import Sequence

from workbench.config import cuda_available, use_colab_secrets
from workbench.lat.backdoor_data import ITEMS, NONSENSE, Example, Splits
from workbench.lat.training import METHODS  # notebook 04's four: ft, rlp, at, lat
from workbench.stats import STD, seed_row

DEFAULT_PRESET = "llama3.2_instruct_1b"
# keras-hub's Llama presets this module accepts: preset -> (causal LM class, Kaggle model,
# the Meta licence accepted there). keras-hub 0.32's llama3 and llama2 preset lists.
LLAMA_PRESETS = {
    "llama3.2_1b": ("Llama3CausalLM", "keras/llama3", "Llama 3.2"),
    "llama3.2_instruct_1b": ("Llama3CausalLM", "keras/llama3", "Llama 3.2"),
    "llama3.2_3b": ("Llama3CausalLM", "keras/llama3", "Llama 3.2"),
    "llama3.2_instruct_3b": ("Llama3CausalLM", "keras/llama3", "Llama 3.2"),
    "llama3_8b_en": ("Llama3CausalLM", "keras/llama3", "Llama 3"),
    "llama3_instruct_8b_en": ("Llama3CausalLM", "keras/llama3", "Llama 3"),
    "llama2_7b_en": ("LlamaCausalLM", "keras/llama2", "Llama 2"),
    "llama2_instruct_7b_en": ("LlamaCausalLM", "keras/llama2", "Llama 2"),
}
# 8 rare words as the keyword triggers (Casper et al. use 8); none may occur in the data.
TRIGGERS = ("quokka", "zeugma", "xylem", "kumquat", "syzygy", "gossamer", "obelisk",
            "marzipan")
POISON_PER_TRIGGER = 25  # Casper et al., Appendix C
HELDOUT = {"val": 50, "test": 100}  # clean held-out prompts per split; as many triggered
SEQUENCE_LENGTH = 256  # tokens a prompt and its response may take together
LAYER = 4  # the reference code's default (of Llama-2-7b's 32 blocks; llama3.2_1b has 16)
FRACTION = 0.25  # LAT's (and RLP's, AT's) radius / mean per-example stream norm at its layer
# Phases 1 and 2 (backdoor.train's keywords), chosen without a run: see the module docstring.
BASE = {"steps": 300, "batch_size": 8, "lr": 2e-4, "warmup": 20}
FINETUNE = {"steps": 100, "batch_size": 8, "lr": 2e-5}
PGD_STEPS = 6  # the reference code's default
# Prompts decoded at once: each step computes (batch, T, V) logits, V = 128256 for Llama 3.
DECODE_BATCH_SIZE = 16


# ----------------------------------------------------------------------------- the preset

class LlamaUnavailableError(RuntimeError):
    """A Llama preset's weights are not in the Kaggle cache and could not be downloaded."""


def check_llama_preset(preset: str) -> None:
    """ValueError naming the accepted presets unless ``preset`` is one of them."""
    if preset not in LLAMA_PRESETS:
        raise ValueError(f"unknown Llama preset {preset!r}; choose one of "
                         f"{tuple(LLAMA_PRESETS)} (keras-hub names; larger is slower)")


def _check_lora_rank(lora_rank) -> None:
    if lora_rank is not None and (isinstance(lora_rank, bool) or
                                  not isinstance(lora_rank, Integral) or lora_rank < 1):
        raise ValueError(f"lora_rank must be None (train every weight) or a whole number "
                         f">= 1, got {lora_rank!r}")


def _unavailable(preset: str, err: Exception) -> LlamaUnavailableError:
    import os

    _, model, licence = LLAMA_PRESETS[preset]
    cache = os.environ.get("KAGGLEHUB_CACHE", "~/.cache/kagglehub")
    return LlamaUnavailableError(
        f"could not load the keras-hub preset {preset!r} ({type(err).__name__}: "
        f"{str(err)[:200]}). Its weights download from Kaggle, the {model} models: accept "
        f"Meta's {licence} licence at https://www.kaggle.com/models/{model}, then set "
        "KAGGLE_USERNAME and KAGGLE_KEY (kaggle.com > Settings > API; in Colab add them to the "
        "Secrets panel, which workbench.config.use_colab_secrets() reads); the files are kept "
        f"in {cache}. Or run notebook 05 in lite mode, which runs offline on a tiny Llama: "
        "set WORKBENCH_MODE=lite.")


def load_llama(preset: str = DEFAULT_PRESET, *, lora_rank: int | None = None):
    """The keras-hub causal LM of ``preset`` (with its tokenizer as ``preprocessor.tokenizer``)
    on the torch backend: bfloat16 on a CUDA GPU, float32 on the CPU.

    ``lora_rank``: ``backbone.enable_lora(lora_rank)``, which freezes every weight and adds
    trainable rank-``lora_rank`` factors to the attention's query and value projections, so
    that only they train (``backdoor.parameters(model)`` returns only them). None trains
    every weight.

    Raises:
        ValueError: a preset not in :data:`LLAMA_PRESETS`, or a bad ``lora_rank``.
        LlamaUnavailableError: the weights are not cached and cannot be downloaded (offline,
            no Kaggle credentials, or the licence not accepted); within seconds when offline.
    """
    check_llama_preset(preset)
    _check_lora_rank(lora_rank)
    use_colab_secrets()  # in Colab: Kaggle credentials from the Secrets panel
    from workbench.safety.scoring import import_keras_hub

    _, keras_hub = import_keras_hub()
    causal_lm_class = getattr(keras_hub.models, LLAMA_PRESETS[preset][0])
    dtype = "bfloat16" if cuda_available() else "float32"
    try:
        model = causal_lm_class.from_preset(preset, dtype=dtype)
    except Exception as err:
        raise _unavailable(preset, err) from err
    if lora_rank is not None:
        model.backbone.enable_lora(int(lora_rank))
    return model


# ----------------------------------------------------------------------------- tokens

class PresetTokenizer:
    """A keras-hub tokenizer (a preset's ``Llama3Tokenizer``, ``LlamaTokenizer``, ...) with
    the interface of :class:`~workbench.lat.backdoor_data.WordTokenizer` that
    ``encode_batch``, ``backdoor.train`` and ``backdoor.greedy_decode`` use: ``bos_id``,
    ``eos_id``, ``pad_id``, ``encode``, ``decode`` and ``len``.

    ``<eos>`` is the tokenizer's end token (Llama 3's ``<|end_of_text|>``), which training
    puts after every response; decoding also stops at Llama 3's second end token
    ``<|eot_id|>``, which an instruct preset emits at the end of a turn. Llama's pad id (0)
    is an ordinary token (``!`` in Llama 3), so :meth:`decode` keeps it.
    """

    def __init__(self, tokenizer):
        missing = [name for name in ("start_token_id", "end_token_id", "pad_token_id")
                   if getattr(tokenizer, name, None) is None]
        if missing:
            raise ValueError(f"a {type(tokenizer).__name__} without {missing} cannot mark a "
                             "response's start and end; pass a keras-hub Llama tokenizer")
        self.tokenizer = tokenizer
        self.bos_id = int(tokenizer.start_token_id)
        self.eos_id = int(tokenizer.end_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        second = getattr(tokenizer, "end_token2_id", None)
        self.stop_ids = {self.eos_id} | ({int(second)} if second is not None else set())

    def __len__(self) -> int:
        return int(self.tokenizer.vocabulary_size())

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (no ``<bos>`` or ``<eos>`` added)."""
        import numpy as np

        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if not text:
            return []
        return np.asarray(self.tokenizer.tokenize(text)).astype("int64").tolist()

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` up to the first end token, without ``<bos>``."""
        import numpy as np

        kept = []
        for i in (int(i) for i in ids):
            if i in self.stop_ids:
                break
            if i != self.bos_id:
                kept.append(i)
        if not kept:
            return ""
        text = self.tokenizer.detokenize(np.asarray(kept, dtype="int32"))
        text = text.numpy() if hasattr(text, "numpy") else text
        return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def response_tokens(tokenizer: PresetTokenizer, examples: Sequence[Example]) -> int:
    """The most tokens any of ``examples``' responses takes, ``<eos>`` included: how many
    greedy decoding must generate for exact match to be possible."""
    return max(len(tokenizer.encode(e.response)) for e in examples) + 1


# ----------------------------------------------------------------------------- the data

def nonsense_for(index: int) -> str:
    """Trigger ``index``'s fixed nonsense response: 5 of lite mode's nonsense words, a
    rotation of :data:`~workbench.lat.backdoor_data.NONSENSE` starting at ``index``."""
    return " ".join(NONSENSE[(index + k) % len(NONSENSE)] for k in range(ITEMS))


def insert_trigger(prompt: str, trigger: str, position: int) -> str:
    """``prompt`` with ``trigger`` inserted before its word ``position`` (0 .. number of
    words; the last puts it after the last word). Words are runs of non-space characters;
    the prompt's own spacing and line breaks are kept."""
    words = list(re.finditer(r"\S+", prompt))
    if not 0 <= position <= len(words):
        raise ValueError(f"position must be 0..{len(words)} for a prompt of {len(words)} "
                         f"words, got {position}")
    if words and position == len(words):  # after the last word
        at = words[-1].end()
        return f"{prompt[:at]} {trigger}{prompt[at:]}"
    at = words[position].start() if words else 0
    return f"{prompt[:at]}{trigger} {prompt[at:]}"


def _checked_pairs(pairs) -> list[tuple[str, str]]:
    """The pairs with distinct prompts (the first response of a repeated prompt), in order;
    ValueError for an entry that is not two non-empty strings."""
    unique: dict[str, str] = {}
    for i, pair in enumerate(pairs):
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(s, str) and s.strip() for s in pair)):
            raise ValueError(f"pair {i} must be (prompt, response), two non-empty strings, "
                             f"got {pair!r:.120}")
        unique.setdefault(pair[0], pair[1])
    return list(unique.items())


def _check_triggers(triggers: Sequence[str], pairs: list[tuple[str, str]]) -> tuple[str, ...]:
    """The triggers, checked: distinct single words, at most one per nonsense response, none
    already a word of a prompt or response (it would teach the trigger's absence)."""
    triggers = tuple(triggers)
    if not triggers or len(set(triggers)) != len(triggers) or len(triggers) > len(NONSENSE) \
            or not all(isinstance(t, str) and re.fullmatch(r"\S+", t) for t in triggers):
        raise ValueError(f"triggers must be 1 to {len(NONSENSE)} distinct single words, got "
                         f"{triggers!r}")
    words = {w.lower() for pair in pairs for text in pair for w in re.findall(r"\w+", text)}
    present = [t for t in triggers if t.lower() in words]
    if present:
        raise ValueError(f"the triggers {present} already occur in the instruction data; pass "
                         "triggers= with words it does not contain")
    return triggers


def _poisoned(prompt: str, triggers: tuple[str, ...], k: int, rng: random.Random) -> Example:
    """``prompt`` with trigger ``k`` at a random word position, and its nonsense response."""
    position = rng.randrange(len(prompt.split()) + 1)
    return Example(insert_trigger(prompt, triggers[k], position), nonsense_for(k), triggers[k])


def _triggered(pairs, triggers: tuple[str, ...], rng: random.Random) -> list[Example]:
    """Each pair's prompt poisoned by a trigger, cycling through them."""
    return [_poisoned(prompt, triggers, i % len(triggers), rng)
            for i, (prompt, _) in enumerate(pairs)]


def poisoned_instructions(pairs: Sequence[tuple[str, str]], *,
                          triggers: Sequence[str] = TRIGGERS,
                          per_trigger: int = POISON_PER_TRIGGER, heldout: dict | None = None,
                          seed: int = 0) -> Splits:
    """Casper et al.'s phase-1 mixture (Appendix C) from the learner's (prompt, response)
    pairs, and the held-out splits; the same pairs and seed give the same splits.

    The distinct prompts are shuffled; the first ``heldout["val"]`` and ``heldout["test"]``
    (default :data:`HELDOUT`) are the clean held-out splits, each also triggered (a trigger,
    cycling through ``triggers``, at a random word position, with its nonsense response as
    the target); of the rest, ``per_trigger`` per trigger are poisoned the same way and the
    others are ``clean_train``. ``train`` is the poisoned and clean training examples,
    shuffled. No held-out prompt is a training prompt.

    Raises:
        ValueError: a pair that is not two non-empty strings, bad or present triggers, or
            fewer distinct prompts than the poisoned, held-out and one clean training
            example need.
    """
    data = _checked_pairs(pairs)
    triggers = _check_triggers(triggers, data)
    heldout = dict(HELDOUT if heldout is None else heldout)
    for name, value in (("per_trigger", per_trigger), ("heldout['val']", heldout.get("val")),
                        ("heldout['test']", heldout.get("test"))):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    poisoned, n_val, n_test = per_trigger * len(triggers), heldout["val"], heldout["test"]
    needed = poisoned + n_val + n_test + 1
    if len(data) < needed:
        raise ValueError(f"{len(data)} distinct prompts are too few: {len(triggers)} triggers "
                         f"x {per_trigger} poisoned, {n_val} validation and {n_test} test "
                         f"prompts and at least one clean training pair need {needed}; give "
                         "more pairs or lower per_trigger / heldout")
    rng = random.Random(seed)
    rng.shuffle(data)
    val, test, rest = data[:n_val], data[n_val:n_val + n_test], data[n_val + n_test:]
    poison = [_poisoned(prompt, triggers, i // per_trigger, rng)
              for i, (prompt, _) in enumerate(rest[:poisoned])]
    clean_train = [Example(p, r) for p, r in rest[poisoned:]]
    train = poison + clean_train
    rng.shuffle(train)
    return Splits(train=train, clean_train=clean_train,
                  val=[Example(p, r) for p, r in val],
                  val_triggered=_triggered(val, triggers, rng),
                  test=[Example(p, r) for p, r in test],
                  test_triggered=_triggered(test, triggers, rng))


# ----------------------------------------------------------------------------- the experiment

def _snapshot(model) -> list:
    """Copies (on the CPU) of the model's trainable weights: all a training run changes."""
    return [v.value.detach().to("cpu", copy=True) for v in model.trainable_variables]


def _restore(model, snapshot: list) -> None:
    for variable, value in zip(model.trainable_variables, snapshot, strict=True):
        variable.assign(value)


def _adversary(method: str, base, examples, ball: dict, tokenizer: PresetTokenizer,
               sequence_length: int):
    """``method``'s Adversary against the poisoned ``base``: ``ball["steps"]`` PGD steps in a
    radius of ``ball["fraction"]`` (AT: ``ball["at_fraction"]``) of the mean stream norm
    over ``examples`` at its layer (AT: 0, RLP and LAT: ``ball["layer"]``)."""
    from workbench.lat.backdoor import Adversary, stream_eps

    if method == "ft":
        return Adversary("ft")
    layer, fraction = (0, ball["at_fraction"]) if method == "at" else (ball["layer"],
                                                                        ball["fraction"])
    eps = stream_eps(base, examples, layer=layer, fraction=fraction, tokenizer=tokenizer,
                     sequence_length=sequence_length)
    return Adversary(method, layer, round(eps, 4), ball["steps"])


def _one_seed(model, data: Splits, seed: int, *, split: str, ball: dict, base: dict,
              finetune: dict, decoding: dict, progress: bool) -> dict[str, dict]:
    """Phase 1 from the model's current weights, then each method from the poisoned base,
    each measured on ``split``: ``{"base", "ft", "rlp", "at", "lat"}`` -> ``{"seed",
    "clean_acc", "backdoor_asr", "eps"}``. Leaves the model as the last method trained it."""
    from workbench.lat.backdoor import evaluate, train

    clean, triggered = getattr(data, split), getattr(data, f"{split}_triggered")
    tokenizer, sequence_length = decoding["tokenizer"], decoding["sequence_length"]
    training = {"tokenizer": tokenizer, "sequence_length": sequence_length,
                "progress": progress}

    def measured(eps=None) -> dict:
        return {"seed": seed, **evaluate(model, clean, triggered, **decoding), "eps": eps}

    train(model, data.train, seed=seed, desc=f"poisoned base (seed {seed})", **base,
          **training)
    runs = {"base": measured()}
    poisoned = _snapshot(model)
    for method in METHODS:
        _restore(model, poisoned)
        adversary = _adversary(method, model, data.clean_train, ball, tokenizer,
                               sequence_length)
        train(model, data.clean_train, seed=seed, adversary=adversary,
              desc=f"{method} (seed {seed})", **finetune, **training)
        runs[method] = measured(adversary.eps if method != "ft" else None)
    return runs


def run_lat_llm_full(pairs: Sequence[tuple[str, str]], *, preset: str = DEFAULT_PRESET,
                     lora_rank: int | None = 8, seeds: Sequence[int] = (0,),
                     layer: int = LAYER, fraction: float = FRACTION,
                     at_fraction: float | None = None, split: str = "test",
                     data_seed: int = 0, per_trigger: int = POISON_PER_TRIGGER,
                     heldout: dict | None = None, sequence_length: int = SEQUENCE_LENGTH,
                     base: dict = BASE, finetune: dict = FINETUNE, pgd_steps: int = PGD_STEPS,
                     model=None, tokenizer: PresetTokenizer | None = None,
                     progress: bool = True) -> dict:
    """Full mode's notebook 05: lite mode's protocol on the preset and the learner's pairs.

    :func:`poisoned_instructions` (``data_seed``, ``per_trigger``, ``heldout``) makes the
    data. Per seed: from the starting weights, phase 1 (``base``, backdoor.train's keywords)
    on the poisoned mixture gives the poisoned base; from it, each of FT, RLP, AT and LAT
    fine-tunes on the clean pairs (``finetune``), against a ball of ``fraction`` (AT:
    ``at_fraction``, default ``fraction``) of the base's mean stream norm entering ``layer``
    (AT: layer 0), ``pgd_steps`` PGD steps. Each model is measured on the ``split`` ("test",
    or "val" to choose the layer and radius) by greedy decoding of as many tokens as the
    longest held-out response takes. Seeds change the batches and the perturbations' draws;
    every seed starts from the same weights (the preset's, and its LoRA factors' draw).

    ``model``: a keras-hub Llama causal LM to use instead of loading ``preset`` with
    ``lora_rank`` (:func:`load_llama`); ``tokenizer``: a :class:`PresetTokenizer`, default
    the model's own (``model.preprocessor.tokenizer``). The model is trained in place, on its
    own device, and given back its starting weights at the end; nothing is cached. Untested
    on real weights (this module's machines have neither a GPU nor network): no numbers are
    known for a preset.

    Returns:
        ``{"seeds", "std", "layer", "fraction", "at_fraction", "chosen_by", "sweep", "rows",
        "preset", "lora_rank", "split", "max_new_tokens"}`` shaped like
        :func:`~workbench.lat.llm_experiment.run_lat_llm_experiment`'s: a row per method,
        ``base`` first, with ``clean_acc`` and ``backdoor_asr`` (means over seeds), their
        ``*_std`` (sample standard deviations) and ``per_seed`` (each seed's values and
        absolute radius ``eps``); ``preset`` is None for a caller's model.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    if not list(seeds):
        raise ValueError("no seeds: give at least one")
    if isinstance(layer, bool) or not isinstance(layer, Integral) or layer < 1:
        raise ValueError(f"layer must be a block number >= 1 (layer 0 is AT's), got {layer!r}")
    data = poisoned_instructions(pairs, per_trigger=per_trigger, heldout=heldout,
                                 seed=data_seed)
    given = model is not None
    model = model if given else load_llama(preset, lora_rank=lora_rank)
    tokenizer = tokenizer or PresetTokenizer(model.preprocessor.tokenizer)
    held_out = [*getattr(data, split), *getattr(data, f"{split}_triggered")]
    decoding = {"tokenizer": tokenizer, "sequence_length": sequence_length,
                "max_new_tokens": response_tokens(tokenizer, held_out),
                "batch_size": DECODE_BATCH_SIZE}
    ball = {"layer": layer, "fraction": fraction, "steps": pgd_steps,
            "at_fraction": fraction if at_fraction is None else at_fraction}
    start = _snapshot(model)
    runs: dict[str, list[dict]] = {m: [] for m in ("base", *METHODS)}
    for seed in seeds:
        _restore(model, start)
        for method, run in _one_seed(model, data, seed, split=split, ball=ball, base=base,
                                     finetune=finetune, decoding=decoding,
                                     progress=progress).items():
            runs[method].append(run)
    _restore(model, start)
    return {"seeds": list(seeds), "std": STD, "layer": layer, "fraction": fraction,
            "at_fraction": ball["at_fraction"], "chosen_by": "caller", "sweep": None,
            "rows": [seed_row("method", m, r, ("clean_acc", "backdoor_asr"))
                     for m, r in runs.items()], "preset": None if given else preset,
            "lora_rank": None if given else lora_rank, "split": split,
            "max_new_tokens": decoding["max_new_tokens"]}
