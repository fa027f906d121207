"""MobileNetV3: block tables (specs) and the Keras builder."""

from mnv3.model.builder import build_model, make_divisible

__all__ = ["build_model", "make_divisible"]
