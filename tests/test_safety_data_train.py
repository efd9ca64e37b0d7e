"""The labelled policy set the lite safety scorer trains on: schema, coverage, balance, pairing.

Reads the JSON Lines file with the standard library only, so it runs in milliseconds and does
not depend on ``workbench.safety`` being importable.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / ".." / "workbench" / "safety" / "data" / "policy_train.jsonl"

HARM_TYPES = {"dangerous_content", "hate_speech", "sexually_explicit", "harassment"}
USE_CASES = {"prompt_only", "prompt_response"}
KINDS = {"violating", "benign_lookalike", "benign", "other_policy"}
KEYS = {"id", "harm_type", "use_case", "user_content", "model_content", "label", "kind"}


@pytest.fixture(scope="module")
def lines() -> list[str]:
    with open(DATA, encoding="utf-8") as f:
        return f.read().split("\n")


@pytest.fixture(scope="module")
def rows(lines) -> list[dict]:
    return [json.loads(line) for line in lines if line.strip()]


def test_one_object_per_line_no_blank_lines(lines):
    assert lines[-1] == "", "file ends with a newline"
    body = lines[:-1]
    assert all(line.strip() for line in body), "no blank lines"
    assert all(len(line) <= 1200 for line in body), max(len(line) for line in body)
    for line in body:
        assert isinstance(json.loads(line), dict)


def test_schema_and_types(rows):
    for r in rows:
        assert set(r) == KEYS, r
        assert isinstance(r["id"], str) and r["id"].startswith("train-"), r
        assert r["harm_type"] in HARM_TYPES, r
        assert r["use_case"] in USE_CASES, r
        assert isinstance(r["user_content"], str) and r["user_content"].strip(), r
        assert r["model_content"] is None or (isinstance(r["model_content"], str) and r["model_content"].strip()), r
        assert type(r["label"]) is int and r["label"] in (0, 1), r
        assert r["kind"] in KINDS, r
        # label and kind agree: only "violating" rows are positive
        assert r["label"] == (1 if r["kind"] == "violating" else 0), r


def test_model_content_null_iff_prompt_only(rows):
    for r in rows:
        assert (r["model_content"] is None) == (r["use_case"] == "prompt_only"), r


def test_size(rows):
    assert len(rows) >= 400


def test_ids_unique_and_deterministic(rows):
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert ids == [f"train-{i:04d}" for i in range(1, len(rows) + 1)]


def test_no_duplicate_triples(rows):
    triples = collections.Counter((r["harm_type"], r["user_content"], r["model_content"]) for r in rows)
    dupes = [t for t, n in triples.items() if n > 1]
    assert not dupes, dupes[:5]


@pytest.mark.parametrize("harm_type", sorted(HARM_TYPES))
@pytest.mark.parametrize("use_case", sorted(USE_CASES))
def test_every_cell_covered_with_both_labels(rows, harm_type, use_case):
    cell = [r for r in rows if r["harm_type"] == harm_type and r["use_case"] == use_case]
    assert len(cell) >= 30, len(cell)
    assert {r["label"] for r in cell} == {0, 1}


@pytest.mark.parametrize("harm_type", sorted(HARM_TYPES))
def test_label_balance_per_harm_type(rows, harm_type):
    labels = [r["label"] for r in rows if r["harm_type"] == harm_type]
    share = sum(labels) / len(labels)
    assert 0.3 <= share <= 0.6, share


def test_benign_lookalikes_spread_over_harm_types(rows):
    looks = [r for r in rows if r["kind"] == "benign_lookalike"]
    assert len(looks) >= 60
    per_type = collections.Counter(r["harm_type"] for r in looks)
    assert set(per_type) == HARM_TYPES
    assert min(per_type.values()) >= 10, per_type


def test_violating_prompts_paired_with_a_policy_they_do_not_break(rows):
    violating = {(r["user_content"], r["model_content"]): r["harm_type"] for r in rows if r["label"] == 1}
    negatives = collections.defaultdict(set)
    for r in rows:
        if r["label"] == 0:
            negatives[r["user_content"]].add(r["harm_type"])
    users = {u: h for (u, _), h in violating.items()}
    paired = [u for u, h in users.items() if negatives[u] - {h}]
    assert len(paired) / len(users) >= 0.3, (len(paired), len(users))
    # every other_policy row is a violating example of another harm type, labelled 0 here
    for r in rows:
        if r["kind"] == "other_policy":
            source = violating.get((r["user_content"], r["model_content"]))
            assert source is not None and source != r["harm_type"], r


def test_no_content_is_both_violating_and_not_for_the_same_policy(rows):
    by_key = collections.defaultdict(set)
    for r in rows:
        by_key[(r["harm_type"], r["use_case"], r["user_content"], r["model_content"])].add(r["label"])
    assert all(len(labels) == 1 for labels in by_key.values())


def test_prompt_response_rows_teach_that_the_response_decides(rows):
    # a refused harmful request (label 0) and a benign request answered harmfully (label 1) exist
    pr = [r for r in rows if r["use_case"] == "prompt_response"]
    positive_users = {r["user_content"] for r in rows if r["label"] == 1 and r["use_case"] == "prompt_only"}
    refusals = [r for r in pr if r["kind"] == "benign" and r["user_content"] in positive_users]
    assert len(refusals) >= 20
    for harm_type in HARM_TYPES:
        assert any(r["harm_type"] == harm_type for r in refusals), harm_type
