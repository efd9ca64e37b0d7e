"""Notebook 06's full mode, offline: the preset allow-list and the error without the weights,
the judge by mode, and PresetLM's sampling on a tiny randomly initialised keras-hub GPT-2 with
a tiny in-memory byte-pair tokenizer, against the lite path's sampling and through
``generation`` end to end (the preset run itself needs a GPU and Kaggle: not here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from workbench.redteam import full, generation, sampling
from workbench.redteam.judges import ProfanityJudge, ShieldGemmaJudge

# byte-pair merges: "?" inside three tokens, the line break inside two, a few word pieces
MERGES = ["? ?", '? "', "? !", "Ċ Ċ", "Ġ t", "Ġt h", "Ġth e", "o u", "Ġ y", "Ġy ou"]
MAX_LENGTH = 512  # the chatbot's prompt is ~200 tokens with so few merges


@pytest.fixture(scope="module")
def keras_hub():
    from workbench.safety.scoring import import_keras_hub

    return import_keras_hub()[1]


@pytest.fixture(scope="module")
def hub_tokenizer(keras_hub):
    """A GPT2Tokenizer over the 256 byte symbols, :data:`MERGES` and ``<|endoftext|>``."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    vocabulary: dict[str, int] = {}
    for symbol in bytes_to_unicode()[1]:
        vocabulary.setdefault(symbol, len(vocabulary))
    for merge in MERGES:
        vocabulary.setdefault(merge.replace(" ", ""), len(vocabulary))
    vocabulary["<|endoftext|>"] = len(vocabulary)
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=MERGES)


@pytest.fixture(scope="module")
def causal_lm(keras_hub, hub_tokenizer):
    """A 1-block, 16-wide GPT2CausalLM (random weights, seed 0) with the tiny tokenizer."""
    import keras

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=hub_tokenizer.vocabulary_size(), num_layers=1, num_heads=2,
        hidden_dim=16, intermediate_dim=32, max_sequence_length=MAX_LENGTH)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(hub_tokenizer,
                                                             sequence_length=64)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


@pytest.fixture(scope="module")
def lm(causal_lm):
    return full.PresetLM(causal_lm.backbone, causal_lm.preprocessor.tokenizer, "tiny GPT-2")


def all_logits(causal_lm):
    """The causal LM's own (N, T, V) logits at every position, as TinyLM.logits gives."""
    return lambda ids, mask: causal_lm({"token_ids": ids, "padding_mask": mask},
                                       training=False)


# ----------------------------------------------------------------------------- the presets

def test_an_unknown_preset_is_a_value_error_listing_the_presets():
    for load in (full.load_red_lm_preset, full.load_chatbot_preset):
        with pytest.raises(ValueError, match="unknown red-team preset 'gpt2_small_en'") as err:
            load("gpt2_small_en")
        for preset in ("gpt2_base_en", "gpt2_medium_en", "gemma2_instruct_2b_en",
                       "llama3.2_instruct_1b"):
            assert preset in str(err.value)


def test_the_allow_list_is_keras_hubs_own(keras_hub):
    """Every accepted preset is one keras-hub knows, under the class the loader uses."""
    for preset, (class_name, model, _, _) in full.PRESETS.items():
        presets = getattr(keras_hub.models, class_name).presets
        assert preset in presets, preset
        assert f"kaggle://{model}/keras/{preset}/" in presets[preset]["kaggle_handle"]


OFFLINE = """
import json, time
from workbench.redteam.full import (RedTeamPresetUnavailableError, load_chatbot_preset,
                                    load_red_lm_preset)
from workbench.safety.scoring import import_keras_hub
import_keras_hub()
out = []
for load, preset in ((load_red_lm_preset, "gpt2_base_en"),
                     (load_chatbot_preset, "llama3.2_instruct_1b")):
    start = time.monotonic()
    try:
        load(preset)
        message = "LOADED"
    except RedTeamPresetUnavailableError as err:
        message = str(err)
    except BaseException as err:
        message = f"WRONG ERROR {type(err).__name__}: {err}"
    out.append({"message": message, "seconds": time.monotonic() - start})
print(json.dumps(out))
"""


def test_without_the_weights_the_loaders_fail_fast_and_say_what_to_do(tmp_path):
    """No credentials, an empty Kaggle cache, no network: RedTeamPresetUnavailableError
    within seconds, naming the preset, its Kaggle models, the credentials and lite mode (as
    tests/test_lat_llm_full.py checks Llama's)."""
    cache = tmp_path / "kagglehub"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE", "COLAB"))}
    env.update(KAGGLEHUB_CACHE=str(cache), KAGGLE_CONFIG_DIR=str(tmp_path / "no-credentials"),
               KAGGLEHUB_VERBOSITY="error")
    out = subprocess.run([sys.executable, "-c", OFFLINE], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    gpt2, llama = json.loads(out.stdout.strip().splitlines()[-1])
    common = ("Kaggle", "KAGGLE_USERNAME", "KAGGLE_KEY", "use_colab_secrets", str(cache),
              "WORKBENCH_MODE=lite")
    for result, needed in ((gpt2, ("'gpt2_base_en'", "kaggle.com/models/keras/gpt2",
                                   "no licence to accept")),
                           (llama, ("'llama3.2_instruct_1b'", "kaggle.com/models/keras/llama3",
                                    "Llama 3.2 licence"))):
        assert not result["message"].startswith(("LOADED", "WRONG")), result
        for text in (*needed, *common):
            assert text in result["message"], (text, result["message"])
        assert result["seconds"] < 20, result
    downloaded = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert downloaded == [], downloaded


def test_the_loaders_ask_for_float32_on_the_cpu_and_wrap_the_preset(keras_hub, causal_lm,
                                                                     monkeypatch):
    calls = []

    def from_preset(preset, **kwargs):
        calls.append((preset, kwargs))
        return causal_lm

    monkeypatch.setattr(keras_hub.models.GPT2CausalLM, "from_preset", from_preset)
    red = full.load_red_lm_preset()
    chatbot = full.load_chatbot_preset("gpt2_medium_en")
    assert calls == [("gpt2_base_en", {"dtype": "float32"}),
                     ("gpt2_medium_en", {"dtype": "float32"})]
    assert isinstance(red, full.PresetLM) and red.backbone is causal_lm.backbone
    assert red.name.startswith("red LM") and "gpt2_base_en" in red.name
    assert "dialogue preamble" in chatbot.name and "gpt2_medium_en" in chatbot.name
    assert red.max_length == MAX_LENGTH


def test_importing_full_imports_no_keras():
    code = ("import sys, workbench.redteam.full; "
            "assert not any(m.split('.')[0] in ('keras', 'keras_hub', 'tensorflow') "
            "for m in sys.modules), 'keras imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# ----------------------------------------------------------------------------- the judge

def test_the_judge_of_each_mode(monkeypatch):
    assert isinstance(full.load_judge("lite"), ProfanityJudge)
    from workbench.safety import loading

    class Scorer:
        name = "ShieldGemma (stand-in)"

    calls = []
    monkeypatch.setattr(loading, "load_scorer",
                        lambda mode, **kw: calls.append((mode, kw)) or Scorer())
    judge = full.load_judge("full")
    assert isinstance(judge, ShieldGemmaJudge) and isinstance(judge.scorer, Scorer)
    assert calls == [("full", {"preset": "shieldgemma_2b_en"})]
    with pytest.raises(ValueError, match="WORKBENCH_MODE"):
        full.load_judge("gpu")


# ----------------------------------------------------------------------------- stop strings

def test_stop_ids_are_every_token_containing_a_stop_string_and_the_end(lm, hub_tokenizer):
    ids = {t: hub_tokenizer.token_to_id(t) for t in ("?", "??", '?"', "?!", "Ċ", "ĊĊ")}
    end = hub_tokenizer.end_token_id
    assert lm.stop_ids(["?"]) == sorted([ids["?"], ids["??"], ids['?"'], ids["?!"], end])
    assert lm.stop_ids(["\n"]) == sorted([ids["Ċ"], ids["ĊĊ"], end])
    assert lm.stop_ids([]) == [end]
    with pytest.raises(ValueError, match="non-empty"):
        lm.stop_ids([""])


def test_cut_after_stop():
    assert full.cut_after_stop('why?" he said', ["?"]) == "why?"
    assert full.cut_after_stop("a\nb? c", ["?", "\n"]) == "a\n"
    assert full.cut_after_stop("no stop", ["?"]) == "no stop"
    assert full.cut_after_stop("x ab y ab", ["ab"]) == "x ab"


# ----------------------------------------------------------------------------- sampling

PROMPTS = ["List of questions to ask someone:\n1.", "hello", "the cat sat on the mat and"]


def test_logits_at_the_last_real_token_are_the_causal_lms(lm, causal_lm):
    """In a right-padded batch of different lengths, each row's logits at its last real
    token equal GPT2CausalLM's own there."""
    from workbench.safety.scoring import pad_right

    ids, mask = pad_right([lm.encode(p) for p in PROMPTS], 0)
    ids, mask = torch.from_numpy(ids).long(), torch.from_numpy(mask)
    mine = lm.logits(ids, mask)
    theirs = all_logits(causal_lm)(ids, mask)
    assert mine.shape == theirs.shape and mine.dtype == torch.float32
    last = mask.sum(1) - 1
    rows = torch.arange(len(PROMPTS))
    torch.testing.assert_close(mine[rows, last], theirs[rows, last].float(), rtol=1e-5,
                               atol=1e-5)


def test_sampling_is_the_lite_paths_over_the_presets_logits(lm, causal_lm):
    """The same draws as sampling.sample over the causal LM's full logits with the same
    seed: the nucleus, temperature and generator are the lite path's."""
    settings = {"max_new_tokens": 12, "temperature": 0.7, "top_p": 0.9}
    mine = lm.sample_ids(PROMPTS, stop=["?"], seed=3, **settings)
    reference = sampling.sample(all_logits(causal_lm), [lm.encode(p) for p in PROMPTS],
                                stop_ids=lm.stop_ids(["?"]), pad_id=0, max_length=MAX_LENGTH,
                                generator=torch.Generator().manual_seed(3), **settings)
    assert mine == reference


def test_sampling_is_deterministic_with_a_seed_and_batching_does_not_change_it(lm):
    prompts = PROMPTS * 4
    once = lm.sample(prompts, max_new_tokens=10, stop=["?"], seed=5)
    assert lm.sample(prompts, max_new_tokens=10, stop=["?"], seed=5) == once
    assert lm.sample(prompts, max_new_tokens=10, stop=["?"], seed=6) != once
    assert all(isinstance(t, str) for t in once) and len(once) == len(prompts)


def greedy(causal_lm, lm, prompt: str, steps: int) -> list[int]:
    """The argmax continuation of ``prompt``, one full forward per token, up to ``steps``
    tokens or the end token (included)."""
    ids, out = lm.encode(prompt), []
    while len(out) < steps and not (out and out[-1] in lm.end_ids):
        x = torch.tensor([ids + out])
        logits = all_logits(causal_lm)(x, torch.ones_like(x, dtype=torch.int32))
        out.append(int(logits[0, -1].argmax()))
    return out


def test_a_tiny_top_p_samples_the_argmax_continuation(lm, causal_lm):
    """The top-p set of a tiny p is the most probable token alone (sampling's guarantee), so
    any seed and temperature give the greedy continuation."""
    expected = greedy(causal_lm, lm, PROMPTS[0], 8)
    for seed in (0, 1):
        got = lm.sample_ids([PROMPTS[0]], max_new_tokens=8, stop=[], top_p=1e-9,
                            temperature=2.0, seed=seed)
        assert got == [expected]


def test_max_new_tokens_and_stop_strings_are_respected(lm):
    """Without stop strings each continuation is max_new_tokens long unless it ends with the
    end token; with them, it ends at its first stop token, and its text right after its
    first stop string."""
    prompts = PROMPTS * 8
    for row in lm.sample_ids(prompts, max_new_tokens=7, stop=[], seed=0):
        assert len(row) == 7 or (len(row) < 7 and row[-1] in lm.end_ids)
    stops = ["?", "\n"]
    stop_ids = set(lm.stop_ids(stops))
    rows = lm.sample_ids(prompts, max_new_tokens=24, stop=stops, seed=0)
    texts = lm.sample(prompts, max_new_tokens=24, stop=stops, seed=0)
    stopped = 0
    for row, text in zip(rows, texts):
        assert not stop_ids & set(row[:-1]) and len(row) <= 24
        if row[-1] in stop_ids and row[-1] not in lm.end_ids:
            stopped += 1
            assert text.endswith(tuple(stops)) and text == full.cut_after_stop(text, stops)
        else:
            assert not any(s in text for s in stops) and (len(row) == 24
                                                          or row[-1] in lm.end_ids)
    assert stopped >= 3  # seed 0 stops often enough for the check to mean something


def test_a_stop_string_ends_the_text_inside_a_token_or_across_two(lm, causal_lm):
    """Greedy decoding with stop strings taken from its own continuation (``d``, ``d``,
    ``2``, ``{``, ... for this prompt and seed): one token's text stops sampling at the first
    token containing it; the text of two tokens together does not stop sampling, but the
    text is still cut right after it."""
    prompt = PROMPTS[2]
    ids = greedy(causal_lm, lm, prompt, 10)
    assert len(ids) == 10 and not lm.end_ids & set(ids)
    texts = [lm.decode([i]) for i in ids]
    k = next(k for k in range(1, 9) if texts[k].isascii() and texts[k].strip()
             and texts[k + 1].isascii() and texts[k + 1].strip())
    whole = lm.decode(ids)
    for stop, stops_sampling in ((texts[k], True), (texts[k] + texts[k + 1], False)):
        settings = {"max_new_tokens": 10, "stop": [stop], "top_p": 1e-9}
        got = lm.sample([prompt], **settings)
        assert got == [full.cut_after_stop(whole, [stop])] and got[0].endswith(stop)
        length = len(lm.sample_ids([prompt], **settings)[0])
        assert length <= k + 1 if stops_sampling else length == 10


def test_zero_shot_and_the_chatbots_replies_end_to_end(lm):
    """generation's red-team steps run on a PresetLM unchanged: questions cut after their
    question mark, one reply per question on one line, the same again with the same seed."""
    questions = generation.zero_shot(lm, 48, seed=0)
    assert questions == generation.zero_shot(lm, 48, seed=0)
    assert 0 < len(questions) <= 48
    assert all(q.endswith("?") and q.count("?") == 1 for q in questions)
    replies = generation.chatbot_replies(lm, questions, seed=0)
    assert replies == generation.chatbot_replies(lm, questions, seed=0)
    assert len(replies) == len(questions)
    assert all(isinstance(r, str) and "\n" not in r for r in replies)
