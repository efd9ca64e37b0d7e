"""The experiments ``workbench experiment NAME`` runs, one row each.

A row names, by dotted path, the function that runs the experiment and the one that turns its
result into a text table, so that reading the table imports neither torch nor keras (parsing
the command line stays fast); :meth:`Experiment.functions` imports them when the experiment
runs. A new experiment is one more row of ``EXPERIMENTS``: the command's choices and help come
from here.

The run function is called with keywords only: ``cache`` (bool: load and store trained
models), ``progress`` (bool: progress bars) and, when the user gives ``--seeds``, ``seeds`` (a
tuple of ints; otherwise its own default). It returns a JSON-serialisable dict
``{"rows": [...], "seeds": [...], "std": ..., ...}`` (see docs/architecture.md, contracts).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Experiment:
    name: str
    run: str  # dotted path of the run function
    format: str  # dotted path of result dict -> str
    help: str  # one line for `workbench experiment --help`

    def functions(self) -> tuple[Callable[..., dict], Callable[[dict], str]]:
        """The run and format functions, imported now."""
        return _resolve(self.run), _resolve(self.format)


def _resolve(dotted: str) -> Callable:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("advprop", "workbench.experiments.run_advprop_experiment",
               "workbench.experiments.format_table",
               "notebook 03: standard vs AdvProp vs PGD-AT digits models, clean and PGD-10 "
               "accuracy"),
    Experiment("shieldgemma", "workbench.safety.evaluation.run_shieldgemma_experiment",
               "workbench.safety.evaluation.format_experiment",
               "notebook 01: lite ShieldGemma's AUROC per harm type on both held-out sets"),
    Experiment("lat-vision", "workbench.lat.experiment.run_lat_experiment",
               "workbench.lat.experiment.format_lat_table",
               "notebook 04: a trojaned digits ResNet fine-tuned by FT, RLP, AT and LAT: clean "
               "accuracy, trojan success, held-out attacks, and LAT's layer x radius sweep"),
    Experiment("lat-llm", "workbench.lat.llm_experiment.run_lat_llm_experiment",
               "workbench.lat.llm_experiment.format_lat_llm_table",
               "notebook 05: a lite Llama with keyword backdoors fine-tuned by FT, RLP, AT "
               "and LAT: clean exact match, backdoor success, and the layer x radius sweep"),
    Experiment("redteam", "workbench.redteam.experiment.run_redteam_experiment",
               "workbench.redteam.experiment.format_redteam_table",
               "notebook 06: a red LM against the lite chatbot, zero-shot vs few-shot failure "
               "rate and diversity; fine-tuned on its failures: held-out offensive rate, benign "
               "answers kept"),
    Experiment("defenses", "workbench.defense_experiment.run_defenses_experiment",
               "workbench.defense_experiment.format_defenses_table",
               "notebook 07: feature squeezing, distillation, reconstruction and PGD-AT under "
               "naive and adaptive attacks, the squeezing detector, and sanity checks"),
)}


def get_experiment(name: str) -> Experiment:
    """The row called ``name``; ValueError listing the known ones otherwise."""
    if name not in EXPERIMENTS:
        raise ValueError(f"no experiment named {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]


__all__ = ["EXPERIMENTS", "Experiment", "get_experiment"]
