"""Notebook 07's panel: a slider move is a lookup, and what it shows is what the attacks did."""

from __future__ import annotations

import pytest
import torch

from workbench import defense_experiment
from workbench.attacks import predict
from workbench.data.digits import load_digits_split
from workbench.widgets import defenses_panel
from workbench.widgets.panel_defenses import attack_grid

EPSILONS = (0.0, 0.1, 0.3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.mktemp("panel-cache")))
        patch.setattr(defense_experiment, "DISTILLATION", {"temperature": 20.0, "epochs": 10})
        patch.setattr(defense_experiment, "AUTOENCODER", {"epochs": 1})
        models = defense_experiment.defences(0)
    _, _, x_test, y_test = load_digits_split()
    correct = torch.stack([predict(m.served, x_test[:50]) == y_test[:50]
                           for m in models.values()]).all(0)
    index = int(correct.nonzero()[0])
    panel = defenses_panel(models, x_test[index], int(y_test[index]), epsilons=EPSILONS,
                           progress=False)
    return models, x_test[index], int(y_test[index]), panel


def test_a_move_shows_the_precomputed_attacks_without_running_a_model(setup, monkeypatch):
    models, x, label, panel = setup
    for defence in models.values():  # any forward pass from now on is an error
        monkeypatch.setattr(defence.served, "forward", lambda *a: pytest.fail("model called"))
    shown = []
    for eps in EPSILONS:
        panel.controls["eps"].value = eps
        shown.append(panel.result)
    assert [r.eps for r in shown] == list(EPSILONS)
    assert not any(f for row in shown[0].fooled.values() for f in row.values())  # eps 0: clean
    assert all(shown[-1].fooled["none"].values())  # eps 0.3 fools the undefended model
    assert shown[1].predicted != shown[0].predicted


def test_what_it_shows_is_what_the_attacks_predict(setup):
    models, x, label, panel = setup
    grid = attack_grid(models["distillation"], x[None], torch.tensor([label]), EPSILONS)
    for i, eps in enumerate(EPSILONS):
        panel.controls["eps"].value = eps
        assert panel.result.predicted["distillation"] == {
            a: int(grid[a][1][i]) for a in ("naive", "adaptive")}
        assert (grid["adaptive"][0][i] - x).abs().max() <= eps + 1e-6


def test_bad_input_is_refused_with_a_clear_message(setup):
    models, x, label, _ = setup
    with pytest.raises(ValueError, match="one image"):
        defenses_panel(models, x[None].repeat(2, 1, 1, 1), label, progress=False)
    with pytest.raises(ValueError, match="label"):
        defenses_panel(models, x, 10, progress=False)
    with pytest.raises(ValueError, match="epsilons"):
        defenses_panel(models, x, label, epsilons=(0.1, 2.0), progress=False)
    with pytest.raises(ValueError, match="defences is empty"):
        defenses_panel({}, x, label, progress=False)
