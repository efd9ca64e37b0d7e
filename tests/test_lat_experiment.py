"""The LAT experiment's result: its shape, its cache, and the command that prints it. Run with
training shortened (one epoch, few images): the numbers are not the point here."""

from __future__ import annotations

import json

import pytest

from workbench.lat import experiment

AT_LAYER2 = {"layer": "layer2", "fraction": 0.3}  # a fixed latent ball: no sweep first


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lat-cache")  # shared: later tests reuse trained models


@pytest.fixture
def quick(monkeypatch, cache):
    """The experiment on a few hundred digits, training and attacks cut short, caching under
    a folder of its own."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    monkeypatch.setattr(experiment, "TRAIN_IMAGES", 256)
    monkeypatch.setattr(experiment, "VALIDATION", 64)
    monkeypatch.setattr(experiment, "TEST_IMAGES", 96)
    monkeypatch.setattr(experiment, "BASE", {**experiment.BASE, "epochs": 1})
    monkeypatch.setattr(experiment, "FINETUNE", {**experiment.FINETUNE, "epochs": 1})
    monkeypatch.setattr(experiment, "EVAL_IMAGES", 32)
    monkeypatch.setattr(experiment, "HELDOUT", {"pgd_linf": {"eps": 0.2, "steps": 2},
                                                "pgd_l2": {"eps": 1.5, "steps": 2},
                                                "noise_std": 0.3})
    return cache


def test_the_result_has_a_row_per_method_with_spread_and_seeds(quick):
    result = experiment.run_lat_experiment(seeds=(0, 1), **AT_LAYER2, workers=1)
    assert [row["method"] for row in result["rows"]] == ["base", "ft", "rlp", "at", "lat"]
    for row in result["rows"]:
        for metric in ("clean_acc", "trojan_asr", "heldout_acc"):
            assert 0.0 <= row[metric] <= 1.0 and row[f"{metric}_std"] >= 0.0
            values = [s[metric] for s in row["per_seed"]]
            assert row[metric] == pytest.approx(sum(values) / len(values))
        assert [s["seed"] for s in row["per_seed"]] == [0, 1]
        assert set(row["heldout"]) == {"pgd_linf", "pgd_l2", "noise", "patch"}
    assert result["seeds"] == [0, 1] and result["sweep"] is None
    assert result["chosen_by"] == "caller"
    json.dumps(result)  # what `workbench experiment lat-vision --json` prints


def test_a_second_run_trains_nothing_and_gives_the_same_numbers(quick, monkeypatch):
    first = experiment.run_lat_experiment(seeds=(0,), **AT_LAYER2, workers=1)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although everything is cached")

    monkeypatch.setattr(experiment, "finetune", no_training)
    monkeypatch.setattr(experiment, "train_trojaned", no_training)
    assert experiment.run_lat_experiment(seeds=(0,), **AT_LAYER2, workers=1) == first
    for result_file in quick.glob("lat/experiment-*.json"):
        result_file.unlink()  # results gone, models kept: evaluated again, not trained
    again = experiment.run_lat_experiment(seeds=(0,), **AT_LAYER2, workers=1)
    assert again["rows"] == first["rows"]


def test_the_sweep_covers_its_grid_on_the_validation_split(quick):
    sweep = experiment.run_lat_sweep(layers=("layer1", "layer3"), fractions=(0.1, 0.5),
                                     workers=1)
    assert [(p["layer"], p["fraction"]) for p in sweep["points"]] == [
        ("layer1", 0.1), ("layer1", 0.5), ("layer3", 0.1), ("layer3", 0.5)]
    assert all(p["eps"] > 0 for p in sweep["points"])
    larger = {p["layer"]: p["eps"] for p in sweep["points"] if p["fraction"] == 0.5}
    smaller = {p["layer"]: p["eps"] for p in sweep["points"] if p["fraction"] == 0.1}
    assert all(larger[k] == pytest.approx(5 * smaller[k], rel=1e-3) for k in larger)


def test_the_command_prints_the_table_and_the_json(quick, capsys):
    from workbench.cli import main

    assert main(["experiment", "lat-vision", "--seeds", "0", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in printed["rows"]][1:] == ["ft", "rlp", "at", "lat"]
    assert printed["chosen_by"] == "sweep"
    assert (printed["layer"], printed["fraction"]) == experiment.choose_defaults(
        printed["sweep"]["points"])
    text = experiment.format_lat_table(printed)
    assert "trojan ASR" in text and "sweep of LAT" in text


def test_two_worker_processes_give_the_numbers_of_one(quick, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where --no-cache trains
    cached = sorted(quick.rglob("*"))
    one = experiment.run_lat_experiment(seeds=(0, 1), **AT_LAYER2, workers=1, cache=False)
    two = experiment.run_lat_experiment(seeds=(0, 1), **AT_LAYER2, workers=2, cache=False)
    assert two == one
    assert sorted(quick.rglob("*")) == cached  # nothing written to the cache
    assert list(tmp_path.glob("workbench-lat-*")) == []  # and the run's scratch folder is gone


def test_the_trojaned_model_does_not_depend_on_the_callers_thread_count(quick):
    import torch

    weights = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            weights.append(experiment.trojaned_model(3, cache=False).state_dict())
        finally:
            torch.set_num_threads(previous)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
