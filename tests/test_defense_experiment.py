"""Notebook 07's experiment: the shape of its result, its cache, its worker processes and the
command that prints it. Run with training and attacks cut short: the numbers are not the
point here (the notebook test runs the real thing)."""

from __future__ import annotations

import json

import pytest

from workbench import defense_experiment as experiment

KEYS = ("clean_acc", "naive_acc", "autograd_acc", "adaptive_acc", "worst_acc")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("defenses-cache")  # shared: later tests reuse trained models


@pytest.fixture
def quick(monkeypatch, cache):
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    monkeypatch.setattr(experiment, "DISTILLATION", {"temperature": 20.0, "epochs": 2})
    monkeypatch.setattr(experiment, "AUTOENCODER", {"epochs": 1})
    monkeypatch.setattr(experiment, "NAIVE_STEPS", 2)
    monkeypatch.setattr(experiment, "ADAPTIVE_STEPS", 2)
    monkeypatch.setattr(experiment, "CURVE_EPS", (0.0, 0.15))
    monkeypatch.setattr(experiment, "CURVE_IMAGES", 32)
    monkeypatch.setattr(experiment, "SANITY_EFFORT", {"more_steps": 3, "restarts": 1})
    return cache


def test_the_result_has_a_row_per_defence_with_spread_and_seeds(quick):
    result = experiment.run_defenses_experiment(seeds=(0, 1), workers=1)
    assert [row["defense"] for row in result["rows"]] == list(experiment.DEFENSES)
    for row in result["rows"]:
        for key in KEYS:
            values = [s[key] for s in row["per_seed"]]
            assert 0 <= row[key] <= 1 and row[f"{key}_std"] >= 0
            assert row[key] == pytest.approx(sum(values) / len(values))
        assert row["worst_acc"] <= min(row["naive_acc"], row["autograd_acc"],
                                       row["adaptive_acc"]) + 1e-9
        assert len(row["naive_curve"]) == len(row["curve_eps"]) == 2
        assert row["naive_curve"][0] == row["adaptive_curve"][0]  # eps 0: clean accuracy
        assert row["naive_attack"] and row["adaptive_attack"]
    detector = result["detector"]
    assert detector["target_false_positive_rate"] == 0.05
    assert 0 <= detector["naive_fooled_undetected"] <= 1
    assert [s["seed"] for s in detector["per_seed"]] == [0, 1]
    assert {(s["defense"], s["attack"]) for s in result["sanity"]} == {
        (d, a) for d in experiment.DEFENSES for a in ("autograd", "adaptive")}
    for entry in result["sanity"]:
        assert [c["name"] for c in entry["checks"]] == [
            "unbounded", "more effort", "white box beats black box"]
        for check in entry["checks"]:
            assert check["passed"] == all(s["passed"] for s in check["per_seed"])
    assert result["seeds"] == [0, 1] and result["eps"] == 0.15
    json.dumps(result)  # what `workbench experiment defenses --json` prints


def test_a_second_run_trains_nothing_and_gives_the_same_numbers(quick, monkeypatch):
    first = experiment.run_defenses_experiment(seeds=(0,), workers=1)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although everything is cached")

    monkeypatch.setattr(experiment, "train_student", no_training)
    monkeypatch.setattr(experiment, "train_autoencoder", no_training)
    assert experiment.run_defenses_experiment(seeds=(0,), workers=1) == first
    for result_file in quick.glob("defenses/results-*.json"):
        result_file.unlink()  # results gone, models kept: evaluated again, not trained
    assert experiment.run_defenses_experiment(seeds=(0,), workers=1) == first


def test_two_worker_processes_give_the_numbers_of_one(quick, tmp_path, monkeypatch):
    one = experiment.run_defenses_experiment(seeds=(0, 1), workers=1, cache=False)
    two = experiment.run_defenses_experiment(seeds=(0, 1), workers=2, cache=False)
    assert two == one


def test_the_command_prints_the_table_and_the_json(quick, capsys):
    from workbench.cli import main

    assert main(["experiment", "defenses", "--seeds", "0", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["defense"] for row in printed["rows"]] == list(experiment.DEFENSES)
    text = experiment.format_defenses_table(printed)
    assert "feature_squeezing" in text and "sanity checks" in text and "detector" in text


def test_squeezing_defends_any_classifier_and_bpda_attacks_it():
    """Section 8's path: feature squeezing in front of a 3-channel classifier (an ImageNet
    one in the notebook), its four accuracies."""
    import torch
    from torch import nn

    from workbench.defenses.squeezing import Squeezer

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.rand((8, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # every image right when clean
    defence = experiment.squeezing_defence(model, Squeezer(bits=5, median=2))
    assert defence.served.preprocess.bits == 5
    result = experiment.accuracies(defence, x, y, eps=0.1,
                                   generator=torch.Generator().manual_seed(0))
    assert set(result) == set(KEYS)
    assert result["worst_acc"] <= min(result[k] for k in KEYS[1:4])
    assert result["adaptive_acc"] < result["autograd_acc"]  # BPDA moves, autograd cannot
