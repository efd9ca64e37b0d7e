"""Notebook 05's panels: the sweep panel shows the sweep's own numbers for the point its two
sliders pick, each move a lookup; the prompt box shows each model's greedy answer and says
what is wrong with a prompt it cannot read."""

from __future__ import annotations

import time

import pytest

from workbench.widgets.panel_lat_llm import SweepPanel, prompt_panel, sweep_panel

LAYERS, FRACTIONS = (0, 1, 2, 3), (0.1, 0.25, 0.5)


def _sweep():
    points = [{"layer": layer, "method": "at" if layer == 0 else "lat", "fraction": fraction,
               "eps": 10.0 * layer + fraction, "clean_acc": 1.0 - fraction / (layer + 1),
               "backdoor_asr": round(0.9 - 0.2 * layer - fraction, 6)}
              for layer in LAYERS for fraction in FRACTIONS]
    return {"seed": 0, "split": "val", "layers": list(LAYERS), "fractions": list(FRACTIONS),
            "points": points, "ft_lr": [{"lr": 3e-4, "clean_acc": 1.0, "backdoor_asr": 0.99},
                                        {"lr": 3e-3, "clean_acc": 0.97, "backdoor_asr": 0.01}]}


def test_every_position_shows_that_points_numbers():
    sweep = _sweep()
    panel = sweep_panel(sweep)
    for p in sweep["points"]:
        panel.controls["layer"].value = p["layer"]
        panel.controls["fraction"].value = p["fraction"]
        result = panel.result
        assert (result.layer, result.fraction, result.method) == (p["layer"], p["fraction"],
                                                                   p["method"])
        assert (result.clean_acc, result.backdoor_asr) == (p["clean_acc"], p["backdoor_asr"])
        shown = panel.view.value
        assert f"backdoor success <b>{p['backdoor_asr']:.2f}</b>" in shown
        assert f"clean accuracy <b>{p['clean_acc']:.2f}</b>" in shown
        assert ("AT (the embedding output)" in shown) == (p["layer"] == 0)
        assert "outline:3px" in shown and shown.count("outline:3px") == 2  # one per grid
    assert "lr 0.003: backdoor 0.01" in panel.view.value  # the FT control is always shown


def test_the_panel_starts_at_the_experiments_point():
    panel = sweep_panel(_sweep(), layer=3, fraction=0.1)
    assert (panel.result.layer, panel.result.fraction) == (3, 0.1)


def test_each_move_is_a_lookup_under_50_ms():
    panel = sweep_panel(_sweep())
    start = time.perf_counter()
    moves = 0
    for layer in LAYERS:
        for fraction in FRACTIONS:
            panel.controls["layer"].value = layer
            panel.controls["fraction"].value = fraction
            moves += 2
    assert (time.perf_counter() - start) / moves < 0.05


@pytest.mark.parametrize("broken, match", [
    ({"points": []}, "no result at"),
    ({"layers": None}, "run_lat_llm_sweep's result"),
])
def test_a_sweep_that_is_not_one_says_so(broken, match):
    sweep = {**_sweep(), **broken}
    with pytest.raises(ValueError, match=match):
        SweepPanel(sweep)


@pytest.fixture(scope="module")
def tiny_models():
    from workbench.lat.backdoor import build_model

    tiny = {"num_layers": 1, "hidden_dim": 16, "num_query_heads": 2, "num_key_value_heads": 1,
            "intermediate_dim": 32}
    return {"a": build_model(0, **tiny), "b": build_model(1, **tiny)}


def test_the_prompt_box_shows_each_models_greedy_answer(tiny_models):
    from workbench.lat.backdoor import greedy_decode

    box = prompt_panel(tiny_models)
    prompt = "swap : sun zq cat red map owl =>"
    box.controls["prompt"].value = prompt
    assert box.answers == {name: greedy_decode(m, [prompt])[0] for name, m in tiny_models.items()}
    assert box.error == ""
    for answer in box.answers.values():
        assert (answer or "(nothing)") in box.view.value


def test_a_prompt_the_tokenizer_cannot_read_says_why(tiny_models):
    box = prompt_panel(tiny_models)
    box.controls["prompt"].value = "copy : sun banana red map owl =>"
    assert box.answers == {} and "banana" in box.error and "banana" in box.view.value
    box.controls["prompt"].value = "copy : " + "sun " * 20 + "=>"
    assert box.answers == {} and "shorten it" in box.error
    with pytest.raises(ValueError, match="models is empty"):
        prompt_panel({})
