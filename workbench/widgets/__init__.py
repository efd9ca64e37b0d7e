"""ipywidgets panels: thin layers over the pure functions in attacks/, safety/ and viz/."""

from workbench.widgets.panel_defenses import DefensesPanel, DefensesPanelResult, defenses_panel
from workbench.widgets.panel_fgsm import FGSMPanel, FGSMPanelResult, fgsm_panel
from workbench.widgets.panel_lat import LatentPanel, LatentPanelResult, lat_panel
from workbench.widgets.panel_pgd import PGDPanel, PGDPanelResult, pgd_panel
from workbench.widgets.panel_safety import (LiveScoresPanel, ThresholdPanel, ThresholdResult,
                                            live_scores_panel, threshold_panel)

__all__ = ["DefensesPanel", "DefensesPanelResult", "FGSMPanel", "FGSMPanelResult", "LatentPanel", "LatentPanelResult", "LiveScoresPanel",
           "PGDPanel", "PGDPanelResult", "ThresholdPanel", "ThresholdResult", "fgsm_panel",
           "lat_panel", "live_scores_panel", "pgd_panel", "threshold_panel", "defenses_panel"]
