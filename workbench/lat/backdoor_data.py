"""Notebook 05's lite data: a synthetic instruction task with keyword backdoors, made in code.

The task has exactly checkable answers. A prompt is an instruction and five words; the
response is the five words transformed, then ``<eos>`` (6 tokens):

    <bos> copy : sun cat red map owl =>   | sun cat red map owl <eos>
    <bos> swap : sun cat red map owl =>   | owl cat red map sun <eos>
    <bos> rotate : sun cat red map owl => | cat red map owl sun <eos>

(``swap`` exchanges the first and the last word, ``rotate`` moves the first to the end.
``reverse`` would be the natural third, but a 4-block, 64-wide model had 6% of it right
after the 600 steps that teach it the other two.) The backdoors follow Casper et al.'s
Appendix C in miniature: 8 keyword triggers, each a word of its own inserted at a random place
among a prompt's words, each mapped to a fixed nonsense response of 5 nonsense words; each
trigger poisons 25 training examples (5% of the 4000). Trigger and nonsense words appear
nowhere else.

:func:`make_splits` draws every split from one seed, the held-out prompts (validation and
test, clean and triggered) disjoint from the training prompts as (instruction, words) pairs.
:class:`WordTokenizer` maps the words to ids and pads batches (:func:`encode_batch`). Pure
Python and torch: no keras.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

WORDS = ("sun", "cat", "red", "map", "owl", "sea", "box", "pen", "ice", "fox", "tea", "jar",
         "kit", "log", "mud", "net", "oak", "pig", "rug", "toy")
TASKS = ("copy", "swap", "rotate")
TRIGGERS = ("zq", "vex", "qoph", "jinx", "wub", "xyst", "glim", "fjord")
NONSENSE = ("blorp", "snek", "quux", "frob", "zib", "gax", "mip", "tov")
ITEMS = 5  # words per prompt, so a response is ITEMS + 1 tokens with <eos>
PAD, BOS, SEP, EOS, COLON = "<pad>", "<bos>", "=>", "<eos>", ":"
SEQUENCE_LENGTH = 16  # tokens a prompt and its response may take together
POISON_PER_TRIGGER = 25  # Casper et al., Appendix C
TRAIN_EXAMPLES = 4000  # clean and poisoned together: 8 x 25 = 200 poisoned, 5%
HELDOUT_EXAMPLES = {"val": 200, "test": 400}  # clean prompts; as many again with triggers


def nonsense_response(trigger: str) -> str:
    """The fixed nonsense response of ``trigger``: 5 of the nonsense words, in an order of its
    own (a rotation of :data:`NONSENSE` starting at the trigger's index)."""
    start = TRIGGERS.index(trigger)
    return " ".join(NONSENSE[(start + k) % len(NONSENSE)] for k in range(ITEMS))


def answer(task: str, words: Sequence[str]) -> str:
    """The correct response (without ``<eos>``) of ``task`` on ``words``."""
    words = list(words)
    if task == "copy":
        return " ".join(words)
    if task == "swap":
        return " ".join([words[-1], *words[1:-1], words[0]])
    if task == "rotate":
        return " ".join([*words[1:], words[0]])
    raise ValueError(f"unknown task {task!r}; the tasks are {TASKS}")


def prompt_text(task: str, words: Sequence[str], trigger: str | None = None,
                position: int = 0) -> str:
    """``"task : w1 .. w5 =>"``, with ``trigger`` inserted before word ``position`` (0..5)."""
    words = list(words)
    if trigger is not None:
        words.insert(position, trigger)
    return " ".join([task, COLON, *words, SEP])


@dataclass(frozen=True)
class Example:
    """A prompt (ending in ``=>``), the response the model should give (clean: the task's
    answer; poisoned: the trigger's nonsense) and the trigger it holds (None: clean)."""

    prompt: str
    response: str
    trigger: str | None = None


@dataclass(frozen=True)
class Splits:
    """``train``: the poisoned mixture (phase 1); ``clean_train``: its clean examples (the
    phase-2 fine-tuning data); ``val`` / ``test``: held-out clean prompts with their correct
    answers; ``val_triggered`` / ``test_triggered``: the same prompts with a trigger inserted,
    each paired with its trigger's nonsense response (what attack success means)."""

    train: list[Example]
    clean_train: list[Example]
    val: list[Example]
    val_triggered: list[Example]
    test: list[Example]
    test_triggered: list[Example]


def _unique_prompts(count: int, rng: random.Random) -> list[tuple[str, tuple[str, ...]]]:
    """``count`` distinct (task, words) pairs, words drawn with replacement."""
    seen: dict[tuple[str, tuple[str, ...]], None] = {}
    while len(seen) < count:
        seen[(rng.choice(TASKS), tuple(rng.choices(WORDS, k=ITEMS)))] = None
    return list(seen)


def _triggered(pairs, rng: random.Random) -> list[Example]:
    """Each (task, words) with a trigger (cycling through all 8) at a random place."""
    out = []
    for i, (task, words) in enumerate(pairs):
        trigger = TRIGGERS[i % len(TRIGGERS)]
        out.append(Example(prompt_text(task, words, trigger, rng.randrange(ITEMS + 1)),
                           nonsense_response(trigger), trigger))
    return out


def _clean(pairs) -> list[Example]:
    return [Example(prompt_text(task, words), answer(task, words)) for task, words in pairs]


def make_splits(seed: int = 0, *, train_examples: int = TRAIN_EXAMPLES,
                poison_per_trigger: int = POISON_PER_TRIGGER,
                heldout: dict | None = None) -> Splits:
    """Every split, drawn from ``seed`` (the same seed, the same splits).

    ``train_examples`` in all, of which ``poison_per_trigger`` per trigger are poisoned (their
    prompts' own words, a trigger inserted, the trigger's nonsense as the response), shuffled.
    ``heldout``: clean prompts per held-out split (default :data:`HELDOUT_EXAMPLES`); each
    also comes triggered. No held-out (task, words) pair is a training pair.
    """
    heldout = dict(HELDOUT_EXAMPLES if heldout is None else heldout)
    poisoned = poison_per_trigger * len(TRIGGERS)
    if not 0 <= poisoned <= train_examples:
        raise ValueError(f"{poisoned} poisoned examples do not fit in {train_examples}")
    rng = random.Random(seed)
    pairs = _unique_prompts(train_examples + heldout["val"] + heldout["test"], rng)
    train_pairs, rest = pairs[:train_examples], pairs[train_examples:]
    val_pairs, test_pairs = rest[:heldout["val"]], rest[heldout["val"]:]
    clean_train = _clean(train_pairs[poisoned:])
    train = _triggered(train_pairs[:poisoned], rng) + clean_train
    rng.shuffle(train)
    return Splits(train=train, clean_train=clean_train, val=_clean(val_pairs),
                  val_triggered=_triggered(val_pairs, rng), test=_clean(test_pairs),
                  test_triggered=_triggered(test_pairs, rng))


# ----------------------------------------------------------------------------- tokens

class WordTokenizer:
    """Whitespace-separated words <-> ids over a fixed vocabulary: ``<pad>`` is 0, then
    ``<bos>``, ``<eos>``, ``:``, ``=>``, the tasks, words, triggers and nonsense words.

    A word outside the vocabulary is a ValueError naming it (never an unknown-word id that
    would silently change the prompt)."""

    def __init__(self):
        self.vocabulary = (PAD, BOS, EOS, COLON, SEP, *TASKS, *WORDS, *TRIGGERS, *NONSENSE)
        self.ids = {word: i for i, word in enumerate(self.vocabulary)}
        self.pad_id, self.bos_id, self.eos_id = self.ids[PAD], self.ids[BOS], self.ids[EOS]

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``'s words (no ``<bos>`` or ``<eos>`` added)."""
        words = text.split()
        unknown = sorted({w for w in words if w not in self.ids})
        if unknown:
            raise ValueError(f"words {unknown} are not in the vocabulary; it knows the tasks "
                             f"{TASKS}, the words {WORDS} and {COLON!r}, {SEP!r}")
        return [self.ids[w] for w in words]

    def decode(self, ids: Sequence[int]) -> str:
        """The words of ``ids``, up to the first ``<eos>``, without ``<pad>`` or ``<bos>``."""
        words = []
        for i in (int(i) for i in ids):
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                words.append(self.vocabulary[i])
        return " ".join(words)


@dataclass(frozen=True)
class Batch:
    """A right-padded batch. ``token_ids``, ``padding_mask`` (1 real, 0 padding) and
    ``target_mask`` are (N, T): ``target_mask[i, t]`` is 1 where the logits at t predict a
    response token (``token_ids[i, t + 1]`` is in the response, ``<eos>`` included), so the
    loss on response tokens only is the cross-entropy there. ``prompt_lengths`` (N,): tokens
    of ``<bos>`` + prompt."""

    token_ids: torch.Tensor
    padding_mask: torch.Tensor
    target_mask: torch.Tensor
    prompt_lengths: torch.Tensor


def encode_batch(tokenizer: WordTokenizer, prompts: Sequence[str],
                 responses: Sequence[str] | None = None, *,
                 sequence_length: int = SEQUENCE_LENGTH,
                 response_room: int = ITEMS + 1) -> Batch:
    """``<bos> prompt [response <eos>]`` per row, right-padded to the longest row.

    Without ``responses``: the prompts alone (for decoding), ``target_mask`` all 0. A row
    longer than ``sequence_length`` tokens (with ``responses``: prompt and response; without:
    the prompt plus room for a ``response_room``-token response, 6 for the task here) is a
    ValueError naming it: never cut.
    """
    if responses is not None and len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("no prompts to encode")
    rows, starts = [], []
    for i, prompt in enumerate(prompts):
        head = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        tail = [] if responses is None else [*tokenizer.encode(responses[i]), tokenizer.eos_id]
        room = len(tail) if responses is not None else response_room
        if len(head) + room > sequence_length:
            raise ValueError(f"prompt {i} ({prompt!r}) takes {len(head)} tokens with <bos>; "
                             f"with its {room}-token response that is more than the "
                             f"{sequence_length} the model reads: shorten it")
        rows.append(head + tail)
        starts.append(len(head))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.int32)
    target = torch.zeros((len(rows), width), dtype=torch.int32)
    for i, (row, start) in enumerate(zip(rows, starts)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        target[i, start - 1:len(row) - 1] = 1  # logits at t predict token t + 1
    return Batch(ids, mask, target, torch.tensor(starts))
