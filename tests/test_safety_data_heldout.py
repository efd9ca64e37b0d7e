"""The independently written held-out safety set (``heldout_unseen.jsonl``).

This set is written apart from the lite scorer's training set so that it measures whether the
model learned meaning rather than templates (issue 4, item 3). These tests check its shape and
balance, and -- only when the training set is present -- that the two sets share no prompt and no
six-word run of prompt text.

Labels follow ShieldGemma: for a prompt-only row, does the user prompt violate the row's policy;
for a prompt-response row, does the chatbot response violate it (so a harmful request answered
with a refusal is labelled 0).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent / ".." / "workbench" / "safety" / "data"
HELDOUT = DATA_DIR / "heldout_unseen.jsonl"
TRAIN = DATA_DIR / "policy_train.jsonl"

HARM_TYPES = ("dangerous_content", "hate_speech", "sexually_explicit", "harassment")
USE_CASES = ("prompt_only", "prompt_response")
KEYS = {"id", "harm_type", "use_case", "user_content", "model_content", "label"}

MIN_ROWS = 96
MIN_ROWS_PER_HARM = 24
MIN_PER_LABEL = 8
MIN_PROMPT_RESPONSE = 4
NGRAM = 6


def _load(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:  # pragma: no cover - message only
                raise AssertionError(f"{path.name}:{lineno}: not valid JSON: {exc}") from exc
    return rows


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    assert HELDOUT.is_file(), f"missing {HELDOUT}"
    return _load(HELDOUT)


def test_file_is_utf8_jsonl_without_blank_lines():
    raw = HELDOUT.read_bytes()
    raw.decode("utf-8")  # raises on invalid UTF-8
    lines = raw.decode("utf-8").split("\n")
    assert lines[-1] == "", "file should end with a newline"
    assert all(line.strip() for line in lines[:-1]), "blank line in the file"


def test_schema(rows):
    for r in rows:
        assert set(r) == KEYS, (r.get("id"), set(r) ^ KEYS)
        assert r["harm_type"] in HARM_TYPES, r["id"]
        assert r["use_case"] in USE_CASES, r["id"]
        assert r["label"] in (0, 1) and isinstance(r["label"], int), r["id"]
        assert not isinstance(r["label"], bool), r["id"]
        assert isinstance(r["user_content"], str) and r["user_content"].strip(), r["id"]
        assert r["user_content"] == r["user_content"].strip(), r["id"]


def test_model_content_null_iff_prompt_only(rows):
    for r in rows:
        if r["use_case"] == "prompt_only":
            assert r["model_content"] is None, r["id"]
        else:
            assert isinstance(r["model_content"], str) and r["model_content"].strip(), r["id"]


def test_ids_are_deterministic_and_sequential(rows):
    assert [r["id"] for r in rows] == [f"unseen-{i:03d}" for i in range(1, len(rows) + 1)]


def test_counts_per_harm_type_and_label(rows):
    assert len(rows) >= MIN_ROWS
    per_harm = Counter(r["harm_type"] for r in rows)
    per_label = Counter((r["harm_type"], r["label"]) for r in rows)
    for h in HARM_TYPES:
        assert per_harm[h] >= MIN_ROWS_PER_HARM, (h, per_harm[h])
        assert per_label[(h, 1)] >= MIN_PER_LABEL, (h, "positives", per_label[(h, 1)])
        assert per_label[(h, 0)] >= MIN_PER_LABEL, (h, "negatives", per_label[(h, 0)])


def test_prompt_response_rows_per_harm_type(rows):
    per = Counter(r["harm_type"] for r in rows if r["use_case"] == "prompt_response")
    for h in HARM_TYPES:
        assert per[h] >= MIN_PROMPT_RESPONSE, (h, per[h])


def test_no_duplicates(rows):
    ids = Counter(r["id"] for r in rows)
    assert not [k for k, v in ids.items() if v > 1], "duplicate ids"
    prompts = Counter(" ".join(_words(r["user_content"])) for r in rows)
    dup = [k for k, v in prompts.items() if v > 1]
    assert not dup, f"duplicate user_content (case/punctuation-insensitive): {dup}"
    responses = Counter(r["model_content"] for r in rows if r["model_content"] is not None)
    assert not [k for k, v in responses.items() if v > 1], "duplicate model_content"


@pytest.fixture(scope="module")
def train_rows() -> list[dict]:
    if not TRAIN.is_file():
        pytest.skip(f"{TRAIN.name} not present; independence check skipped")
    return _load(TRAIN)


def test_no_heldout_prompt_appears_verbatim_in_training(rows, train_rows):
    train_texts = [t.get("user_content") or "" for t in train_rows]
    train_exact = set(train_texts)
    train_norm = {" ".join(_words(t)) for t in train_texts}
    hits = [
        r["id"]
        for r in rows
        if r["user_content"] in train_exact
        or " ".join(_words(r["user_content"])) in train_norm
        or any(r["user_content"] in t for t in train_texts)
    ]
    assert not hits, f"held-out prompts found verbatim in the training set: {hits}"


def test_no_shared_word_6gram_with_training(rows, train_rows):
    train_grams: set[tuple[str, ...]] = set()
    for t in train_rows:
        train_grams |= _ngrams(t.get("user_content") or "")
    hits = {
        r["id"]: sorted(" ".join(g) for g in _ngrams(r["user_content"]) & train_grams)
        for r in rows
    }
    hits = {k: v for k, v in hits.items() if v}
    assert not hits, f"held-out prompts share a {NGRAM}-word run with training prompts: {hits}"
