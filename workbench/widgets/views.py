"""What every attack panel shows: the image before and after, the perturbation, the top-5 lists
and a status line. Panels own their controls and call :meth:`AttackView.show`, or, when a
control sweeps precomputed attacks, build one :class:`Frame` per control position with
:meth:`AttackView.frame` (tensor work and encoding, once) and show it with
:meth:`AttackView.show_frame` (widget assignments only, so a slider move is a lookup)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.attacks.core import check_batch, check_labels
from workbench.viz import (Prediction, amplified_perturbation, jpeg_bytes, png_bytes, top_k,
                           top_k_html)


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


def enlarged_png(x: torch.Tensor, factor: int) -> bytes:
    """One image (1, C, H, W) or (C, H, W), C 1 or 3, enlarged ``factor`` times by nearest
    neighbour (pixels kept sharp), as PNG bytes."""
    image = x.reshape(x.shape[-3:]).detach().float().cpu()
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    image = image.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    return png_bytes(image)


def class_options(categories) -> list[tuple[str, int]]:
    """Dropdown options "id: name" -> id for every class."""
    return [(f"{i}: {name}", i) for i, name in enumerate(categories)]


@dataclass(frozen=True)
class Frame:
    """What one control position shows, computed once.

    ``adversarial`` and ``perturbation`` are encoded images (format in
    :attr:`AttackView.image_format`); ``top5`` the adversarial image's five most probable
    classes; ``success`` whether the attack reached its goal (prediction is the target when
    targeted, is not the label otherwise); ``status`` the status line's HTML; ``top5_html``
    the "top-5 after" bars' HTML (built by :meth:`AttackView.frame`; when empty,
    :meth:`AttackView.show_frame` draws the bars from ``top5`` without a target colour).
    """

    adversarial: bytes
    perturbation: bytes
    top5: list[Prediction]
    success: bool
    status: str
    top5_html: str = ""


class AttackView:
    """Widgets for one image under attack.

    Built once from the clean image and its top-5 (the clean image shown as PNG, encoded once).
    The adversarial side is a :class:`Frame`: :meth:`frame` computes one (top-5, verdict,
    two JPEG encodings, HTML), :meth:`show_frame` puts it on screen, :meth:`show` does both.
    No matplotlib.
    """

    image_format = "jpeg"  # of Frame.adversarial and Frame.perturbation

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
            "perturbation": w.Image(format=self.image_format, layout=w.Layout(**size)),
            "adversarial": w.Image(format=self.image_format, layout=w.Layout(**size)),
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

    def frame(self, x_adv: torch.Tensor, probs: torch.Tensor, *, scale: float,
              target: int | None, status: str) -> Frame:
        """Everything the adversarial side shows for one attack result, computed now.

        Args:
            x_adv: the adversarial image, (1, 3, H, W) or (3, H, W), float in [0, 1], the
                clean image's size.
            probs: its class probabilities, (num_classes,) (or (1, num_classes)), in [0, 1].
            scale: the perturbation size, in pixel units, drawn as white (``-scale`` black,
                0 mid grey); for an L-inf attack its eps. 0 draws a grey square.
            target: the target class id of a targeted attack, None when untargeted.
            status: what produced it, e.g. ``"eps = 2/255"``; the status line adds the goal,
                the new prediction and the verdict.
        """
        x_adv = x_adv.detach().reshape(1, *x_adv.shape[-3:]).to(self.x.device)
        top5 = top_k(probs, self.categories)
        predicted = top5[0].index
        success = predicted == target if target is not None else predicted != self.label
        goal = (f"reach '{self.categories[target]}'" if target is not None
                else f"leave '{self.categories[self.label]}'")
        verdict = "<span style='color:#c62828'>fooled</span>" if success else "not fooled yet"
        return Frame(
            adversarial=jpeg_bytes(x_adv),
            perturbation=jpeg_bytes(amplified_perturbation(self.x, x_adv, scale)),
            top5=top5,
            success=success,
            status=(f"{status}; goal: {goal}; now '{top5[0].name}' "
                    f"({100 * top5[0].prob:.1f}%): {verdict}"),
            top5_html=top_k_html("top-5 after", top5, label=self.label, target=target),
        )

    def show_frame(self, frame: Frame) -> None:
        """Put a precomputed frame on screen: four widget assignments, no tensor work and no
        encoding (the widgets skip values that did not change)."""
        self.images["perturbation"].value = frame.perturbation
        self.images["adversarial"].value = frame.adversarial
        self.bars_adv.value = frame.top5_html or top_k_html("top-5 after", frame.top5,
                                                            label=self.label)
        self.status.value = frame.status

    def show(self, x_adv: torch.Tensor, probs: torch.Tensor, *, scale: float,
             target: int | None, status: str) -> tuple[list[Prediction], bool]:
        """Show x_adv (1, 3, H, W) or (3, H, W) and its probabilities (num_classes,): the same
        as ``show_frame(frame(...))`` (see :meth:`frame` for the arguments). Returns
        (top-5, attack succeeded)."""
        frame = self.frame(x_adv, probs, scale=scale, target=target, status=status)
        self.show_frame(frame)
        return frame.top5, frame.success
