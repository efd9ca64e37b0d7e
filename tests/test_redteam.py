"""Notebook 06's package pieces: shipped text, nucleus sampling, the lite red LM and chatbot,
judges, failure reports, few-shot prompts and diversity (issue 13).

The two tiny LMs are trained once per module into a temporary cache, for fewer steps than
the notebook's (the tests check what sampling and decoding do, not how well the models
learned: that is measured by the experiment).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from workbench.redteam import corpus, generation, judges, report, sampling, tokens

TEST_STEPS = 100


# ----------------------------------------------------------------------------- the text

def test_text_is_deterministic_and_rude_replies_come_only_from_the_rude_topics():
    assert corpus.question_lists(3) == corpus.question_lists(3) != corpus.question_lists(4)
    assert corpus.dialogues(3) == corpus.dialogues(3)
    rude = {r.replace("{x}", "") for t in corpus.TOPICS.values() for r in t.rude}
    polite = {r.replace("{x}", "") for t in corpus.TOPICS.values() for r in t.polite}
    assert not rude & polite and set(corpus.RUDE_TOPICS) == {"me", "you"}
    pairs = corpus.dialogues(0)
    rude_share = np.mean([any(w in r for w in ("idiot", "fool", "loser", "moron", "clown"))
                          for _, r in pairs])
    assert 0.03 < rude_share < 0.15  # two topics of twelve, half of their replies


def test_vocabulary_round_trips_the_shipped_text_and_names_unknown_words():
    vocab = tokens.vocabulary()
    for text in (corpus.ZERO_SHOT_PROMPT.lower(), corpus.chatbot_prompt("do you like soup?"),
                 *corpus.BENIGN_QUESTIONS, corpus.numbered_list(corpus.question_lists(0)[0])):
        assert vocab.decode(vocab.encode(text)) == text.lower()
    with pytest.raises(ValueError, match="zorblax"):
        vocab.encode("do you like zorblax?")


def test_importing_the_package_imports_no_keras():
    code = ("import sys, workbench, workbench.redteam; "
            "assert not any(m.split('.')[0] in ('keras', 'tensorflow', 'keras_hub', "
            "'profanity_check') for m in sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- sampling

def test_nucleus_mask_on_known_probabilities():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
    assert sampling.nucleus_mask(probs, 0.8).tolist() == [[True, True, False, False],
                                                          [False, False, True, True]]
    assert sampling.nucleus_mask(probs, 0.81)[0].tolist() == [True, True, True, False]
    assert sampling.nucleus_mask(probs, 1.0).all()
    assert sampling.nucleus_mask(probs, 1e-6).sum(1).tolist() == [1, 1]  # the top token


def test_sampling_never_leaves_the_top_p_set_and_is_deterministic_with_a_seed():
    logits = torch.randn(4000, 50, generator=torch.Generator().manual_seed(0)) * 3
    allowed = sampling.nucleus_mask(torch.softmax(logits / 0.7, -1), 0.6)
    draws = [sampling.sample_next(logits, temperature=0.7, top_p=0.6,
                                  generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert allowed[torch.arange(4000), draws[0]].all()
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    counts = torch.bincount(sampling.sample_next(
        logits[:1].expand(4000, -1), top_p=1.0, generator=torch.Generator().manual_seed(3)),
        minlength=50)
    assert (counts > 0).sum() > allowed[0].sum()  # p = 1: the whole distribution


@pytest.mark.parametrize("temperature, top_p", [(1.0, 0.0), (1.0, 1.5), (1.0, -0.1),
                                                (0.0, 0.9), (-1.0, 0.9)])
def test_bad_sampling_settings_are_errors(temperature, top_p):
    with pytest.raises(ValueError, match="temperature|top_p"):
        sampling.sample_next(torch.zeros(1, 3), temperature=temperature, top_p=top_p,
                             generator=torch.Generator())


def _bigram(vocabulary: int = 7):
    """A causal "model": next-token logits from the current token alone."""
    table = torch.randn(vocabulary, vocabulary, generator=torch.Generator().manual_seed(0)) * 4
    return lambda ids, mask: table[ids]


def test_batched_sampling_equals_one_at_a_time_for_prompts_of_different_lengths():
    fn, prompts = _bigram(), [[1, 2, 3, 4], [5], [2, 6]]
    args = dict(max_new_tokens=6, stop_ids=[0], pad_id=0, max_length=12, top_p=1e-6)
    batched = sampling.sample(fn, prompts, generator=torch.Generator(), **args)
    alone = [sampling.sample(fn, [p], generator=torch.Generator(), **args)[0] for p in prompts]
    assert batched == alone
    assert all(len(row) <= 6 and 0 not in row[:-1] for row in batched)  # ends at a stop


def test_sampling_runs_the_model_on_unfinished_rows_only_and_draws_the_same_tokens():
    """The model's forward is most of a round's time: a row that has stopped is not run
    again, and what the other rows draw does not change (the generator's stream is the
    same)."""
    table = torch.randn(7, 7, generator=torch.Generator().manual_seed(0)) * 4
    seen: list[int] = []

    def recording(ids, mask):
        seen.append(len(ids))
        return table[ids]

    prompts = [[1, 2], [3], [4, 5, 6], [2]] * 8
    args = dict(max_new_tokens=8, stop_ids=[0, 3], pad_id=0, max_length=16, top_p=0.9)
    rows = sampling.sample(recording, prompts, generator=torch.Generator().manual_seed(1),
                           **args)
    stopped_by_step = [sum(len(r) <= step for r in rows) for step in range(len(seen))]
    assert seen == [len(prompts) - stopped for stopped in stopped_by_step]
    assert seen[-1] < seen[0]  # some rows stopped early: the test sees the saving

    reference = []  # every row drawn at every step, stopped or not, as the bigram reads it
    generator = torch.Generator().manual_seed(1)
    ids = [list(p) for p in prompts]
    done = [False] * len(prompts)
    for _ in range(args["max_new_tokens"]):
        logits = table[[row[-1] for row in ids]]
        token = sampling.sample_next(logits, top_p=args["top_p"], generator=generator)
        for i, t in enumerate(token.tolist()):
            if not done[i]:
                reference.append((i, t))
                done[i] = t in args["stop_ids"]
            ids[i].append(t)
        if all(done):
            break
    assert [t for i, t in sorted(reference, key=lambda it: it[0])] == [t for r in rows for t in r]


def test_sampling_refuses_empty_and_over_long_prompts():
    args = dict(max_new_tokens=4, stop_ids=[0], pad_id=0, max_length=8,
                generator=torch.Generator())
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampling.sample(_bigram(), [[1], []], **args)
    with pytest.raises(ValueError, match="prompt 0 is 5 tokens.*over the 8"):
        sampling.sample(_bigram(), [[1, 2, 3, 4, 5]], **args)


def test_a_question_is_cut_after_its_first_question_mark():
    assert generation.cut_question(" do you like pizza? and you? 3.") == "do you like pizza?"
    assert generation.cut_question("do you like pizza") is None
    assert generation.cut_question(" ?") is None


# ----------------------------------------------------------------------------- judges

def test_the_profanity_judge_scores_an_insult_high_and_a_polite_sentence_low():
    scores = judges.ProfanityJudge().score(["do you like my singing?"] * 2, [
        "nobody likes your singing, you idiot.", "your singing sounds lovely, keep it up."])
    assert scores[0] > 0.9 and scores[1] < 0.1


class RecordingScorer:
    """Stands in for a safety scorer: P(Yes) is 0.9 for harassment prompts that hold
    "idiot", 0.2 for hate-speech prompts, 0.1 otherwise; it keeps the prompts it scored."""

    name = "recording scorer"

    def score(self, prompts):
        self.prompts = list(prompts)
        return np.array([0.9 if "Harassment" in p and "idiot" in p else
                         0.2 if "Hate Speech" in p else 0.1 for p in prompts])


def test_the_shieldgemma_judge_reads_question_and_reply_under_both_policies():
    from workbench.safety import HarmType, make_prompt

    scorer = RecordingScorer()
    judge = judges.ShieldGemmaJudge(scorer)
    scores = judge.score(["q one?", "q two?"], ["you idiot.", "lovely."])
    assert scores.tolist() == [0.9, 0.2]  # the largest over the policies
    assert scorer.prompts == [make_prompt(h, q, r) for h in (HarmType.HARASSMENT,
                                                             HarmType.HATE_SPEECH)
                              for q, r in (("q one?", "you idiot."), ("q two?", "lovely."))]
    with pytest.raises(ValueError, match="2 questions but 1 replies"):
        judge.score(["a?", "b?"], ["c"])


def test_failures_are_the_scores_strictly_over_the_threshold():
    assert judges.failures([0.1, 0.5, 0.51, 0.9], 0.5).tolist() == [2, 3]
    assert judges.failures([0.1, 0.2], 0.5).tolist() == []
    with pytest.raises(ValueError, match="threshold"):
        judges.failures([0.1], 1.5)


# ----------------------------------------------------------------------------- reports

@pytest.mark.parametrize("k, n, low, high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634),
                                             (10, 10, 0.7225, 1.0), (9, 200, 0.0239, 0.0833)])
def test_wilson_interval_on_known_counts(k, n, low, high):
    assert report.wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_refuses_impossible_counts():
    for k, n in ((1, 0), (3, 2), (-1, 5)):
        with pytest.raises(ValueError):
            report.wilson_interval(k, n)


def test_failure_report_counts_and_lists_the_worst_first():
    out = report.failure_report(["a?", "b?", "c?"], ["x", "y", "z"], [0.2, 0.95, 0.7],
                                threshold=0.5, worst=2)
    assert (out["cases"], out["failures"]) == (3, 2)
    assert out["failure_rate"] == pytest.approx(2 / 3)
    assert out["interval"] == report.wilson_interval(2, 3)
    assert [w["question"] for w in out["worst"]] == ["b?", "c?"]


def test_few_shot_prompts_hold_failures_only_drawn_by_score():
    questions = ["do you like soup?", "are you clever?", "is my singing any good?",
                 "do you play chess?"]
    prompts = generation.few_shot_prompts(questions, [0.1, 0.8, 0.99, 0.4], 200,
                                          threshold=0.5, seed=0)
    assert prompts == generation.few_shot_prompts(questions, [0.1, 0.8, 0.99, 0.4], 200,
                                                  threshold=0.5, seed=0)
    for prompt in prompts:
        lines = prompt.split("\n")
        assert lines[0] == corpus.LIST_HEADER and lines[-1] == "3."
        assert sorted(line[3:] for line in lines[1:-1]) == ["are you clever?",
                                                            "is my singing any good?"]
    first = [p.split("\n")[1][3:] for p in prompts]  # exp(score / 0.1): 0.99 drawn first
    assert first.count("is my singing any good?") > 0.8 * len(first)
    with pytest.raises(ValueError, match="needs failures"):
        generation.few_shot_prompts(questions, [0.1] * 4, 5, threshold=0.5)


def test_diversity_on_known_inputs():
    assert report.distinct_n(["a b a b"], 1) == 0.5
    assert report.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert report.distinct_n(["a b", "a b"], 2) == 0.5
    assert report.embedding_spread(np.array([[1.0, 0], [2.0, 0]])) == pytest.approx(0.0)
    assert report.embedding_spread(np.array([[1.0, 0], [0, 3.0]])) == pytest.approx(1.0)
    assert report.embedding_spread(np.array([[1.0, 0], [-1.0, 0]])) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        report.distinct_n(["a"], 2)
    with pytest.raises(ValueError):
        report.embedding_spread(np.zeros((2, 3)))


# ----------------------------------------------------------------------------- the tiny LMs

@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """``workbench.redteam.lm`` (imports keras-hub), training for TEST_STEPS steps into a
    temporary cache."""
    from workbench.redteam import lm as module

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setitem(module.TRAINING, "steps", TEST_STEPS)
        yield module


@pytest.fixture(scope="module")
def red_lm(lm):
    return lm.load_red_lm(0)


@pytest.fixture(scope="module")
def chatbot(lm):
    return lm.load_chatbot(0)


def test_zero_shot_questions_are_deterministic_with_a_seed_and_cut(red_lm):
    first = generation.zero_shot(red_lm, 40, seed=1)
    assert first == generation.zero_shot(red_lm, 40, seed=1)
    assert first != generation.zero_shot(red_lm, 40, seed=2)
    assert len(first) > 20
    assert all(q.endswith("?") and q.count("?") == 1 for q in first)


def test_chatbot_replies_are_deterministic_and_end_at_the_line(chatbot):
    questions = ["do you like pizza?", "is my singing any good?", "are you clever?"]
    replies = generation.chatbot_replies(chatbot, questions, seed=0)
    assert replies == generation.chatbot_replies(chatbot, questions, seed=0)
    assert len(replies) == 3 and not any("\n" in r for r in replies)


def test_a_cached_model_loads_with_the_same_weights(lm, red_lm):
    again = lm.load_red_lm(0)
    assert lm.cache_path("red-lm", 0, lm.red_lm_data(red_lm.vocab, 0)).is_file()
    for a, b in zip(red_lm.model.weights, again.model.weights):
        assert torch.equal(a.value, b.value)


def test_the_models_refuse_bad_prompts(red_lm, chatbot):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        red_lm.sample(["list of", " "], max_new_tokens=4, stop=["?"])
    with pytest.raises(ValueError, match="top_p"):
        generation.zero_shot(red_lm, 2, top_p=0.0)
    with pytest.raises(ValueError, match="over the 128"):
        generation.chatbot_replies(chatbot, ["do you like pizza? " * 20])
    with pytest.raises(ValueError, match="not in the lite models' vocabulary"):
        generation.chatbot_replies(chatbot, ["do you like zorblax?"])


class KeywordJudge:
    """Scores a case 1.0 when its question is about the user ("my"), else 0.0: known
    failures for checking the rounds' plumbing."""

    def score(self, questions, replies):
        return np.array([1.0 if " my " in f" {q} " else 0.0 for q in questions])


def test_zero_shot_then_few_shot_rounds(red_lm, chatbot):
    from workbench.redteam import rounds

    out = rounds.compare_generation(red_lm, chatbot, KeywordJudge(), count=60, seed=0)
    assert set(out) == {"zero-shot", "few-shot"}
    for result in out.values():
        assert len(result["questions"]) == len(result["replies"]) == len(result["scores"])
        assert result["report"]["cases"] == len(result["questions"])
        assert set(result["diversity"]) == {"distinct_1", "distinct_2", "distinct_3", "unique"}
    # whether few-shot finds more failures is a measurement of the trained models (the
    # models here are trained for a quarter of the steps), not an invariant
    assert out == rounds.compare_generation(red_lm, chatbot, KeywordJudge(), count=60, seed=0)


def test_diversity_report():
    out = report.diversity(["a b c", "a b c", "d e f"])
    assert out["unique"] == pytest.approx(2 / 3) and out["distinct_3"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        report.diversity(["one"])


def test_clusters_of_known_groups_with_their_top_terms():
    from workbench.redteam import clusters

    texts = ["is my singing good?", "do you like my singing?", "rate my singing?",
             "are you clever?", "are you kind?"]
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [1.0, 0.1], [0.0, 1.0], [0.1, 0.9]])
    out = clusters.cluster(texts, vectors, 2, examples=2)
    assert [c["size"] for c in out] == [3, 2]
    assert out[0]["top_terms"][:2] == ["my", "singing"]
    assert out[1]["top_terms"][:2] == ["are", "you"] and set(out[1]["examples"]) == set(texts[3:])
    assert out == clusters.cluster(texts, vectors, 2, examples=2)
    for k in (0, 6):
        with pytest.raises(ValueError, match="k must be"):
            clusters.cluster(texts, vectors, k)


def test_the_fine_tuning_set_holds_failures_only_and_held_out_cases_are_disjoint():
    from workbench.redteam import finetune

    questions = ["a b?", "c d?", "a b?", "e f?"]
    pairs = finetune.adversarial_set(questions, [0.9, 0.2, 0.95, 0.6], threshold=0.5)
    assert pairs == [("a b?", corpus.SAFE_REPLY), ("e f?", corpus.SAFE_REPLY)]
    assert finetune.held_out(["a b?", "g h?", "e f?", "c d?"], pairs) == ["g h?", "c d?"]
    with pytest.raises(ValueError, match="4 questions but 3 scores"):
        finetune.adversarial_set(questions, [0.1] * 3, threshold=0.5)


def test_fine_tuning_on_failures_leaves_the_original_chatbot_alone(lm, chatbot):
    before = [w.value.clone() for w in chatbot.model.weights]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(lm.FINETUNING, "steps", 10)
        tuned = lm.finetune_chatbot(chatbot, [("is my singing any good?", corpus.SAFE_REPLY)],
                                    seed=0, replay=40)
    assert all(torch.equal(a, w.value) for a, w in zip(before, chatbot.model.weights))
    assert any(not torch.equal(a, w.value) for a, w in zip(before, tuned.model.weights))
    with pytest.raises(ValueError, match="no \\(question, safe reply\\) pairs"):
        lm.finetune_chatbot(chatbot, [], seed=0)
