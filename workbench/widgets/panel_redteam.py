"""Notebook 06's panels: a live threshold over judged replies, and a red-team round to rerun.

* :class:`FailurePanel`: one slider, the judge's threshold. For the judged cases it shows
  how many fail (score over the threshold), the failure rate with its 95% Wilson interval,
  and the highest-scored failing cases. Every frame is HTML built once, up front (one per
  stop of the slider): a move is a lookup and one widget assignment.
* :class:`RoundPanel`: a temperature and a count slider and a button; the button runs a
  zero-shot round (the red LM's questions, the chatbot's replies, the judge's scores) with
  those settings and shows its failure report.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np

from workbench.redteam.report import failure_report

THRESHOLDS = tuple(round(i * 0.05, 6) for i in range(1, 20))  # 0.05 .. 0.95
WORST = 5


def _cases_html(worst: list[dict], threshold: float) -> str:
    rows = "".join(
        f"<tr><td style='padding:2px 6px'>{c['score']:.2f}</td>"
        f"<td style='padding:2px 6px'>{html.escape(c['question'])}</td>"
        f"<td style='padding:2px 6px;color:#b2182b'>{html.escape(c['reply'])}</td></tr>"
        for c in worst if c["score"] > threshold)
    if not rows:
        return "<div><i>no reply is over this threshold</i></div>"
    return ("<table style='font-size:12px'><tr><th>score</th><th>question</th><th>reply</th>"
            f"</tr>{rows}</table>")


class FailurePanel:
    """The threshold panel of the module's docstring over ``questions``, ``replies`` and the
    judge's ``scores`` (one each per case). ``.widget`` to display, ``.controls["threshold"]``
    the slider, ``.report`` the :func:`~workbench.redteam.report.failure_report` shown."""

    def __init__(self, questions: Sequence[str], replies: Sequence[str],
                 scores: Sequence[float], *, thresholds: Sequence[float] = THRESHOLDS,
                 threshold: float = 0.5, judge: str = "the judge"):
        import ipywidgets as w

        self.thresholds = [float(t) for t in thresholds]
        if not self.thresholds or any(not 0 <= t <= 1 for t in self.thresholds):
            raise ValueError(f"thresholds must be in [0, 1], got {list(thresholds)!r}")
        self.reports = {t: failure_report(questions, replies, scores, threshold=t,
                                          worst=len(scores)) for t in self.thresholds}
        self.frames = {t: self._frame(r, judge) for t, r in self.reports.items()}
        start = min(self.thresholds, key=lambda t: abs(t - threshold))
        self.controls = {"threshold": w.SelectionSlider(
            options=[(f"{t:.2f}", t) for t in self.thresholds], value=start,
            description="threshold", continuous_update=True)}
        self.view = w.HTML()
        self.controls["threshold"].observe(lambda change: self._show(), names="value")
        self.widget = w.VBox([self.controls["threshold"], self.view])
        self._show()

    @staticmethod
    def _frame(report: dict, judge: str) -> str:
        low, high = report["interval"]
        head = (f"<div><b>{report['failures']}</b> of {report['cases']} replies scored over "
                f"{report['threshold']:.2f} by {html.escape(judge)}: failure rate <b>"
                f"{report['failure_rate']:.1%}</b> (95% interval {low:.1%} to {high:.1%})"
                f"</div>")
        return head + _cases_html(report["worst"][:WORST], report["threshold"])

    def _show(self) -> None:
        self.view.value = self.frames[self.controls["threshold"].value]

    @property
    def report(self) -> dict:
        report = self.reports[self.controls["threshold"].value]
        return {**report, "worst": report["worst"][:WORST]}


class RoundPanel:
    """A zero-shot round on demand (see the module's docstring). ``run(temperature, count)``
    -> ``(questions, replies, scores)``, e.g. a ``functools.partial`` over
    :func:`workbench.redteam.rounds.judge_round`'s pieces. ``.widget`` to display,
    ``.controls`` the sliders and the button, ``.report`` the last round's report."""

    def __init__(self, run, *, threshold: float = 0.5, temperature: float = 1.0,
                 count: int = 50):
        import ipywidgets as w

        self.run, self.threshold, self.report = run, float(threshold), None
        self.controls = {
            "temperature": w.FloatSlider(value=temperature, min=0.5, max=1.5, step=0.1,
                                         description="temperature", continuous_update=False),
            "count": w.IntSlider(value=count, min=10, max=200, step=10, description="count",
                                 continuous_update=False),
            "run": w.Button(description="red-team again")}
        self.view = w.HTML("<i>press the button to run a round</i>")
        self.controls["run"].on_click(lambda button: self.go())
        self.widget = w.VBox([w.HBox([self.controls["temperature"], self.controls["count"],
                                      self.controls["run"]]), self.view])

    def go(self) -> dict:
        """Run a round with the sliders' settings and show it; returns its report."""
        temperature, count = self.controls["temperature"].value, self.controls["count"].value
        try:
            questions, replies, scores = self.run(temperature, count)
            self.report = failure_report(questions, replies, np.asarray(scores),
                                         threshold=self.threshold, worst=WORST)
        except ValueError as err:
            self.view.value = f"<div style='color:#b2182b'>{html.escape(str(err))}</div>"
            return {}
        low, high = self.report["interval"]
        self.view.value = (
            f"<div>temperature {temperature:.1f}, {count} samples: {self.report['cases']} "
            f"questions, <b>{self.report['failures']}</b> failures (rate "
            f"{self.report['failure_rate']:.1%}, 95% interval {low:.1%} to {high:.1%})</div>"
            + _cases_html(self.report["worst"], -1.0))
        return self.report


def failure_panel(questions, replies, scores, **kwargs) -> FailurePanel:
    """The failure-threshold panel; keywords as :class:`FailurePanel`."""
    return FailurePanel(questions, replies, scores, **kwargs)


def round_panel(run, **kwargs) -> RoundPanel:
    """The round panel over ``run(temperature, count)``; keywords as :class:`RoundPanel`."""
    return RoundPanel(run, **kwargs)
