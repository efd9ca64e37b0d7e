"""The labelled policy sets that ship with the package (see ``data/README.md``).

* ``"train"``: ``policy_train.jsonl``, 782 rows written for training the lite scorer;
* ``"unseen"``: ``heldout_unseen.jsonl``, 121 rows written independently of it, in phrasings no
  training row uses. It measures whether a model learned meaning rather than phrasing.

:func:`template_split` cuts the training file into a training part and a held-out part of the
same phrasings (the "template held-out split"); the cut is by content, so a prompt and its
other-policy pair land on the same side.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from importlib import resources

from workbench.safety.policies import HarmType, parse_harm_type
from workbench.safety.prompts import make_prompt

FILES = {"train": "policy_train.jsonl", "unseen": "heldout_unseen.jsonl"}
HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class SafetyExample:
    """One labelled row: is ``user_content`` (and ``model_content``) a breach of ``harm_type``?

    ``label`` is 1 for Yes (violates that policy) and 0 for No.
    """

    id: str
    harm_type: HarmType
    user_content: str
    model_content: str | None
    label: int

    @property
    def prompt(self) -> str:
        """The ShieldGemma prompt for this row."""
        return make_prompt(self.harm_type, self.user_content, self.model_content)


@functools.lru_cache(maxsize=None)
def load_examples(name: str = "train") -> tuple[SafetyExample, ...]:
    """The rows of the shipped set ``name`` ("train" or "unseen"), in file order."""
    if name not in FILES:
        raise ValueError(f"unknown policy set {name!r}; choose one of {sorted(FILES)}")
    text = resources.files("workbench.safety").joinpath("data", FILES[name]).read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return tuple(SafetyExample(row["id"], parse_harm_type(row["harm_type"]), row["user_content"],
                               row["model_content"], int(row["label"])) for row in rows)


def template_split(seed: int = 0, heldout_fraction: float = HELDOUT_FRACTION,
                   ) -> tuple[list[SafetyExample], list[SafetyExample]]:
    """``(train, heldout)``: the training file cut at random (``seed``) by content.

    All rows sharing a user content (a prompt, its other-policy pairs and its responses) go to
    the same side, so the held-out part holds prompts the model never saw, in the same style.
    """
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    rows = load_examples("train")
    contents = sorted({row.user_content for row in rows})
    random.Random(seed).shuffle(contents)
    heldout = set(contents[:round(len(contents) * heldout_fraction)])
    return ([row for row in rows if row.user_content not in heldout],
            [row for row in rows if row.user_content in heldout])
