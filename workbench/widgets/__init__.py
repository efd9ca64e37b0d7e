"""ipywidgets panels: thin layers over the pure functions in attacks/ and viz/."""

from workbench.widgets.panel_fgsm import FGSMPanel, FGSMPanelResult, fgsm_panel

__all__ = ["FGSMPanel", "FGSMPanelResult", "fgsm_panel"]
