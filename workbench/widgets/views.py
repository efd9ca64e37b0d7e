"""What every attack panel shows: the image before and after, the perturbation, the top-5 lists
and a status line. Panels own their controls and call :meth:`AttackView.show`."""

from __future__ import annotations

import torch

from workbench.attacks.core import check_batch, check_labels
from workbench.viz import Prediction, amplified_perturbation, png_bytes, top_k, top_k_html


def single_image(model, image) -> torch.Tensor:
    """Validate one image (3, H, W) or (1, 3, H, W) in [0, 1]; return it as (1, 3, H, W) on
    the model's device. ValueError says what is wrong."""
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or (
            image.dim() == 4 and image.shape[0] != 1):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)
        raise ValueError(f"the panel shows one image: pass a tensor (3, H, W) in [0, 1], "
                         f"got {shape}")
    x, _ = check_batch(model, image.reshape(1, *image.shape[-3:]), torch.zeros(1, dtype=torch.long))
    return x


def class_options(categories) -> list[tuple[str, int]]:
    """Dropdown options "id: name" -> id for every class."""
    return [(f"{i}: {name}", i) for i, name in enumerate(categories)]


class AttackView:
    """Widgets for one image under attack.

    Built once from the clean image and its top-5; :meth:`show` redraws the adversarial side:
    two PNG encodings and some HTML, no matplotlib.
    """

    def __init__(self, model, x: torch.Tensor, label: int | None):
        import ipywidgets as w

        with torch.no_grad():
            clean_probs = model(x).float().softmax(dim=1)[0]
        self.categories = model.categories
        self.label = int(clean_probs.argmax()) if label is None else int(label)
        check_labels(torch.tensor([self.label]), len(self.categories), name="label")
        self.top5_clean = top_k(clean_probs, self.categories)
        self.x = x
        size = dict(width="224px", height="224px")
        self.images = {
            "original": w.Image(value=png_bytes(x), format="png", layout=w.Layout(**size)),
            "perturbation": w.Image(format="png", layout=w.Layout(**size)),
            "adversarial": w.Image(format="png", layout=w.Layout(**size)),
        }
        self.bars_clean = w.HTML(top_k_html("top-5 before", self.top5_clean, label=self.label))
        self.bars_adv = w.HTML()
        self.status = w.HTML()
        captions = {"original": "original", "perturbation": "perturbation (amplified)",
                    "adversarial": "adversarial"}
        columns = [w.VBox([w.HTML(f"<b>{captions[k]}</b>"), image])
                   for k, image in self.images.items()]
        self.widget = w.VBox([self.status, w.HBox(columns),
                              w.HBox([self.bars_clean, self.bars_adv])])

    def runner_up(self) -> int:
        """The most probable class other than the label: a natural default target."""
        return next(p.index for p in self.top5_clean if p.index != self.label)

    def show(self, x_adv: torch.Tensor, probs: torch.Tensor, *, scale: float,
             target: int | None, status: str) -> tuple[list[Prediction], bool]:
        """Show x_adv (1, 3, H, W) and its probabilities (num_classes,); the perturbation is
        amplified so that ``scale`` maps to white. Returns (top-5, attack succeeded)."""
        top5 = top_k(probs, self.categories)
        predicted = top5[0].index
        success = predicted == target if target is not None else predicted != self.label
        goal = (f"reach '{self.categories[target]}'" if target is not None
                else f"leave '{self.categories[self.label]}'")
        verdict = "<span style='color:#c62828'>fooled</span>" if success else "not fooled yet"
        self.images["perturbation"].value = png_bytes(amplified_perturbation(self.x, x_adv, scale))
        self.images["adversarial"].value = png_bytes(x_adv)
        self.bars_adv.value = top_k_html("top-5 after", top5, label=self.label, target=target)
        self.status.value = (f"{status}; goal: {goal}; now '{top5[0].name}' "
                             f"({100 * top5[0].prob:.1f}%): {verdict}")
        return top5, success
