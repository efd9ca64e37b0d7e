"""Words <-> ids for notebook 06's lite language models.

Text is lower-cased and cut into words (``what's``, ``pizza``), digits, the punctuation
``? . , ! :`` and line breaks, each one token. The vocabulary is every token of
:func:`workbench.redteam.corpus.all_text` (sorted) after ``<pad>``, ``<bos>`` and ``<eos>``:
all the shipped text, and nothing else. A word outside it is a ValueError naming it, never an
unknown-word id that would silently change the text. Pure Python.
"""

from __future__ import annotations

import functools
import re
from typing import Sequence

from workbench.redteam.corpus import all_text

PAD, BOS, EOS, NEWLINE = "<pad>", "<bos>", "<eos>", "\n"
PUNCTUATION = ("?", ".", ",", "!", ":")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[?.,!:]|\n|\S")


def split(text: str) -> list[str]:
    """The tokens of ``text`` (lower-cased); spaces and tabs separate them and vanish."""
    return _TOKEN.findall(text.lower())


def join(tokens: Sequence[str]) -> str:
    """Text from tokens: one space between words, none before punctuation or around a line
    break (``join(split(t))`` is ``t`` for lower-case text spaced that way)."""
    out = ""
    for token in tokens:
        glued = not out or token in PUNCTUATION or token == NEWLINE or out.endswith(NEWLINE)
        out += token if glued else " " + token
    return out


class Vocabulary:
    """The lite models' tokenizer: ``encode`` text -> ids, ``decode`` ids -> text."""

    def __init__(self, texts: Sequence[str]):
        words = sorted({token for text in texts for token in split(text)})
        self.tokens = (PAD, BOS, EOS, *words)
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id = self.ids[PAD], self.ids[BOS], self.ids[EOS]

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``'s tokens (no ``<bos>`` or ``<eos>`` added); ValueError naming
        the tokens outside the vocabulary."""
        tokens = split(text)
        unknown = sorted({t for t in tokens if t not in self.ids})
        if unknown:
            raise ValueError(f"{unknown} are not in the lite models' vocabulary (the words of "
                             f"the shipped text, workbench.redteam.corpus); rephrase with "
                             f"words it knows")
        return [self.ids[t] for t in tokens]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` up to the first ``<eos>``, without ``<pad>`` or ``<bos>``."""
        tokens = []
        for i in map(int, ids):
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                tokens.append(self.tokens[i])
        return join(tokens)


@functools.lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    """The vocabulary of all the shipped text (built once)."""
    return Vocabulary(all_text())
