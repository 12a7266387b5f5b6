"""Sample-quality metrics: mode coverage for the 2-D mixtures, FID/KID and class coverage for digits,
Inception FID/KID/IS from a local weights file, precision/recall/density/coverage in any feature space
(:mod:`alttrain.metrics.prdc`).

The image metrics are imported on first use: torchmetrics takes seconds to import, and a run on
2-D data never needs it.
"""

from typing import Any

from alttrain.metrics.modes import mode_metrics

_LAZY = {"DigitsClassifier": "alttrain.metrics.classifier", "load_digits_classifier": "alttrain.metrics.classifier",
         "ImageMetrics": "alttrain.metrics.images", "InceptionMetrics": "alttrain.metrics.inception",
         "load_inception": "alttrain.metrics.inception"}

__all__ = ["DigitsClassifier", "ImageMetrics", "InceptionMetrics", "load_digits_classifier", "load_inception",
           "mode_metrics"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
