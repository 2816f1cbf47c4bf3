"""Rendered text images with known line polygons, split into calibration and validation sets (shipped as code)."""

from .fonts import FontsMissing, check_fonts
from .render import TextSample, render_sample
from .sets import (SET_VERSION, accuracy_control_set, calibration_batches, calibration_set, real_samples, rendered, sample_seed,
                   validation_set)

__all__ = ["SET_VERSION", "FontsMissing", "TextSample", "accuracy_control_set", "calibration_batches", "calibration_set", "check_fonts",
           "real_samples", "render_sample", "rendered", "sample_seed", "validation_set"]
