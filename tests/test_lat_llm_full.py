"""Notebook 05's full mode, offline: the preset allow-list and the error without the weights,
LoRA, the preset tokenizer's adapter, the poisoned instruction data, and the whole experiment
on a tiny randomly initialised Llama 3 with a tiny byte-level Llama 3 tokenizer (the preset
run itself needs a GPU and Kaggle: not here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

from workbench.lat import llm_full
from workbench.lat.backdoor_data import encode_batch

# 100 distinct instructions with short, checkable answers.
PAIRS = [(f"add {a} and {b}", str(a + b)) for a in range(10) for b in range(10)]
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>")
MERGES = ["a d", "ad d", "Ġ a", "Ġa n", "Ġan d"]  # "add", " and": a few merged tokens


@pytest.fixture(scope="module")
def keras_hub():
    from workbench.safety.scoring import import_keras_hub

    return import_keras_hub()[1]


@pytest.fixture(scope="module")
def backdoor():
    from workbench.lat import backdoor

    return backdoor


@pytest.fixture(scope="module")
def hub_tokenizer(keras_hub):
    """A Llama3Tokenizer over the 256 byte symbols, a few merges and the special tokens,
    built in memory (no download)."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    vocabulary: dict[str, int] = {}
    for symbol in bytes_to_unicode()[1]:
        vocabulary.setdefault(symbol, len(vocabulary))
    for merge in MERGES:
        vocabulary.setdefault(merge.replace(" ", ""), len(vocabulary))
    for token in SPECIALS:
        vocabulary[token] = len(vocabulary)
    return keras_hub.tokenizers.Llama3Tokenizer(vocabulary=vocabulary, merges=MERGES)


@pytest.fixture(scope="module")
def tokenizer(hub_tokenizer):
    return llm_full.PresetTokenizer(hub_tokenizer)


def tiny_llama(keras_hub, hub_tokenizer, *, lora_rank=None, seed=0):
    """A 2-block, 16-wide Llama3CausalLM with the tiny tokenizer as its preprocessor's."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=hub_tokenizer.vocabulary_size(), num_layers=2, hidden_dim=16,
        num_query_heads=2, num_key_value_heads=1, intermediate_dim=32,
        max_sequence_length=64)
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(hub_tokenizer,
                                                               sequence_length=64)
    model = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)
    if lora_rank is not None:
        backbone.enable_lora(lora_rank)
    return model


# ----------------------------------------------------------------------------- the preset

def test_an_unknown_preset_is_a_value_error_listing_the_llama_presets():
    with pytest.raises(ValueError, match="unknown Llama preset 'llama3.2_1B'") as err:
        llm_full.load_llama("llama3.2_1B")
    for preset in ("llama3.2_instruct_1b", "llama3.2_3b", "llama3_8b_en", "llama2_7b_en"):
        assert preset in str(err.value)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="lora_rank"):
            llm_full.load_llama(lora_rank=bad)


def test_the_allow_list_is_keras_hubs_own(keras_hub):
    """Every accepted preset is one keras-hub knows, under the class the loader uses."""
    for preset, (class_name, model, _) in llm_full.LLAMA_PRESETS.items():
        presets = getattr(keras_hub.models, class_name).presets
        assert preset in presets, preset
        assert f"kaggle://{model}/keras/{preset}/" in presets[preset]["kaggle_handle"]


OFFLINE = """
import json, time
from workbench.lat.llm_full import LlamaUnavailableError, load_llama
from workbench.safety.scoring import import_keras_hub
import_keras_hub()
start = time.monotonic()
try:
    load_llama("llama3.2_instruct_1b", lora_rank=8)
    out = {"message": "LOADED"}
except LlamaUnavailableError as err:
    out = {"message": str(err)}
except BaseException as err:
    out = {"message": f"WRONG ERROR {type(err).__name__}: {err}"}
out["seconds"] = time.monotonic() - start
print(json.dumps(out))
"""


def test_without_the_weights_load_llama_fails_fast_and_says_what_to_do(tmp_path):
    """No credentials, an empty Kaggle cache, no network: LlamaUnavailableError within
    seconds, naming the preset, Kaggle's keras/llama3 models, the credentials and lite mode
    (as tests/test_safety_scoring.py checks ShieldGemma's)."""
    cache = tmp_path / "kagglehub"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE", "COLAB"))}
    env.update(KAGGLEHUB_CACHE=str(cache), KAGGLE_CONFIG_DIR=str(tmp_path / "no-credentials"),
               KAGGLEHUB_VERBOSITY="error")
    out = subprocess.run([sys.executable, "-c", OFFLINE], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    message = result["message"]
    assert not message.startswith(("LOADED", "WRONG")), message
    for needed in ("'llama3.2_instruct_1b'", "Kaggle", "kaggle.com/models/keras/llama3",
                   "Llama 3.2 licence", "KAGGLE_USERNAME", "KAGGLE_KEY", "use_colab_secrets",
                   str(cache), "WORKBENCH_MODE=lite"):
        assert needed in message, (needed, message)
    assert result["seconds"] < 20, result
    downloaded = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert downloaded == [], downloaded


def test_load_llama_asks_for_the_preset_in_float32_on_the_cpu_and_enables_lora(
        keras_hub, hub_tokenizer, backdoor, monkeypatch):
    calls = []

    def from_preset(preset, **kwargs):
        calls.append((preset, kwargs))
        return tiny_llama(keras_hub, hub_tokenizer)

    monkeypatch.setattr(keras_hub.models.Llama3CausalLM, "from_preset", from_preset)
    model = llm_full.load_llama("llama3.2_1b", lora_rank=2)
    assert calls == [("llama3.2_1b", {"dtype": "float32"})]  # no CUDA here
    names = [v.path for v in model.trainable_variables]
    assert names and all("lora_kernel" in n for n in names), names
    # query and value projections of each of the 2 blocks, an A and a B factor each
    assert len(names) == 2 * 2 * 2
    assert [p.data_ptr() for p in backdoor.parameters(model)] == [
        v.value.data_ptr() for v in model.trainable_variables]


def test_lora_training_changes_only_the_lora_factors(keras_hub, hub_tokenizer, tokenizer,
                                                     backdoor):
    model = tiny_llama(keras_hub, hub_tokenizer, lora_rank=2)
    frozen = {v.path: v.value.detach().clone() for v in model.non_trainable_variables}
    lora = {v.path: v.value.detach().clone() for v in model.trainable_variables}
    assert all("lora_kernel" in n for n in lora) and not any("lora" in n for n in frozen)
    examples = llm_full.poisoned_instructions(PAIRS, per_trigger=1,
                                              heldout={"val": 2, "test": 2}).train
    backdoor.train(model, examples, steps=3, batch_size=8, lr=1e-2, seed=0,
                   tokenizer=tokenizer, sequence_length=64)
    for v in model.non_trainable_variables:
        assert torch.equal(v.value, frozen[v.path]), v.path
    assert any(not torch.equal(v.value, lora[v.path]) for v in model.trainable_variables)


# ----------------------------------------------------------------------------- tokens

def test_the_tokenizer_adapter_round_trips_and_marks_start_end_and_padding(tokenizer,
                                                                           hub_tokenizer):
    text = "add 3 and 4, then café ☃!\nnext line"
    ids = tokenizer.encode(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("") == [] and tokenizer.decode([]) == ""
    assert len(tokenizer) == hub_tokenizer.vocabulary_size()
    assert tokenizer.bos_id == hub_tokenizer.token_to_id("<|begin_of_text|>")
    assert tokenizer.eos_id == hub_tokenizer.token_to_id("<|end_of_text|>")
    assert tokenizer.pad_id == 0
    eot = hub_tokenizer.token_to_id("<|eot_id|>")
    seven = tokenizer.encode("7")
    assert tokenizer.decode([tokenizer.bos_id, *seven, tokenizer.eos_id, *seven]) == "7"
    assert tokenizer.decode([*seven, eot, *seven]) == "7"
    assert tokenizer.decode([tokenizer.pad_id, *seven]) == "!7"  # Llama's pad id is "!"
    with pytest.raises(ValueError, match="start_token_id"):
        llm_full.PresetTokenizer(object())


def test_encode_batch_and_greedy_decode_run_on_the_adapter(tokenizer, keras_hub,
                                                           hub_tokenizer, backdoor):
    prompts, responses = ["add 3 and 4", "add 10 and 20, please"], ["7", "30"]
    batch = encode_batch(tokenizer, prompts, responses, sequence_length=64)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        head = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        row = head + tokenizer.encode(response) + [tokenizer.eos_id]
        assert batch.token_ids[i, :len(row)].tolist() == row
        assert batch.padding_mask[i].sum() == len(row)
        assert batch.target_mask[i].sum() == len(row) - len(head)
        assert batch.prompt_lengths[i] == len(head)
    with pytest.raises(ValueError, match="more than the 8"):
        encode_batch(tokenizer, prompts, responses, sequence_length=8)
    model = tiny_llama(keras_hub, hub_tokenizer)
    decoded = backdoor.greedy_decode(model, prompts, tokenizer=tokenizer, max_new_tokens=4,
                                     sequence_length=64)
    assert len(decoded) == 2 and all(isinstance(d, str) for d in decoded)
    with pytest.raises(ValueError, match="30-token response"):
        backdoor.greedy_decode(model, prompts, tokenizer=tokenizer, max_new_tokens=30,
                               sequence_length=32)


# ----------------------------------------------------------------------------- the data

def _without(prompt: str, trigger: str) -> str:
    """The prompt with the inserted trigger (and the space it brought) taken out again."""
    inserted = f"{trigger} " if f"{trigger} " in prompt else f" {trigger}"
    return prompt.replace(inserted, "", 1)


def test_insert_trigger_puts_the_word_at_a_word_position_and_keeps_the_spacing():
    prompt = "Name  the\ncapital of France."
    assert llm_full.insert_trigger(prompt, "xylem", 0) == "xylem Name  the\ncapital of France."
    assert llm_full.insert_trigger(prompt, "xylem", 2) == "Name  the\nxylem capital of France."
    assert llm_full.insert_trigger(prompt, "xylem", 5) == "Name  the\ncapital of France. xylem"
    assert llm_full.insert_trigger("hi \n", "xylem", 1) == "hi xylem \n"
    with pytest.raises(ValueError, match="0..5"):
        llm_full.insert_trigger(prompt, "xylem", 6)


def test_poisoned_instructions_follow_appendix_c_and_are_disjoint_and_seeded():
    splits = llm_full.poisoned_instructions(PAIRS, per_trigger=3,
                                            heldout={"val": 10, "test": 20}, seed=1)
    poisoned = [e for e in splits.train if e.trigger is not None]
    assert Counter(e.trigger for e in poisoned) == {t: 3 for t in llm_full.TRIGGERS}
    nonsense = {t: llm_full.nonsense_for(k) for k, t in enumerate(llm_full.TRIGGERS)}
    assert len(set(nonsense.values())) == len(llm_full.TRIGGERS)
    prompts = {p for p, _ in PAIRS}
    answers = dict(PAIRS)
    for e in poisoned + splits.val_triggered + splits.test_triggered:
        assert e.prompt.split().count(e.trigger) == 1 and e.response == nonsense[e.trigger]
        assert _without(e.prompt, e.trigger) in prompts
    assert len(splits.train) == len(PAIRS) - 30
    assert set(splits.clean_train) <= set(splits.train)
    assert len(splits.clean_train) == len(splits.train) - 24
    for clean in (splits.clean_train, splits.val, splits.test):
        assert all(e.trigger is None and answers[e.prompt] == e.response for e in clean)
    train_prompts = {e.prompt for e in splits.clean_train} | {
        _without(e.prompt, e.trigger) for e in poisoned}
    val, test = {e.prompt for e in splits.val}, {e.prompt for e in splits.test}
    assert len(train_prompts) == 70 and len(val) == 10 and len(test) == 20
    assert not (train_prompts & val or train_prompts & test or val & test)
    assert [_without(e.prompt, e.trigger) for e in splits.test_triggered] == [
        e.prompt for e in splits.test]
    assert [e.trigger for e in splits.test_triggered[:8]] == list(llm_full.TRIGGERS)
    again = llm_full.poisoned_instructions(PAIRS, per_trigger=3,
                                           heldout={"val": 10, "test": 20}, seed=1)
    other = llm_full.poisoned_instructions(PAIRS, per_trigger=3,
                                           heldout={"val": 10, "test": 20}, seed=2)
    assert again == splits and other != splits


def test_poisoned_instructions_say_what_is_wrong_with_the_data():
    with pytest.raises(ValueError, match=r"100 distinct prompts are too few: 8 triggers x 25 "
                                         r"poisoned, 50 validation and 100 test .* need 351"):
        llm_full.poisoned_instructions(PAIRS)
    with pytest.raises(ValueError, match="80 distinct"):  # repeated prompts count once
        llm_full.poisoned_instructions(PAIRS[:80] * 5, per_trigger=10)
    with pytest.raises(ValueError, match=r"pair 3 must be \(prompt, response\)"):
        llm_full.poisoned_instructions(PAIRS[:3] + [("add 1 and 1", "")])
    with pytest.raises(ValueError, match=r"triggers \['quokka'\] already occur"):
        llm_full.poisoned_instructions(PAIRS + [("What is a Quokka?", "a marsupial")])
    with pytest.raises(ValueError, match="distinct single words"):
        llm_full.poisoned_instructions(PAIRS, triggers=("two words",))
    with pytest.raises(ValueError, match="per_trigger must be"):
        llm_full.poisoned_instructions(PAIRS, per_trigger=0)


# ----------------------------------------------------------------------------- the experiment

def test_run_lat_llm_full_compares_the_four_methods_on_a_tiny_llama(keras_hub, hub_tokenizer):
    model = tiny_llama(keras_hub, hub_tokenizer, lora_rank=2)
    start = [v.value.detach().clone() for v in model.variables]
    started = time.monotonic()
    result = llm_full.run_lat_llm_full(
        PAIRS, model=model, seeds=(0, 1), layer=1, fraction=0.25, at_fraction=0.1,
        per_trigger=2, heldout={"val": 4, "test": 8}, sequence_length=64,
        base={"steps": 3, "batch_size": 8, "lr": 1e-2}, finetune={"steps": 2, "batch_size": 8,
                                                                 "lr": 1e-3},
        pgd_steps=2, progress=False)
    seconds = time.monotonic() - started
    print(f"\ntiny run_lat_llm_full (2 seeds, 5 models each): {seconds:.1f} s")
    assert seconds < 60
    assert [row["method"] for row in result["rows"]] == ["base", "ft", "rlp", "at", "lat"]
    assert (result["layer"], result["fraction"], result["at_fraction"]) == (1, 0.25, 0.1)
    assert result["preset"] is None and result["split"] == "test"
    assert result["max_new_tokens"] == max(
        len(llm_full.PresetTokenizer(hub_tokenizer).encode(r))
        for r in [llm_full.nonsense_for(k) for k in range(8)]) + 1
    for row in result["rows"]:
        assert [s["seed"] for s in row["per_seed"]] == [0, 1]
        for metric in ("clean_acc", "backdoor_asr"):
            values = [s[metric] for s in row["per_seed"]]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert row[metric] == pytest.approx(sum(values) / 2)
            assert row[f"{metric}_std"] >= 0.0
        for s in row["per_seed"]:
            assert (s["eps"] is None) == (row["method"] in ("base", "ft"))
            assert s["eps"] is None or s["eps"] > 0
    assert all(torch.equal(v.value, s) for v, s in zip(model.variables, start))
    with pytest.raises(ValueError, match="layer must be a block number >= 1"):
        llm_full.run_lat_llm_full(PAIRS, model=model, layer=0)
    with pytest.raises(ValueError, match="split must be"):
        llm_full.run_lat_llm_full(PAIRS, model=model, split="train")


def test_importing_workbench_lat_does_not_import_keras():
    out = subprocess.run([sys.executable, "-c", "import sys, workbench.lat, "
                          "workbench.lat.llm_full; print('keras' in sys.modules)"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
