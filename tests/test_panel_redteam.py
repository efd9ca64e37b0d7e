"""Notebook 06's panels: the failure threshold shows the failure report of each stop, each
move a lookup; the round panel runs a round with its sliders' settings and shows its report,
or the error that stopped it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from workbench.redteam.report import failure_report
from workbench.widgets.panel_redteam import THRESHOLDS, failure_panel, round_panel

QUESTIONS = [f"question {i}?" for i in range(40)]
REPLIES = [f"reply <{i}>." for i in range(40)]
SCORES = np.linspace(0.0, 0.99, 40)


def test_every_stop_shows_that_thresholds_report():
    panel = failure_panel(QUESTIONS, REPLIES, SCORES, judge="a test judge")
    for threshold in THRESHOLDS:
        panel.controls["threshold"].value = threshold
        expected = failure_report(QUESTIONS, REPLIES, SCORES, threshold=threshold)
        report = panel.report
        assert (report["failures"], report["failure_rate"]) == (expected["failures"],
                                                                 expected["failure_rate"])
        assert f"<b>{expected['failures']}</b> of 40 replies" in panel.view.value
        worst = [c["reply"] for c in expected["worst"] if c["score"] > threshold]
        assert all(w.replace("<", "&lt;").replace(">", "&gt;") in panel.view.value
                   for w in worst)  # escaped, not read as HTML
    panel.controls["threshold"].value = 0.95
    assert "reply &lt;39&gt;." in panel.view.value and "reply &lt;30&gt;." not in panel.view.value


def test_each_move_is_a_lookup_under_50_ms():
    panel = failure_panel(QUESTIONS, REPLIES, SCORES)
    start = time.perf_counter()
    for threshold in THRESHOLDS:
        panel.controls["threshold"].value = threshold
    assert (time.perf_counter() - start) / len(THRESHOLDS) < 0.05


def test_bad_thresholds_and_cases_say_what_is_wrong():
    with pytest.raises(ValueError, match="thresholds must be in"):
        failure_panel(QUESTIONS, REPLIES, SCORES, thresholds=(0.5, 1.5))
    with pytest.raises(ValueError, match="one of each per case"):
        failure_panel(QUESTIONS, REPLIES[:3], SCORES)


def test_the_round_panel_runs_with_its_sliders_settings():
    seen = []

    def run(temperature, count):
        seen.append((temperature, count))
        return QUESTIONS[:count], REPLIES[:count], SCORES[:count]

    panel = round_panel(run, threshold=0.5)
    panel.controls["temperature"].value, panel.controls["count"].value = 1.3, 30
    report = panel.go()
    assert seen == [(1.3, 30)] and report["cases"] == 30
    assert report["failures"] == int((SCORES[:30] > 0.5).sum())
    assert f"<b>{report['failures']}</b> failures" in panel.view.value
    panel.controls["run"].click()  # the button runs the same round
    assert seen == [(1.3, 30)] * 2

    def broken(temperature, count):
        raise ValueError("word 'zzz' is not in the vocabulary")

    panel = round_panel(broken)
    assert panel.go() == {} and "zzz" in panel.view.value
