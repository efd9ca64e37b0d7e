"""Lite ShieldGemma: how well it separates Yes from No, its cache and its training loop.

The AUROC test uses the real lite models (seeds 0, 1, 2), trained once and cached in
``~/.cache/workbench`` (trained the first time, then loaded). The cache and training
tests below use a temporary cache, a no-op in place of training, or a one-epoch run on 16
rows: they check the plumbing, and their models are never used for a result.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from workbench.safety import HarmType
from workbench.safety.evaluation import format_experiment
from workbench.safety.examples import template_split

AUROC_GOAL = 0.8  # the goal, per harm type, averaged over the three seeds
AUROC_FLOOR = 0.65  # no single seed may collapse below this
SEEDS = [0, 1, 2]


def test_lite_auroc_per_harm_type_on_both_held_out_sets(shieldgemma_experiment):
    result = shieldgemma_experiment
    print("\n" + format_experiment(result))
    for row in result["rows"]:
        print(f"{row['harm_type']:<20} template held-out by seed {row['auroc_by_seed']}, "
              f"independently written by seed {row['auroc_unseen_by_seed']}")
    sets = ("auroc", "auroc_unseen")
    short = [(row["harm_type"], key, round(row[key], 3))
             for row in result["rows"] for key in sets if row[key] < AUROC_GOAL]
    assert not short, f"mean AUROC over seeds below {AUROC_GOAL} (harm type, set, mean): {short}"
    low = [(row["harm_type"], key, seed, value)
           for row in result["rows"] for key in sets
           for seed, value in zip(result["seeds"], row[f"{key}_by_seed"])
           if value < AUROC_FLOOR]
    assert not low, f"AUROC below {AUROC_FLOOR} (harm type, set, seed, AUROC): {low}"


def test_experiment_result_shape(shieldgemma_experiment):
    result = shieldgemma_experiment
    assert result["seeds"] == SEEDS
    assert [row["harm_type"] for row in result["rows"]] == [h.value for h in HarmType]
    for row in result["rows"]:
        for key in ("auroc", "auroc_unseen"):
            values = np.array(row[f"{key}_by_seed"])
            assert len(values) == len(SEEDS) and np.all((values >= 0) & (values <= 1))
            assert row[key] == pytest.approx(values.mean(), abs=1e-4)
            assert row[f"{key}_min"] == pytest.approx(values.min(), abs=1e-4)
            assert row[f"{key}_std"] == pytest.approx(values.std(ddof=1), abs=1e-4)


# ------------------------------------------------------------------------------- AUROC


def test_auroc_closed_form_cases():
    from workbench.safety import auroc

    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half
    assert auroc([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1]) == 0.75
    with pytest.raises(ValueError, match="one Yes and one No"):
        auroc([1, 1], [0.2, 0.3])


class FixedScores:
    """Stands in for a scorer in the AUROC bookkeeping test: each prompt's score is looked up."""

    def __init__(self, by_prompt):
        self.by_prompt = by_prompt

    def score(self, prompts, batch_size=8):
        return np.array([self.by_prompt[p] for p in prompts], dtype="float32")


def test_auroc_by_harm_type_covers_the_harm_types_present():
    from workbench.safety import SafetyExample, auroc_by_harm_type

    def row(i, harm, label):
        return SafetyExample(str(i), harm, f"content {i}", None, label)

    rows = [row(0, HarmType.HARASSMENT, 1), row(1, HarmType.HARASSMENT, 0),
            row(2, HarmType.HATE_SPEECH, 0), row(3, HarmType.HATE_SPEECH, 1),
            row(4, HarmType.HATE_SPEECH, 0)]
    scorer = FixedScores({r.prompt: s for r, s in zip(rows, [0.9, 0.1, 0.7, 0.6, 0.2])})
    result = auroc_by_harm_type(scorer, rows)
    assert result == {HarmType.HATE_SPEECH: 0.5, HarmType.HARASSMENT: 1.0}
    assert list(result) == [HarmType.HATE_SPEECH, HarmType.HARASSMENT]  # HarmType order
    with pytest.raises(ValueError, match="harassment: .*one Yes and one No"):
        auroc_by_harm_type(scorer, rows[:1] + rows[2:])
    with pytest.raises(ValueError, match="no rows"):
        auroc_by_harm_type(scorer, [])


# ----------------------------------------------------------------- cache and training loop


@pytest.fixture(scope="module")
def lite():
    """``workbench.safety.lite`` (imports keras-hub)."""
    from workbench.safety import lite as module

    return module


@pytest.fixture(scope="module")
def encoder(lite):
    """One MiniLM encoder for the scorers built in this module (loading it takes seconds)."""
    return lite.MiniLMEncoder()


@pytest.fixture
def fast_build(lite, encoder, monkeypatch):
    """``build_lite_scorer`` reuses the module's encoder and computes the PCA of MiniLM's word
    embeddings once (an SVD of a 30522 x 384 matrix, seconds per build)."""
    real_pca = lite.pca_embeddings

    def pca_once(word_embeddings, dim):
        key = (word_embeddings.shape, dim, hashlib.sha256(word_embeddings.tobytes()).digest())
        if key not in PCA_MEMO:
            PCA_MEMO[key] = real_pca(word_embeddings, dim)
        return PCA_MEMO[key].copy()

    monkeypatch.setattr(lite, "pca_embeddings", pca_once)
    monkeypatch.setattr(lite, "MiniLMEncoder", lambda: encoder)


PCA_MEMO: dict = {}


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch, fast_build):
    """An empty WORKBENCH_CACHE."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    return tmp_path


def test_unreadable_cache_file_is_trained_again_and_replaced(lite, tmp_cache, monkeypatch):
    calls = []

    def no_training(scorer, examples, *, seed, progress=True):
        """Stands in for train_lite: records the call, leaves the untrained weights."""
        calls.append((len(examples), seed))
        return []

    monkeypatch.setattr(lite, "train_lite", no_training)
    path = lite.cache_path(0)
    assert str(path).startswith(str(tmp_cache))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an HDF5 file")
    with pytest.warns(UserWarning, match=r"(?s)unreadable.*training again"):
        lite.load_lite_scorer(0, progress=False)
    assert calls == [(len(template_split(0)[0]), 0)]
    assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"  # replaced by real weights
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    lite.load_lite_scorer(0, progress=False)  # now read from the cache: no training
    assert len(calls) == 1
    lite.load_lite_scorer(1, cache=False, progress=False)  # trains, writes nothing
    assert calls[-1] == (len(template_split(1)[0]), 1)
    assert not lite.cache_path(1).exists()


def test_training_is_deterministic_and_shows_a_progress_bar(lite, encoder, fast_build,
                                                            monkeypatch, capsys):
    """One epoch over 16 rows, in batches of 8, twice from seed 0 and once from seed 1."""
    monkeypatch.setitem(lite.LITE_CONFIG, "epochs", 1)
    monkeypatch.setitem(lite.LITE_CONFIG, "batch_size", 8)
    rows = template_split(0)[0][:16]

    def train(seed, progress):
        scorer = lite.build_lite_scorer(seed, encoder)
        before = [np.array(v.numpy()) for v in scorer.model.trainable_variables]
        losses = lite.train_lite(scorer, rows, seed=seed, progress=progress)
        after = [np.array(v.numpy()) for v in scorer.model.trainable_variables]
        return losses, before, after

    capsys.readouterr()
    losses, before, after = train(0, progress=True)
    bar = capsys.readouterr().err
    assert "training lite ShieldGemma" in bar and "2/2" in bar, bar
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))  # it trained
    again, before_again, after_again = train(0, progress=False)
    assert capsys.readouterr().err == ""
    assert again == losses
    for a, b in zip(before + after, before_again + after_again):
        np.testing.assert_array_equal(a, b)
    other, _, _ = train(1, progress=False)
    assert other != losses
