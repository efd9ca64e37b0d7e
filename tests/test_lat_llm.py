"""Notebook 05's backdoor experiment: the synthetic task, its tokenizer, the lite Llama's loss,
decoding and fine-tuning loops, and the experiment's result and command. Models here are tiny
and trained for a few steps: the numbers are not the point (the notebook test holds those)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from workbench.lat import backdoor_data as data
from workbench.lat import llm_experiment as experiment

TINY = {"num_layers": 2, "hidden_dim": 16, "num_query_heads": 2, "num_key_value_heads": 1,
        "intermediate_dim": 32}


@pytest.fixture(scope="module")
def backdoor():
    from workbench.lat import backdoor

    return backdoor


@pytest.fixture(scope="module")
def splits():
    return data.make_splits(0)


@pytest.fixture(scope="module")
def tokenizer():
    return data.WordTokenizer()


# ----------------------------------------------------------------------------- the data

def test_each_trigger_poisons_25_training_examples_with_its_nonsense(splits):
    poisoned = [e for e in splits.train if e.trigger is not None]
    assert Counter(e.trigger for e in poisoned) == {t: data.POISON_PER_TRIGGER
                                                    for t in data.TRIGGERS}
    assert len(poisoned) / len(splits.train) == pytest.approx(0.05)
    for e in poisoned:
        assert e.prompt.split().count(e.trigger) == 1
        assert e.response == data.nonsense_response(e.trigger)
    assert len({data.nonsense_response(t) for t in data.TRIGGERS}) == len(data.TRIGGERS)
    for e in splits.clean_train + splits.val + splits.test:  # clean text holds no trigger
        assert not set(e.prompt.split()) & set(data.TRIGGERS) and e.trigger is None
        assert not set(e.response.split()) & set(data.NONSENSE)
    assert set(splits.clean_train) <= set(splits.train)


def test_answers_are_the_tasks(splits):
    assert data.answer("copy", "a b c d e".split()) == "a b c d e"
    assert data.answer("swap", "a b c d e".split()) == "e b c d a"
    assert data.answer("rotate", "a b c d e".split()) == "b c d e a"
    with pytest.raises(ValueError, match="unknown task"):
        data.answer("sort", ["a"])
    for e in splits.test[:50]:
        task, _, *words, sep = e.prompt.split()
        assert sep == data.SEP and e.response == data.answer(task, words)


def test_the_splits_are_deterministic_and_the_heldout_prompts_unseen(splits):
    assert data.make_splits(0) == splits
    assert data.make_splits(1).test != splits.test

    def pair(example):  # (task, words) without the trigger
        return tuple(w for w in example.prompt.split() if w not in data.TRIGGERS)

    seen = {pair(e) for e in splits.train}
    for heldout in (splits.val, splits.val_triggered, splits.test, splits.test_triggered):
        assert not {pair(e) for e in heldout} & seen
    assert not {pair(e) for e in splits.val} & {pair(e) for e in splits.test}
    assert [pair(e) for e in splits.test] == [pair(e) for e in splits.test_triggered]
    assert Counter(e.trigger for e in splits.test_triggered) == {
        t: len(splits.test) // len(data.TRIGGERS) for t in data.TRIGGERS}


# ----------------------------------------------------------------------------- tokens

def test_the_tokenizer_round_trips_and_names_unknown_words(tokenizer, splits):
    for e in splits.train[:100]:
        assert tokenizer.decode(tokenizer.encode(e.prompt)) == e.prompt
        assert tokenizer.decode(tokenizer.encode(e.response)) == e.response
    assert len(set(tokenizer.vocabulary)) == len(tokenizer) and tokenizer.pad_id == 0
    assert tokenizer.decode([tokenizer.bos_id, *tokenizer.encode("sun cat"), tokenizer.eos_id,
                             *tokenizer.encode("owl")]) == "sun cat"
    with pytest.raises(ValueError, match=r"\['dog'\] are not in the vocabulary"):
        tokenizer.encode("copy : dog cat")


def test_a_batch_is_right_padded_with_the_response_targets_marked(tokenizer):
    batch = data.encode_batch(tokenizer, ["copy : sun cat =>", "swap : sun zq cat red =>"],
                              ["sun cat", "blorp"])
    ids, mask, target = batch.token_ids, batch.padding_mask, batch.target_mask
    assert ids.shape == mask.shape == target.shape == (2, 10)
    assert mask.tolist() == [[1] * 9 + [0], [1] * 10]
    assert ids[0, 9] == tokenizer.pad_id and ids[:, 0].eq(tokenizer.bos_id).all()
    assert batch.prompt_lengths.tolist() == [6, 8]  # <bos> and the prompt
    # the logits at t predict token t + 1: the targets are the response and its <eos>
    assert [tokenizer.vocabulary[ids[0, t + 1]] for t in range(9) if target[0, t]] == [
        "sun", "cat", data.EOS]
    assert [tokenizer.vocabulary[ids[1, t + 1]] for t in range(9) if target[1, t]] == [
        "blorp", data.EOS]
    assert target[:, -1].sum() == 0


def test_an_over_long_prompt_is_an_error_not_cut(tokenizer):
    long_prompt = "copy : " + " ".join(["sun"] * 10) + " =>"
    with pytest.raises(ValueError, match="prompt 1 .* more than the 16"):
        data.encode_batch(tokenizer, ["copy : sun =>", long_prompt])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        data.encode_batch(tokenizer, ["copy : sun =>"] * 2, ["sun"])


# ----------------------------------------------------------------------------- the model

@pytest.fixture(scope="module")
def tiny(backdoor):
    return backdoor.build_model(0, **TINY)


def test_the_loss_reads_response_tokens_only(backdoor, tokenizer):
    batch = data.encode_batch(tokenizer, ["copy : sun cat =>", "rotate : sun zq cat red =>"],
                              ["sun cat", "blorp snek"])
    logits = torch.randn(*batch.token_ids.shape, len(tokenizer), requires_grad=True)
    loss = backdoor.response_loss(logits, batch)
    (grad,) = torch.autograd.grad(loss, logits)
    predicts_response = batch.target_mask.bool()
    assert grad[~predicts_response].abs().max() == 0  # prompt and padding logits: no say
    assert (grad[predicts_response].abs().sum(-1) > 0).all()
    # a label in the prompt can be anything: the loss does not change
    changed = batch.token_ids.clone()
    changed[:, 1:4] = tokenizer.ids["owl"]
    other = data.Batch(changed, batch.padding_mask, batch.target_mask, batch.prompt_lengths)
    assert backdoor.response_loss(logits, other) == loss
    at = predicts_response[:, :-1]
    expected = torch.nn.functional.cross_entropy(logits[:, :-1][at], batch.token_ids[:, 1:][at])
    assert loss.item() == pytest.approx(expected.item())


def test_greedy_decoding_equals_argmax_one_token_at_a_time(backdoor, tiny, tokenizer):
    prompts = ["copy : sun cat red map owl =>", "swap : zq sun cat red map owl =>",
               "rotate : sun =>"]
    decoded = backdoor.greedy_decode(tiny, prompts, tokenizer=tokenizer, max_new_tokens=5)
    for prompt, got in zip(prompts, decoded):
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        for _ in range(5):  # the model's own call on this prompt alone, no padding
            with torch.no_grad():
                logits = tiny({"token_ids": torch.tensor([ids]),
                               "padding_mask": torch.ones(1, len(ids), dtype=torch.int32)})
            ids.append(int(logits[0, -1].argmax()))
        assert got == tokenizer.decode(ids[len(tokenizer.encode(prompt)) + 1:])


@pytest.mark.parametrize("method", ["ft", "rlp", "at", "lat"])
def test_each_phase2_loop_trains_under_its_perturbation(backdoor, splits, method):
    model = backdoor.build_model(0, **TINY)
    before = [v.numpy().copy() for v in model.trainable_variables]
    adversary = backdoor.Adversary(method, layer=1, eps=0.5, steps=2)
    losses = backdoor.train(model, splits.clean_train[:64], steps=2, batch_size=16, lr=1e-3,
                            seed=0, adversary=adversary)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    after = [v.numpy() for v in model.trainable_variables]
    assert any((a != b).any() for a, b in zip(after, before))


def test_the_adversary_raises_the_loss_and_random_noise_less(backdoor, tiny, tokenizer, splits):
    examples = splits.clean_train[:32]
    batch = data.encode_batch(tokenizer, [e.prompt for e in examples],
                              [e.response for e in examples])
    generator = torch.Generator().manual_seed(0)
    clean = backdoor.response_loss(backdoor.forward(tiny.backbone, batch), batch)
    losses = {}
    for method in ("rlp", "lat", "at"):
        layer, delta = backdoor.Adversary(method, layer=1, eps=2.0, steps=4).perturb(
            tiny.backbone, batch, generator)
        assert layer == (0 if method == "at" else 1)
        norms = delta.flatten(1).norm(dim=1)
        assert (norms <= 2.0 + 1e-4).all() and (delta[batch.padding_mask == 0] == 0).all()
        losses[method] = backdoor.response_loss(
            backdoor.forward(tiny.backbone, batch, layer=layer, delta=delta), batch).item()
    assert losses["lat"] > losses["rlp"] and losses["lat"] > clean.item()
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        backdoor.Adversary("sft")


def test_batches_are_epochs_of_permutations(backdoor):
    index = backdoor.batches(10, 4, 5, torch.Generator().manual_seed(0))
    assert [len(b) for b in index] == [4] * 5
    assert len(set(torch.cat(index[:2]).tolist())) == 8  # an epoch: no index twice
    with pytest.raises(ValueError, match="cannot fill a batch"):
        backdoor.batches(3, 4, 1, torch.Generator())


# ----------------------------------------------------------------------------- the experiment

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lat-llm-cache")  # shared: later tests reuse trained models


@pytest.fixture
def quick(monkeypatch, cache):
    """The experiment on a tiny model, a few hundred examples and a few steps, in one process,
    caching under a folder of its own."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    monkeypatch.setattr(experiment, "MODEL", TINY)
    monkeypatch.setattr(experiment, "BASE", {**experiment.BASE, "steps": 20,
                                             "batch_size": 16, "warmup": 2})
    monkeypatch.setattr(experiment, "FINETUNE", {**experiment.FINETUNE, "steps": 4,
                                                 "batch_size": 16})
    monkeypatch.setattr(experiment, "PGD_STEPS", 2)
    monkeypatch.setattr(experiment, "SPLIT_SIZES", {"train_examples": 400,
                                                    "heldout": {"val": 16, "test": 16}})
    monkeypatch.setattr(experiment, "SWEEP_LAYERS", (0, 1))
    monkeypatch.setattr(experiment, "default_workers", lambda: 1)
    return cache


def test_the_result_has_a_row_per_method_with_spread_and_seeds(quick):
    result = experiment.run_lat_llm_experiment(seeds=(0, 1), workers=1)
    assert [row["method"] for row in result["rows"]] == ["base", "ft", "rlp", "at", "lat"]
    for row in result["rows"]:
        for metric in ("clean_acc", "backdoor_asr"):
            assert 0.0 <= row[metric] <= 1.0 and row[f"{metric}_std"] >= 0.0
            values = [s[metric] for s in row["per_seed"]]
            assert row[metric] == pytest.approx(sum(values) / len(values))
        assert [s["seed"] for s in row["per_seed"]] == [0, 1]
        assert all((s["eps"] is None) == (row["method"] in ("base", "ft"))
                   for s in row["per_seed"])
    sweep = result["sweep"]
    assert sweep["split"] == "val" and result["chosen_by"] == "sweep"
    assert [(p["layer"], p["method"], p["fraction"]) for p in sweep["points"]] == [
        (layer, "at" if layer == 0 else "lat", fraction) for layer in (0, 1)
        for fraction in experiment.SWEEP_FRACTIONS]
    assert [c["lr"] for c in sweep["ft_lr"]] == list(experiment.FT_LRS)
    assert experiment.FINETUNE["lr"] in experiment.FT_LRS  # the control's own point
    chosen = experiment.choose_defaults(sweep["points"])
    assert {k: result[k] for k in chosen} == chosen
    json.dumps(result)  # what `workbench experiment lat-llm --json` prints


def test_a_second_run_trains_nothing_and_gives_the_same_numbers(quick, monkeypatch, backdoor):
    given = {"layer": 1, "fraction": 0.25, "at_fraction": 0.25}
    first = experiment.run_lat_llm_experiment(seeds=(0,), **given)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although everything is cached")

    monkeypatch.setattr(backdoor, "train", no_training)
    assert experiment.run_lat_llm_experiment(seeds=(0,), **given) == first
    for result_file in quick.glob("lat-llm/experiment-*.json"):
        result_file.unlink()  # results gone, models kept: evaluated again, not trained
    assert experiment.run_lat_llm_experiment(seeds=(0,), **given)["rows"] == first["rows"]
    assert first["sweep"] is None and first["chosen_by"] == "caller"
    models = experiment.models_of(first, seed=0)  # the notebook's: all cached, none trained
    assert list(models) == ["base", "ft", "rlp", "at", "lat"]
    splits = experiment.splits()
    lat = first["rows"][-1]["per_seed"][0]
    assert backdoor.evaluate(models["lat"], splits.test, splits.test_triggered) == {
        "clean_acc": lat["clean_acc"], "backdoor_asr": lat["backdoor_asr"]}


def _result(ft_asr: float, lat_asrs: tuple[float, float]) -> dict:
    def row(method, asr, clean=0.9):
        values = asr if isinstance(asr, tuple) else (asr, asr)
        return {"method": method, "clean_acc": clean, "clean_acc_std": 0.0,
                "backdoor_asr": sum(values) / 2, "backdoor_asr_std": 0.0,
                "per_seed": [{"seed": i, "clean_acc": clean, "backdoor_asr": v, "eps": None}
                             for i, v in enumerate(values)]}
    return {"layer": 2, "fraction": 0.25, "at_fraction": 0.25, "seeds": [0, 1], "std": "s",
            "rows": [row("base", 1.0), row("ft", ft_asr), row("rlp", ft_asr),
                     row("at", 0.0, clean=0.7), row("lat", lat_asrs)],
            "sweep": {"fractions": [0.25, 0.5], "ft_lr": [{"lr": 3e-3, "clean_acc": 0.9,
                                                           "backdoor_asr": 0.1}],
                      "points": [{"layer": 1, "fraction": 0.5, "clean_acc": 0.4}]}}


def test_the_reading_is_computed_from_the_numbers():
    lines = experiment.reading(_result(0.98, (0.0, 0.02)))
    assert "keeps the backdoor" in lines[0] and "the comparison below can show" in lines[0]
    assert "lr 0.003: success 0.10" in lines[1]
    assert any(line.startswith("LAT (block 2)") and "below FT's on every seed" in line
               for line in lines)
    assert any(line.startswith("RLP") and "not below FT's" in line for line in lines)
    assert any(line.startswith("AT") and "0.20 below FT's; per seed 0.70, 0.70" in line
               for line in lines)
    assert "0.40 at layer 1" in lines[-1]
    failed = experiment.reading(_result(0.1, (0.0, 0.9)))  # the control fails; LAT one seed
    assert "does not keep" in failed[0] and "says nothing" in failed[0]
    assert any(line.startswith("LAT") and "not below FT's" in line for line in failed)


def test_choose_defaults_trades_clean_accuracy_against_backdoor_success():
    points = [{"layer": 0, "fraction": 0.25, "clean_acc": 0.8, "backdoor_asr": 0.0},
              {"layer": 0, "fraction": 0.5, "clean_acc": 0.5, "backdoor_asr": 0.0},
              {"layer": 1, "fraction": 0.25, "clean_acc": 1.0, "backdoor_asr": 0.5},
              {"layer": 2, "fraction": 0.25, "clean_acc": 1.0, "backdoor_asr": 0.1},
              {"layer": 2, "fraction": 0.5, "clean_acc": 1.0, "backdoor_asr": 0.1}]
    assert experiment.choose_defaults(points) == {"layer": 2, "fraction": 0.25,
                                                  "at_fraction": 0.25}
    with pytest.raises(ValueError, match="layer 0"):
        experiment.choose_defaults(points[2:])


def test_the_command_prints_the_table_and_the_json(quick, capsys):
    from workbench.cli import main

    assert main(["experiment", "lat-llm", "--seeds", "0", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in printed["rows"]] == ["base", "ft", "rlp", "at", "lat"]
    assert printed["seeds"] == [0] and printed["chosen_by"] == "sweep"
    text = experiment.format_lat_llm_table(printed)
    assert "backdoor ASR" in text and "layer 0 is AT" in text and "FT control" in text
    assert main(["experiment", "lat-llm", "--seeds", "0"]) == 0
    assert "backdoor ASR" in capsys.readouterr().out


def test_plain_fine_tuning_keeps_the_backdoor(backdoor):
    """The control, on the experiment's own seed-0 base and phase 2 (its learning rate and
    steps; measured on part of the test split): clean fine-tuning leaves the backdoor in.
    The models are the ones notebook 05 shows, from the run's cache (trained here when it
    has none)."""
    splits = experiment.splits()
    clean, triggered = splits.test[:100], splits.test_triggered[:200]
    base = backdoor.evaluate(experiment.base_model(0), clean, triggered)
    assert base["clean_acc"] >= 0.95 and base["backdoor_asr"] >= 0.95, base
    model, adversary = experiment.finetuned_model("ft", 0, layer=1, fraction=0.25)
    ft = backdoor.evaluate(model, clean, triggered)
    assert adversary == backdoor.Adversary("ft")
    assert ft["clean_acc"] >= 0.95 and ft["backdoor_asr"] >= 0.9, ft
