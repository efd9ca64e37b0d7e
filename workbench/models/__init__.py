"""Model registry: a name gives a classifier that takes [0, 1] images and returns logits.

Every model carries its own normalisation (a :class:`Normalize` first layer), so epsilon is
always in pixel units, and its config travels with it, the way timm keeps ``pretrained_cfg``::

    model = load_classifier("mobilenet_v2")          # lite or full, from $WORKBENCH_MODE
    model.categories[model(x).argmax(1)]             # x: (N, 3, 224, 224) in [0, 1]
    print(model.source)                              # which weights were loaded, and why
"""

from workbench.models.registry import (
    MODEL_CONFIGS,
    ModelConfig,
    WeightsUnavailableError,
    imagenet_categories,
    load_classifier,
    weights_status,
)

__all__ = [
    "MODEL_CONFIGS",
    "Classifier",
    "ClassifierConfig",
    "ModelConfig",
    "Normalize",
    "WeightsUnavailableError",
    "imagenet_categories",
    "load_classifier",
    "weights_status",
]


def __getattr__(name):
    # The nn.Module classes need torch; importing them lazily keeps `workbench doctor` fast.
    if name in ("Classifier", "ClassifierConfig", "Normalize"):
        from workbench.models import layers

        return getattr(layers, name)
    raise AttributeError(f"module 'workbench.models' has no attribute {name!r}")
