"""Sample-quality metrics: mode coverage for the 2-D mixtures, FID/KID and class coverage for digits."""

from alttrain.metrics.classifier import DigitsClassifier, load_digits_classifier
from alttrain.metrics.images import ImageMetrics
from alttrain.metrics.modes import mode_metrics

__all__ = ["DigitsClassifier", "ImageMetrics", "load_digits_classifier", "mode_metrics"]
