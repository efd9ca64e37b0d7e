"""ShieldGemma safety scoring: harm types, policy texts and prompt templates.

Importing this package is cheap: no torch, keras or tensorflow.
"""

from workbench.safety.policies import (POLICIES, POLICY_NAMES, HarmType, UseCase,
                                       parse_harm_type, policy_text)
from workbench.safety.prompts import PromptParts, make_prompt, prompt_parts

__all__ = ["POLICIES", "POLICY_NAMES", "HarmType", "PromptParts", "UseCase", "make_prompt",
           "parse_harm_type", "policy_text", "prompt_parts"]
