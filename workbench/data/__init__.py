"""Images and small data sets, loaded and validated in one place."""

from workbench.data.digits import load_digits_split
from workbench.data.images import (
    LABELLED_PHOTOS,
    SAMPLE_PHOTOS,
    load_image,
    photo_batch,
    sample_image,
    to_pil,
)

__all__ = ["LABELLED_PHOTOS", "SAMPLE_PHOTOS", "load_digits_split", "load_image", "photo_batch",
           "sample_image", "to_pil"]
