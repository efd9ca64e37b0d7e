"""ShieldGemma safety scoring: harm types, policy texts, prompt templates and Yes/No scorers.

Importing this package is cheap: no torch, keras or tensorflow. ``load_scorer`` imports keras
(on the torch backend) when it is called.
"""

from workbench.safety.evaluation import auroc, auroc_by_harm_type, run_shieldgemma_experiment
from workbench.safety.examples import SafetyExample, load_examples, template_split
from workbench.safety.loading import load_scorer
from workbench.safety.policies import (POLICIES, POLICY_NAMES, HarmType, UseCase,
                                       parse_harm_type, policy_text)
from workbench.safety.prompts import (ParsedPrompt, PromptParts, make_prompt,
                                      neutralise_markers, parse_prompt, prompt_parts)
from workbench.safety.scoring import (SHIELDGEMMA_PRESETS, SafetyScorer,
                                      ShieldGemmaUnavailableError, last_real_index,
                                      yes_probability)

__all__ = ["POLICIES", "POLICY_NAMES", "SHIELDGEMMA_PRESETS", "HarmType", "ParsedPrompt",
           "PromptParts", "SafetyExample", "SafetyScorer", "ShieldGemmaUnavailableError",
           "UseCase", "auroc", "auroc_by_harm_type", "last_real_index", "load_examples",
           "load_scorer", "make_prompt", "neutralise_markers", "parse_harm_type", "parse_prompt",
           "policy_text", "prompt_parts", "run_shieldgemma_experiment", "template_split",
           "yes_probability"]
