"""The panels of notebook 01 (ShieldGemma safety scoring).

* :func:`threshold_panel`: a threshold slider over scores computed once; each move only
  compares the scores with the threshold and redraws an HTML table of which prompts would be
  blocked. No model runs.
* :func:`live_scores_panel`: a text box (and an optional chatbot response); on Enter or the
  button, the prompt is scored under the four policies and shown as bars.

Both draw HTML only (no matplotlib, no 8-only traits), so they work in ipywidgets 7 and 8.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from workbench.safety import HarmType, SafetyExample

BLOCK_COLOUR, ALLOW_COLOUR, MISTAKE_BACKGROUND = "#c62828", "#2e7d32", "#fff3e0"


def _short(text: str | None, limit: int = 90) -> str:
    if text is None:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


@dataclass
class ThresholdResult:
    """Decisions at ``threshold``: ``blocked[i]`` is True when score i >= threshold; the counts
    compare them with the labels (1 = violates the policy)."""

    threshold: float
    blocked: np.ndarray
    true_positives: int   # violating and blocked
    false_positives: int  # harmless and blocked
    false_negatives: int  # violating and allowed
    true_negatives: int   # harmless and allowed


def decide(scores: Sequence[float], labels: Sequence[int], threshold: float) -> ThresholdResult:
    """Block every score >= ``threshold`` and count the four outcomes against ``labels``."""
    scores = np.asarray(scores, dtype="float64")
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    blocked = scores >= threshold
    return ThresholdResult(float(threshold), blocked, int((blocked & labels).sum()),
                           int((blocked & ~labels).sum()), int((~blocked & labels).sum()),
                           int((~blocked & ~labels).sum()))


def decisions_html(scores: Sequence[float], examples: Sequence[SafetyExample],
                   result: ThresholdResult) -> str:
    """One table row per example: policy, content, label, score, decision; a wrong decision
    is shaded."""
    rows = []
    for score, row, blocked in zip(scores, examples, result.blocked):
        wrong = bool(blocked) != bool(row.label)
        decision = (f"<b style='color:{BLOCK_COLOUR}'>blocked</b>" if blocked
                    else f"<span style='color:{ALLOW_COLOUR}'>allowed</span>")
        content = html.escape(_short(row.user_content))
        if row.model_content is not None:
            content += ("<br><span style='color:#555'>&rarr; response: "
                        f"{html.escape(_short(row.model_content))}</span>")
        rows.append(
            f"<tr style='background:{MISTAKE_BACKGROUND if wrong else 'transparent'}'>"
            f"<td style='padding:2px 6px'>{row.harm_type.value}</td>"
            f"<td style='padding:2px 6px;text-align:left'>{content}</td>"
            f"<td style='padding:2px 6px'>{'Yes' if row.label else 'No'}</td>"
            f"<td style='padding:2px 6px;text-align:right'>{float(score):.3f}</td>"
            f"<td style='padding:2px 6px'>{decision}</td></tr>")
    header = "".join(f"<th style='padding:2px 6px'>{h}</th>" for h in
                     ("policy", "content", "violates?", "P(Yes)", "decision"))
    return (f"<table style='font-size:12px;border-collapse:collapse'><tr>{header}</tr>"
            f"{''.join(rows)}</table>")


def summary_html(result: ThresholdResult) -> str:
    """One line: how many were blocked, and the two kinds of mistake."""
    violating = result.true_positives + result.false_negatives
    harmless = result.false_positives + result.true_negatives
    return (f"<b>threshold {result.threshold:.2f}</b>: blocks "
            f"{result.true_positives} of {violating} violating and "
            f"{result.false_positives} of {harmless} harmless; misses "
            f"{result.false_negatives}. Shaded rows are wrong decisions.")


class ThresholdPanel:
    """A threshold slider over precomputed scores.

    ``.controls["threshold"]`` is the FloatSlider, ``.result`` the latest
    :class:`ThresholdResult`, recomputed whenever the slider's ``.value`` changes; ``.table``
    and ``.summary`` are the HTML widgets it redraws.
    """

    def __init__(self, scores: Sequence[float], examples: Sequence[SafetyExample],
                 threshold: float = 0.5):
        import ipywidgets as w

        self.scores = np.asarray(scores, dtype="float64")
        self.examples = list(examples)
        if len(self.scores) != len(self.examples):
            raise ValueError(f"{len(self.scores)} scores for {len(self.examples)} examples")
        self.labels = np.array([row.label for row in self.examples])
        self.controls = {"threshold": w.FloatSlider(
            value=threshold, min=0.0, max=1.0, step=0.01, description="threshold",
            readout_format=".2f", continuous_update=True)}
        self.summary, self.table = w.HTML(), w.HTML()
        self.widget = w.VBox([self.controls["threshold"], self.summary, self.table])
        self.controls["threshold"].observe(lambda change: self.update(), names="value")
        self.result: ThresholdResult | None = None
        self.update()

    def update(self) -> ThresholdResult:
        """Re-threshold the scores at the slider's value and redraw."""
        self.result = decide(self.scores, self.labels, float(self.controls["threshold"].value))
        self.summary.value = summary_html(self.result)
        self.table.value = decisions_html(self.scores, self.examples, self.result)
        return self.result


def threshold_panel(scores: Sequence[float], examples: Sequence[SafetyExample],
                    threshold: float = 0.5) -> ThresholdPanel:
    """A slider that shows which of ``examples`` (with their precomputed ``scores``) a filter
    blocking P(Yes) >= threshold would block. Display ``panel.widget``; drive it with
    ``panel.controls["threshold"].value``."""
    return ThresholdPanel(scores, examples, threshold)


def scores_html(scores: dict[HarmType, float], threshold: float) -> str:
    """P(Yes) per policy as bars; a score at or above ``threshold`` in red."""
    rows = []
    for harm, p in scores.items():
        colour = BLOCK_COLOUR if p >= threshold else "#1565c0"
        rows.append(
            f"<tr><td style='padding:1px 6px'>{harm.value}</td>"
            "<td style='width:200px;padding:1px 0'><div style='background:"
            f"{colour};height:12px;width:{max(1.0, 100 * p):.1f}%'></div></td>"
            f"<td style='padding:1px 6px;text-align:right'>{p:.3f}</td></tr>")
    return (f"<table style='font-size:12px'><tr><th></th><th>P(Yes)</th><th></th></tr>"
            f"{''.join(rows)}</table>")


class LiveScoresPanel:
    """Type a prompt (and optionally a chatbot response), get its four policy scores.

    ``.controls``: "prompt" and "response" (Text, scored on Enter or when the box loses
    focus; with ipywidgets 8 setting ``.value`` scores too) and "score" (a Button).
    ``.result`` is the latest ``{HarmType: P(Yes)}``, or None while the prompt box is empty;
    ``.output`` is the HTML widget showing it.
    """

    def __init__(self, scorer, *, prompt: str = "", threshold: float = 0.5):
        import ipywidgets as w

        self.scorer, self.threshold = scorer, threshold
        wide = w.Layout(width="640px")
        # Score on Enter (or leaving the box), not on every key. ipywidgets 8 (and late 7.x)
        # say so with continuous_update=False; a Text without that trait scores on_submit.
        on_enter = "continuous_update" in w.Text.class_trait_names()
        extra = {"continuous_update": False} if on_enter else {}
        self.controls = {
            "prompt": w.Text(value=prompt, description="prompt", layout=wide,
                             placeholder="type a user prompt, then Enter", **extra),
            "response": w.Text(value="", description="response", layout=wide,
                               placeholder="optional: a chatbot response to judge instead",
                               **extra),
            "score": w.Button(description="score", button_style="primary"),
        }
        self.output = w.HTML()
        for box in (self.controls["prompt"], self.controls["response"]):
            if on_enter:
                box.observe(lambda change: self.update(), names="value")
            else:
                box.on_submit(lambda sender: self.update())
        self.controls["score"].on_click(lambda button: self.update())
        c = self.controls
        self.widget = w.VBox([c["prompt"], w.HBox([c["response"], c["score"]]), self.output])
        self.result: dict[HarmType, float] | None = None
        self.update()

    def update(self) -> dict[HarmType, float] | None:
        """Score the boxes' text under the four policies and redraw."""
        user = self.controls["prompt"].value.strip()
        response = self.controls["response"].value.strip() or None
        if not user:
            self.result = None
            self.output.value = "<i>type a prompt to score it</i>"
            return None
        self.result = self.scorer.score_policies(user, response)
        what = "the chatbot response" if response else "the prompt"
        self.output.value = (f"<b>P(Yes) that {what} violates each policy</b> "
                             f"(red: at or above {self.threshold:.2f})"
                             + scores_html(self.result, self.threshold))
        return self.result


def live_scores_panel(scorer, *, prompt: str = "", threshold: float = 0.5) -> LiveScoresPanel:
    """A text box scored live by ``scorer`` under the four policies. Display ``panel.widget``;
    drive it with ``panel.controls["prompt"].value = "..."``."""
    return LiveScoresPanel(scorer, prompt=prompt, threshold=threshold)
