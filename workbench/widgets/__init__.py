"""ipywidgets panels: thin layers over the pure functions in attacks/ and viz/."""

from workbench.widgets.panel_fgsm import FGSMPanel, FGSMPanelResult, fgsm_panel
from workbench.widgets.panel_pgd import PGDPanel, PGDPanelResult, pgd_panel

__all__ = ["FGSMPanel", "FGSMPanelResult", "PGDPanel", "PGDPanelResult", "fgsm_panel",
           "pgd_panel"]
