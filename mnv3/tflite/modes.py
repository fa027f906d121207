"""What each TFLite export mode means, in one record that the graph builder, the
converter, the metadata writer and the report all read.

A new mode is one entry in _KINDS (plus its converter settings, if new ones).
"""

from __future__ import annotations

import dataclasses

# What the int8 graph's input means once its x / 127.5 - 1 scaling moves into the
# input quantization (scale 1/127.5, zero point 128): pixels 0..255 as -1..1.
SCALED_INPUT_RANGE = (-1.0, 1.0)
PIXEL_RANGE = (0.0, 255.0)


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    # Converter: Optimize.DEFAULT (weights quantized), and the weights' type.
    optimize: bool = False
    weight_type: str | None = None  # "float16" for fp16
    # Full integer: int8 graph rewrites, calibration on real images.
    integer: bool = False
    input_type: str = "float32"  # float32, uint8 or int8
    output_type: str = "float32"

    @property
    def quantized_input(self) -> bool:
        """The input is integer: its quantization carries the normalisation, and
        the graph leaves the input scaling out."""
        return self.input_type != "float32"

    @property
    def input_range(self) -> tuple[float, float]:
        """The values the graph's input holds (what calibration pins it to)."""
        return SCALED_INPUT_RANGE if self.quantized_input else PIXEL_RANGE

    @property
    def normalization(self) -> tuple[float, float]:
        """(mean, std) for the metadata: a reader feeds (pixel - mean) / std, in
        the input's type. Integer input: the quantization maps 0..255 to -1..1."""
        return (127.5, 127.5) if self.quantized_input else (0.0, 1.0)


_KINDS = {
    "float32": Mode("float32"),
    "fp16": Mode("fp16", optimize=True, weight_type="float16"),
    "dynamic": Mode("dynamic", optimize=True),
    "int8": Mode("int8", optimize=True, integer=True, input_type="uint8"),
}
NAMES = tuple(_KINDS)


def get(name: str, int8_input: str = "uint8", int8_output: str = "float32") -> Mode:
    """The mode called `name`; an int8 mode takes the configured input / output types."""
    mode = _KINDS[name]
    if mode.integer:
        mode = dataclasses.replace(mode, input_type=int8_input, output_type=int8_output)
    return mode


def from_config(export_cfg) -> list[Mode]:
    """The modes export.quant asks for, in its order."""
    return [get(name, export_cfg.int8_input, export_cfg.int8_output)
            for name in export_cfg.quant]
