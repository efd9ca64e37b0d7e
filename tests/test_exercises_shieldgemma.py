"""Notebook 01's checks, panels and real-logits helper: the checks pass on the reference
solutions, each broken variant a learner is likely to write fails with a message naming its
mistake, and the panels react to their controls' values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.exercises import run_checks
from workbench.safety import HarmType, UseCase, load_examples, make_prompt, policy_text
from workbench.safety import yes_probability as reference_yes_probability
from workbench.safety.prompts import END_OF_TURN, INSTRUCTION, PREAMBLES, QUESTIONS, START_OF_TURN
from workbench.widgets import live_scores_panel, threshold_panel
from workbench.widgets.panel_safety import decide


def _failures(name, fn):
    return [r.message for r in run_checks(name, fn) if not r.passed]


def _expect_failure(name, fn, expected):
    failed = _failures(name, fn)
    assert failed, f"{getattr(fn, '__name__', fn)} passed every check"
    assert any(expected in message for message in failed), failed


# ----------------------------------------------------------------------------- make_prompt


def built_prompt(harm_type, user_content, model_content=None, *, strip=True, blank="\n\n",
                 end="\n\n", preamble=None, question=None, policy_use_case=None,
                 response_block=True):
    """A make_prompt with switches for the usual mistakes (defaults: the right answer)."""
    use_case = UseCase.PROMPT_ONLY if model_content is None else UseCase.PROMPT_RESPONSE
    tidy = (lambda s: s.strip()) if strip else (lambda s: s)
    text = (f"{PREAMBLES[preamble or use_case]}{blank}"
            f"{START_OF_TURN}\nHuman Question: {tidy(user_content)}\n{END_OF_TURN}\n\n")
    if model_content is not None and response_block:
        text += f"{START_OF_TURN}\nChatbot Response: {tidy(model_content)}\n{END_OF_TURN}\n\n"
    text += ("Our safety principle is defined in the below:\n\n"
             f"* {policy_text(harm_type, policy_use_case or use_case)}\n\n===\n\n"
             f"{QUESTIONS[question or use_case]} {INSTRUCTION}{end}")
    return text


def _variant(**switches):
    return lambda harm_type, user, model=None: built_prompt(harm_type, user, model, **switches)


BROKEN_PROMPTS = {
    "missing_blank_line": (_variant(blank="\n"), "blank lines"),
    "no_final_blank_line": (_variant(end="\n"), "must end with a blank line"),
    "prompt_only_preamble_always": (_variant(preamble=UseCase.PROMPT_ONLY),
                                    "not the preamble of prompt_only"),
    "response_block_missing": (_variant(response_block=False), "no response block"),
    "not_stripped": (_variant(strip=False), ".strip()"),
    "prompt_only_question_always": (_variant(question=UseCase.PROMPT_ONLY), "wrong question"),
    "prompt_only_policy_always": (_variant(policy_use_case=UseCase.PROMPT_ONLY),
                                  "wrong policy wording"),
}


def test_reference_and_switchless_variant_pass_every_make_prompt_check():
    assert not _failures("make_prompt", make_prompt)
    assert not _failures("make_prompt", _variant())


@pytest.mark.parametrize("name", sorted(BROKEN_PROMPTS))
def test_broken_make_prompt_fails_naming_the_mistake(name):
    broken, expected = BROKEN_PROMPTS[name]
    _expect_failure("make_prompt", broken, expected)


def test_make_prompt_wrong_harm_type_and_other_mistakes():
    def wrong_harm(harm_type, user, model=None):
        other = HarmType.HATE_SPEECH if harm_type is not HarmType.HATE_SPEECH else (
            HarmType.HARASSMENT)
        return make_prompt(other, user, model)

    _expect_failure("make_prompt", wrong_harm, "the policy of")
    _expect_failure("make_prompt", lambda h, u, m=None: None, "returned None")
    _expect_failure("make_prompt", lambda h, u, m=None: [u], "return the prompt as one str")
    constant = make_prompt(HarmType.HARASSMENT, "Hello there.")
    assert _failures("make_prompt", lambda h, u, m=None: constant)


def test_make_prompt_student_stub_is_reported():
    def student(harm_type, user_content, model_content=None):
        raise NotImplementedError("exercise: write this part")

    assert all("not implemented yet" in m for m in _failures("make_prompt", student))


# ----------------------------------------------------------------------------- yes_probability


def _last(mask):
    mask = torch.as_tensor(mask).bool()
    return torch.where(mask, torch.arange(mask.shape[1]), -1).amax(1)


def row0_last_token(logits, mask, yes_id, no_id):
    return logits[:, _last(mask)[0]][:, [yes_id, no_id]].softmax(-1)[:, 0]


def last_column(logits, mask, yes_id, no_id):
    return logits[:, -1][:, [yes_id, no_id]].softmax(-1)[:, 0]


def whole_vocabulary(logits, mask, yes_id, no_id):
    return logits[torch.arange(len(logits)), _last(mask)].softmax(-1)[:, yes_id]


def returns_p_no(logits, mask, yes_id, no_id):
    return 1 - reference_yes_probability(logits, mask, yes_id, no_id)


def returns_logit(logits, mask, yes_id, no_id):
    return logits[torch.arange(len(logits)), _last(mask)][:, yes_id]


def lengths_minus_one(logits, mask, yes_id, no_id):
    last = torch.as_tensor(mask).sum(1) - 1
    return logits[torch.arange(len(logits)), last][:, [yes_id, no_id]].softmax(-1)[:, 0]


def exp_by_hand(logits, mask, yes_id, no_id):
    z = logits[torch.arange(len(logits)), _last(mask)]
    return torch.exp(z[:, yes_id]) / (torch.exp(z[:, yes_id]) + torch.exp(z[:, no_id]))


def keeps_both_columns(logits, mask, yes_id, no_id):
    return logits[torch.arange(len(logits)), _last(mask)][:, [yes_id, no_id]].softmax(-1)


BROKEN_YES = {
    row0_last_token: "row 0's last real token",
    last_column: "you read the last column",
    whole_vocabulary: "softmax over the whole vocabulary",
    returns_p_no: "you returned P(No)",
    returns_logit: "not a probability",
    lengths_minus_one: "only with right padding",
    exp_by_hand: "overflows",
    keeps_both_columns: "both (Yes, No) columns",
}


def test_reference_yes_probability_passes_quickly():
    results = run_checks("yes_probability", reference_yes_probability)
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]
    assert sum(r.seconds for r in results) < 2.0


@pytest.mark.parametrize("broken", list(BROKEN_YES), ids=lambda f: f.__name__)
def test_broken_yes_probability_fails_naming_the_mistake(broken):
    _expect_failure("yes_probability", broken, BROKEN_YES[broken])


def test_yes_probability_hard_coded_answer_cannot_pass():
    _expect_failure("yes_probability", lambda logits, mask, y, n: torch.full((4,), 0.5),
                    "shape")
    _expect_failure("yes_probability",
                    lambda logits, mask, y, n: torch.full((len(logits),), 0.5), "expected")


def test_numpy_results_are_accepted():
    def as_numpy(logits, mask, yes_id, no_id):
        return reference_yes_probability(logits, mask, yes_id, no_id).numpy()

    assert not _failures("yes_probability", as_numpy)


# ----------------------------------------------------------------------------- panels


@pytest.fixture(scope="module")
def rows():
    unseen = load_examples("unseen")
    return [r for r in unseen if r.harm_type is HarmType.HARASSMENT][:12]


def test_threshold_panel_rethresholds_on_every_move(rows):
    scores = np.linspace(0.02, 0.98, len(rows))
    panel = threshold_panel(scores, rows, threshold=0.5)
    slider = panel.controls["threshold"]
    assert (slider.min, slider.max) == (0.0, 1.0)
    labels = [r.label for r in rows]
    seen = set()
    for threshold in (0.0, 0.25, 0.5, 0.75, 1.0):
        before = panel.table.value
        slider.value = threshold
        expected = decide(scores, labels, threshold)
        result = panel.result
        assert result.threshold == pytest.approx(threshold)
        assert np.array_equal(result.blocked, scores >= threshold)
        assert (result.true_positives, result.false_positives, result.false_negatives,
                result.true_negatives) == (expected.true_positives, expected.false_positives,
                                           expected.false_negatives, expected.true_negatives)
        assert result.true_positives + result.false_positives == int((scores >= threshold).sum())
        assert f"threshold {threshold:.2f}" in panel.summary.value
        if threshold != 0.5:
            assert panel.table.value != before
        seen.add(panel.table.value.count(">blocked<"))
    assert seen == {len(rows), 9, 6, 3, 0}


def test_threshold_panel_rejects_mismatched_lengths(rows):
    with pytest.raises(ValueError, match="scores for"):
        threshold_panel([0.5], rows)


class FakeScorer:
    """Scores by keyword, and records what it was asked."""

    def __init__(self):
        self.calls = []

    def score_policies(self, user_content, model_content=None):
        self.calls.append((user_content, model_content))
        text = (model_content or user_content).lower()
        return {harm: (0.9 if harm.value.split("_")[0] in text else 0.1) for harm in HarmType}


def test_live_scores_panel_scores_what_is_typed():
    scorer = FakeScorer()
    panel = live_scores_panel(scorer)
    assert panel.result is None and not scorer.calls and "type a prompt" in panel.output.value
    panel.controls["prompt"].value = "  a harassment example  "
    assert scorer.calls[-1] == ("a harassment example", None)
    assert panel.result[HarmType.HARASSMENT] == 0.9 and panel.result[HarmType.HATE_SPEECH] == 0.1
    assert "harassment" in panel.output.value and "0.900" in panel.output.value
    panel.controls["response"].value = "something about hate"
    assert scorer.calls[-1] == ("a harassment example", "something about hate")
    assert panel.result[HarmType.HATE_SPEECH] == 0.9 and "chatbot response" in panel.output.value
    calls = len(scorer.calls)
    panel.controls["score"].click()
    assert len(scorer.calls) == calls + 1
    panel.controls["prompt"].value = "   "
    assert panel.result is None and len(scorer.calls) == calls + 1


# ----------------------------------------------------------------------------- real logits


@pytest.fixture(scope="module")
def lite_scorer():
    from workbench.safety import load_scorer

    return load_scorer("lite", progress=False)


def test_every_position_logits_read_right_match_the_scorer(lite_scorer):
    unseen = load_examples("unseen")
    prompts = [unseen[i].prompt for i in (13, 0, 69, 100)]  # different lengths
    logits, mask, yes_id, no_id = lite_scorer.logits_at_every_position(prompts)
    lengths = mask.sum(1)
    assert logits.shape[:2] == mask.shape and len(set(lengths.tolist())) == 4
    assert logits.shape[2] == lite_scorer.tokenizer.vocabulary_size()
    expected = lite_scorer.yes_no_logits(prompts)
    at_last = logits[torch.arange(4), lengths - 1][:, [yes_id, no_id]]
    assert np.allclose(at_last.numpy(), expected, atol=1e-4)
    scores = reference_yes_probability(logits, mask, yes_id, no_id).numpy()
    assert np.allclose(scores, lite_scorer.score(prompts), atol=1e-5)
    assert not np.allclose(row0_last_token(logits, mask, yes_id, no_id).numpy(), scores,
                           atol=1e-3), "row 0's last token should give other scores"
