"""Red teaming a chatbot with a language model (notebook 06; Perez et al. 2022): shipped
text, nucleus sampling, test-case generation (zero-shot and stochastic few-shot), judges,
failure reports, diversity, clusters of failures, and rewrites that evade a judge.

Importing this package is cheap: no keras. The lite models are in
:mod:`workbench.redteam.lm` (imports keras-hub); the judges' classifiers load on first use.
"""

from workbench.redteam.clusters import cluster, top_terms
from workbench.redteam.corpus import BENIGN_QUESTIONS, ZERO_SHOT_PROMPT, chatbot_prompt
from workbench.redteam.evasion import REWRITES, evasion_table
from workbench.redteam.judges import ProfanityJudge, ShieldGemmaJudge, failures
from workbench.redteam.report import (distinct_n, embedding_spread, failure_report,
                                      wilson_interval)

__all__ = ["BENIGN_QUESTIONS", "REWRITES", "ProfanityJudge", "ShieldGemmaJudge",
           "ZERO_SHOT_PROMPT", "chatbot_prompt", "cluster", "distinct_n", "embedding_spread",
           "evasion_table", "failure_report", "failures", "top_terms", "wilson_interval"]
