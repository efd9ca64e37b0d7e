"""Notebook 01's exercises: ``make_prompt`` and ``yes_probability``, with checks that name the
mistake.

``make_prompt`` is compared with :func:`workbench.safety.make_prompt` on random contents for
every harm type and both use cases; ``yes_probability`` with
:func:`workbench.safety.yes_probability` on random logits and padding masks (right and left
padding, rows of different lengths). Neither needs a model, so the checks take milliseconds and
a hard-coded answer cannot pass.
"""

from __future__ import annotations

import random
import re

import torch

from workbench.exercises.core import CheckFailed, exercise
from workbench.safety import HarmType, UseCase, policy_text
from workbench.safety import make_prompt as reference_make_prompt
from workbench.safety import yes_probability as reference_yes_probability
from workbench.safety.prompts import END_OF_TURN, PREAMBLES, QUESTIONS, START_OF_TURN

# ----------------------------------------------------------------------------- make_prompt

prompt_exercise = exercise("make_prompt", notebook="01_shieldgemma",
                           title="ShieldGemma's prompt, make_prompt(harm_type, user_content, "
                                 "model_content=None)",
                           references=("workbench.safety.prompts.make_prompt",))

WORDS = ("how", "do", "I", "bake", "bread", "tell", "me", "about", "the", "moon", "my", "cat",
         "likes", "boxes", "write", "a", "poem", "on", "rain", "why", "is", "sky", "blue",
         "please", "explain", "trains", "quickly", "{braces}", "'quotes'", "50%", "café")


def random_text(rng: random.Random, words: int | None = None) -> str:
    """A random sentence from a small word list (with braces, quotes and a percent sign, which
    trip up ``str.format`` and ``%`` templates)."""
    n = words or rng.randint(3, 12)
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + rng.choice(".?!")


def _as_prompt(result) -> str:
    if result is None:
        raise CheckFailed("your function returned None: end it with `return prompt`")
    if not isinstance(result, str):
        raise CheckFailed(f"your function returned a {type(result).__name__}; return the "
                          f"prompt as one str")
    return result


def _first_difference(got: str, expected: str) -> str:
    """Where two prompts first differ, with a little context on each side."""
    i = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b),
             min(len(got), len(expected)))
    start = max(0, i - 30)
    return (f"first difference at character {i}: expected ...{expected[start:i + 30]!r}..., "
            f"got ...{got[start:i + 30]!r}...")


def _blank_lines_collapsed(text: str) -> str:
    return re.sub(r"\n+", "\n", text).strip("\n")


def _diagnose_prompt(got: str, harm: HarmType, user: str, model: str | None,
                     expected: str) -> str:
    """The likely mistake behind ``got`` != ``expected``, in words."""
    use_case = UseCase.PROMPT_ONLY if model is None else UseCase.PROMPT_RESPONSE
    other = UseCase.PROMPT_RESPONSE if model is None else UseCase.PROMPT_ONLY
    name = f"UseCase.{use_case.name}"  # the same text whatever Python formats enums as
    what = "a prompt-only prompt (model_content=None)" if model is None else (
        "a prompt with a chatbot response")
    if got.startswith(PREAMBLES[other]):
        return (f"for {what} use PREAMBLES[{name}], not the preamble of {other.value}: "
                f"pick the use case from whether model_content is None")
    if not got.startswith(PREAMBLES[use_case]):
        return f"the prompt must start with PREAMBLES[{name}]; {_first_difference(got, expected)}"
    if START_OF_TURN not in got or END_OF_TURN not in got:
        return (f"each turn is wrapped in the markers {START_OF_TURN!r} and {END_OF_TURN!r}, each "
                f"on its own line")
    if model is not None and "Chatbot Response:" not in got:
        return ("model_content was given but there is no response block: after the human "
                "question's turn add a second turn, '<start_of_turn>\\nChatbot Response: ...\\n"
                "<end_of_turn>' followed by a blank line")
    if model is None and "Chatbot Response:" in got:
        return ("model_content is None but your prompt has a 'Chatbot Response' block: a "
                "prompt-only prompt has the human question's turn only")
    if QUESTIONS[other] in got:
        return (f"wrong question for {what}: use QUESTIONS[{name}] "
                f"({QUESTIONS[use_case]!r})")
    if policy_text(harm, other) in got:
        return f"wrong policy wording for {what}: use policy_text(harm_type, {name})"
    for wrong in HarmType:
        if wrong is not harm and policy_text(wrong, use_case) in got:
            return (f"the prompt holds the policy of {wrong.value}, asked for {harm.value}: use "
                    f"policy_text(harm_type, use_case)")
    if QUESTIONS[use_case] not in got:
        return f"the question {QUESTIONS[use_case]!r} is missing"
    unstripped = reference_make_prompt(harm, "x", None if model is None else "y").replace(
        "Human Question: x\n", f"Human Question: {user}\n").replace(
        "Chatbot Response: y\n", f"Chatbot Response: {model}\n")
    if got == unstripped:
        return ("the contents keep their surrounding spaces and newlines: use "
                "user_content.strip() (and model_content.strip())")
    if got == expected.rstrip("\n") or got == expected[:-1]:
        return ("the prompt must end with a blank line, '...correctly.\\n\\n': the model's "
                "answer comes right after it")
    if _blank_lines_collapsed(got) == _blank_lines_collapsed(expected):
        return ("the lines are right but the blank lines are not: there is one blank line "
                "(\\n\\n) after the preamble, after each <end_of_turn>, around '===' and after "
                "the policy line, and the prompt ends with one; "
                + _first_difference(got, expected))
    return _first_difference(got, expected)


def _compare_prompts(make_prompt, cases) -> None:
    for harm, user, model in cases:
        expected = reference_make_prompt(harm, user, model)
        got = _as_prompt(make_prompt(harm, user, model))
        if got != expected:
            raise CheckFailed(f"{harm.value}, user_content={user!r}"
                              + ("" if model is None else f", model_content={model!r}")
                              + ": " + _diagnose_prompt(got, harm, user, model, expected))


@prompt_exercise.check("returns a str")
def _returns_str(make_prompt):
    _as_prompt(make_prompt(HarmType.HARASSMENT, "Hello there."))


@prompt_exercise.check("prompt-only prompts match the template for all four harm types")
def _prompt_only(make_prompt):
    rng = random.Random(101)
    _compare_prompts(make_prompt, [(harm, random_text(rng), None)
                                   for harm in HarmType for _ in range(3)])


@prompt_exercise.check("prompt-response prompts match the template for all four harm types")
def _prompt_response(make_prompt):
    rng = random.Random(202)
    _compare_prompts(make_prompt, [(harm, random_text(rng), random_text(rng))
                                   for harm in HarmType for _ in range(3)])


@prompt_exercise.check("strips spaces and newlines around the contents, keeps those inside")
def _strips(make_prompt):
    rng = random.Random(303)
    cases = []
    for harm in HarmType:
        user = f"  {random_text(rng)}\n{random_text(rng)}\n "
        model = None if harm in (HarmType.HARASSMENT, HarmType.HATE_SPEECH) else (
            f"\n{random_text(rng)}   ")
        cases.append((harm, user, model))
    _compare_prompts(make_prompt, cases)


# ----------------------------------------------------------------------------- yes_probability

yes_exercise = exercise("yes_probability", notebook="01_shieldgemma",
                        title="P(Yes) at each row's last real token, "
                              "yes_probability(logits, padding_mask, yes_id, no_id)",
                        references=("workbench.safety.scoring.yes_probability",))


def random_case(seed: int, lengths: list[int], *, left: bool = False, vocabulary: int = 40,
                scale: float = 3.0):
    """Random logits [B, T, V], an int padding mask [B, T] with rows of ``lengths`` real tokens
    (padded on the right, or on the left), and distinct Yes and No ids."""
    generator = torch.Generator().manual_seed(seed)
    batch, time = len(lengths), max(lengths)
    logits = torch.randn((batch, time, vocabulary), generator=generator) * scale
    mask = torch.zeros((batch, time), dtype=torch.int32)
    for row, length in enumerate(lengths):
        if left:
            mask[row, time - length:] = 1
        else:
            mask[row, :length] = 1
    yes_id, no_id = torch.randperm(vocabulary, generator=generator)[:2].tolist()
    return logits, mask, yes_id, no_id


def _as_probabilities(result, batch: int) -> torch.Tensor:
    if result is None:
        raise CheckFailed("your function returned None: end it with `return p_yes`")
    try:
        p = torch.as_tensor(result).detach().float().cpu()
    except Exception:
        raise CheckFailed(f"your function returned a {type(result).__name__}; return a tensor "
                          f"of shape [batch]") from None
    if p.shape == (batch, 1):
        raise CheckFailed(f"the result has shape {tuple(p.shape)}; return one number per row, "
                          f"shape [{batch}] (drop the last axis, e.g. [:, 0])")
    if p.shape == (batch, 2):
        raise CheckFailed(f"the result has shape {tuple(p.shape)}: that looks like both "
                          f"(Yes, No) columns; return P(Yes) alone, shape [{batch}]")
    if p.shape != (batch,):
        raise CheckFailed(f"the result has shape {tuple(p.shape)}; return one P(Yes) per row, "
                          f"shape [{batch}]")
    return p


def _wrong_answers(logits, mask, yes_id, no_id) -> list[tuple[torch.Tensor, str]]:
    """What the usual mistakes return on this case, each with what to say about it."""
    batch, time, _ = logits.shape
    rows = torch.arange(batch)
    mask = mask.bool()
    last = torch.where(mask, torch.arange(time), -1).amax(1)
    first = torch.where(mask, torch.arange(time), time).amin(1)
    lengths_minus_one = mask.sum(1) - 1

    def pair(index):
        return logits[rows, index][:, [yes_id, no_id]]

    right = pair(last)
    wrong = [
        (right.softmax(-1)[:, 1], "you returned P(No): the Yes column comes first, softmax(...)"
                                  "[:, 0] with the logits ordered [yes_id, no_id]"),
        (right[:, 0], "you returned the Yes logit, not a probability: apply a softmax over the "
                      "(Yes, No) pair"),
        (right[:, 0] - right[:, 1], "you returned the log-odds z_yes - z_no: "
                                    "sigmoid(z_yes - z_no) turns it into P(Yes)"),
        (torch.sigmoid(right[:, 0]), "sigmoid of the Yes logit alone ignores the No logit: "
                                     "softmax over the two logits, or sigmoid(z_yes - z_no)"),
        (logits[rows, last].softmax(-1)[:, yes_id],
         "you took a softmax over the whole vocabulary: ShieldGemma's score is the softmax over "
         "just the two logits (Yes, No), so the other tokens' mass does not count"),
        (right.log_softmax(-1)[:, 0], "you returned log P(Yes): take softmax, not log_softmax"),
        (pair(last[:1].expand(batch)).softmax(-1)[:, 0],
         "every row was read at row 0's last real token (the DevFest 2024 codelab's bug): rows "
         "of other lengths must be read at their own last real token"),
        (pair(torch.full((batch,), time - 1)).softmax(-1)[:, 0],
         "you read the last column, logits[:, -1]: with right padding that is a padding token "
         "for every row shorter than the longest; read each row at its last real token"),
        (pair(first).softmax(-1)[:, 0], "you read each row's first real token; the answer "
                                        "comes after the last one"),
        (pair(lengths_minus_one.clamp(0, time - 1)).softmax(-1)[:, 0],
         "you read position (number of real tokens - 1): that is the last real token only "
         "with right padding; with left padding the real tokens end at the last column. Find "
         "the last position where padding_mask is 1"),
    ]
    return wrong


def _compare_probabilities(yes_probability, logits, mask, yes_id, no_id, what: str) -> None:
    expected = reference_yes_probability(logits, mask, yes_id, no_id)
    got = _as_probabilities(
        yes_probability(logits.clone(), mask.clone(), yes_id, no_id), len(logits))
    if torch.allclose(got, expected, atol=1e-5):
        return
    if not torch.isfinite(got).all():
        raise CheckFailed(f"{what}: some results are nan or inf")
    for answer, message in _wrong_answers(logits, mask, yes_id, no_id):
        if torch.allclose(got, answer, atol=1e-5):
            raise CheckFailed(f"{what}: {message}")
    raise CheckFailed(f"{what}: got {[round(v, 4) for v in got.tolist()]}, expected "
                      f"{[round(v, 4) for v in expected.tolist()]}")


@yes_exercise.check("returns one probability per row")
def _yes_shape(yes_probability):
    logits, mask, yes_id, no_id = random_case(1, [6, 6, 6])
    p = _as_probabilities(yes_probability(logits, mask, yes_id, no_id), 3)
    if (p < 0).any() or (p > 1).any():
        raise CheckFailed(f"got {[round(v, 3) for v in p.tolist()]}: not probabilities in [0, "
                          f"1]; apply a softmax over the (Yes, No) logits")


@yes_exercise.check("no padding: softmax over the Yes and No logits at the last token")
def _yes_no_padding(yes_probability):
    for seed in (2, 3):
        case = random_case(seed, [7, 7, 7, 7])
        _compare_probabilities(yes_probability, *case, what=f"4 rows of 7 tokens (seed {seed})")


@yes_exercise.check("right padding: each row is read at its own last real token")
def _yes_right_padding(yes_probability):
    for seed, lengths in ((4, [5, 9, 3, 7]), (5, [2, 6, 6, 1, 4])):
        case = random_case(seed, lengths)
        _compare_probabilities(yes_probability, *case,
                               what=f"rows of {lengths} tokens padded on the right")


@yes_exercise.check("left padding: each row is read at its own last real token")
def _yes_left_padding(yes_probability):
    for seed, lengths in ((6, [5, 9, 3, 7]), (7, [8, 2, 5])):
        case = random_case(seed, lengths, left=True)
        _compare_probabilities(yes_probability, *case,
                               what=f"rows of {lengths} tokens padded on the left")


@yes_exercise.check("large logits give probabilities, not nan")
def _yes_large_logits(yes_probability):
    logits, mask, yes_id, no_id = random_case(8, [4, 6, 3], scale=1.0)
    logits[:, :, yes_id] += 120.0  # exp(120) overflows float32
    logits[:, :, no_id] += 118.0 + 4 * torch.rand(logits.shape[:2],
                                                  generator=torch.Generator().manual_seed(8))
    got = _as_probabilities(yes_probability(logits, mask, yes_id, no_id), 3)
    if not torch.isfinite(got).all():
        raise CheckFailed("with logits around 120, exp(z) overflows float32 and the result is "
                          "nan: use torch.softmax over the two logits (it subtracts the "
                          "largest first), or torch.sigmoid(z_yes - z_no)")
    _compare_probabilities(yes_probability, logits, mask, yes_id, no_id,
                           what="logits around 120")
