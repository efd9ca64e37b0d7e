"""ipywidgets panels: thin layers over the pure functions in attacks/, safety/ and viz/."""

from workbench.widgets.panel_defenses import DefensesPanel, DefensesPanelResult, defenses_panel
from workbench.widgets.panel_fgsm import FGSMPanel, FGSMPanelResult, fgsm_panel
from workbench.widgets.panel_lat import LatentPanel, LatentPanelResult, lat_panel
from workbench.widgets.panel_pgd import PGDPanel, PGDPanelResult, pgd_panel
from workbench.widgets.panel_redteam import FailurePanel, RoundPanel, failure_panel, round_panel
from workbench.widgets.panel_safety import (LiveScoresPanel, ThresholdPanel, ThresholdResult,
                                            live_scores_panel, threshold_panel)

__all__ = ["DefensesPanel", "DefensesPanelResult", "FGSMPanel", "FGSMPanelResult", "FailurePanel",
           "LatentPanel", "LatentPanelResult", "LiveScoresPanel", "PGDPanel", "PGDPanelResult",
           "RoundPanel", "ThresholdPanel", "ThresholdResult", "defenses_panel", "failure_panel",
           "fgsm_panel", "lat_panel", "live_scores_panel", "pgd_panel", "round_panel",
           "threshold_panel"]
