"""The graph that is converted to TFLite: the trained network (any task's),
rebuilt for batch 1 and a static size, with two int8-only rewrites that keep what it computes.

1. Hard-swish is computed as 6 * hard_swish(x) = x * relu6(x + 3), and every
   linear layer fed by it has its kernel divided by 6 (a residual sum it joins
   stays 6x; see _output_scales). The converter fuses the usual
   x * relu6(x + 3) / 6 into one HARD_SWISH op, which XNNPACK runs slowly in
   int8; unfused, ADD/RELU6/MUL run fast. The SE gate relu6(x + 3) / 6 is
   computed as relu6(x + 3), which the converter fuses into the conv before
   it, and its 1/6 goes into the next kernel the same way: one MUL less per
   SE block. Where the export keeps the stem in float (export.int8_float_stem),
   the stem's hard-swish stays one op: float's HARD_SWISH runs fast, and
   unfused on the largest map it took several times as long (BENCHMARKS.md).
2. The x / 127.5 - 1 input scaling is left out: the uint8 input's quantization
   (scale 1/127.5, zero point 128) carries it for free, as in classic quantized
   MobileNets. The caller calibrates with already scaled inputs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import keras
from keras import layers

from mnv3.tflite.modes import Mode
from mnv3.model.builder import INT8_FLOAT_LAYERS, keras_hard_swish
from mnv3.model.quantize_aware import trained_ranges
from mnv3.tf_internals import producer

_LINEAR = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)


class TimesSix:
    """Builds the builder's activations at six times their value: hard-swish as
    x * relu6(x + 3) and the SE gate (h-sigmoid) as relu6(x + 3), and keeps the
    layers it made: the rewrite below finds them by identity, so renaming a
    layer cannot silently break it."""

    def __init__(self, float_stem: bool = False):
        self.sixes = set()  # ids of the layers whose outputs are at 6x
        self.gates = set()  # ids of hard-swish's inner relu6 layers: [0, 6], at 1x
        self.float_stem = float_stem  # the layers kept in float keep their activation

    def hard_swish(self, x, name: str):
        if self.float_stem and kept_in_float(name):
            return keras_hard_swish(x, name)
        gate_layer = layers.ReLU(6.0, name=f"{name}_relu6")
        product = layers.Multiply(name=name)
        self.gates.add(id(gate_layer))
        self.sixes.add(id(product))
        gate = gate_layer(layers.Rescaling(1.0, offset=3.0, name=f"{name}_shift")(x))
        return product([x, gate])

    def hard_sigmoid(self, x, name: str):
        # The converter fuses the +3 and the relu6 into the conv before: one op.
        gate = layers.ReLU(6.0, name=name)
        self.sixes.add(id(gate))
        return gate(layers.Rescaling(1.0, offset=3.0, name=f"{name}_shift")(x))


def _output_scales(model: keras.Model, six: TimesSix) -> tuple[dict, dict, dict]:
    """Where the 6x goes: {linear layer: the scale of its input} (its kernel is
    divided by it), {BatchNorm layer: factor} (its gamma and beta are
    multiplied by it) and {layer: the scale of its output}.

    A 6x activation's output is 6x what the trained model has there; a linear
    layer fed 6x gives 1x once its kernel is divided by 6; a product's scale is
    its factors' (the SE product of a 6x feature map and a 6x gate is 36x);
    pooling, dropout, ReLU and reshapes pass their input's scale on. A residual
    Add of a 6x shortcut (the stem's hard-swish, when the first block keeps its
    stride and width) and a 1x branch scales the branch's last BatchNorm by 6,
    and the sum is 6x.
    """
    scale, kernel_input_scale, bn_factor = {}, {}, {}
    for layer in model.layers:  # functional models list layers in graph order
        if isinstance(layer, layers.InputLayer):
            continue
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        in_scales = [scale.get(producer(t).name, 1.0) for t in inputs]
        if id(layer) in six.sixes:
            out = 6.0  # x * relu6(x + 3) or relu6(x + 3), x being at 1x
        elif id(layer) in six.gates:
            out = 1.0  # the [0, 6] gate inside hard-swish
        elif isinstance(layer, _LINEAR):
            kernel_input_scale[layer.name], out = in_scales[0], 1.0
        elif isinstance(layer, layers.Multiply):
            out = math.prod(in_scales)
        elif isinstance(layer, layers.Add):
            out = max(in_scales)
            for tensor, branch_scale in zip(inputs, in_scales):
                if branch_scale != out:
                    branch = producer(tensor)
                    if not isinstance(branch, layers.BatchNormalization):
                        raise ValueError(f"{layer.name}: cannot rescale {branch.name}")
                    bn_factor[branch.name] = out / branch_scale
        else:
            out = in_scales[0]
        scale[layer.name] = out
    return kernel_input_scale, bn_factor, scale


@dataclasses.dataclass
class ExportGraph:
    model: keras.Model
    # int8 modes of a quantization-aware model: {layer of `model`: the
    # (low, high) range it trained with, in `model`'s units}; else empty.
    ranges: dict
    # The layers of `model` the int8 file keeps in float (the converter's
    # float_layers), the ones whose activations were left as they are; else empty.
    float_layers: list


def export_graph(trained: keras.Model, build: Callable[..., keras.Model],
                 mode: Mode, float_stem: bool = False) -> ExportGraph:
    """A batch-1 copy of `trained` (same weights) for `mode`: an integer mode gets
    the int8 rewrites, and an integer input leaves the input scaling out.
    `build(**options)` builds the task's network (options: name, batch_size,
    include_rescaling, hard_swish, hard_sigmoid), as it built `trained`.
    `float_stem`: the int8 file keeps INT8_FLOAT_LAYERS in float (see float_layers),
    so their activations are not rewritten; the graph names them for the converter."""
    float_stem = float_stem and mode.integer
    six = TimesSix(float_stem) if mode.integer else None
    options = {"hard_swish": six.hard_swish, "hard_sigmoid": six.hard_sigmoid} if six else {}
    model = build(name=trained.name, batch_size=1,
                  include_rescaling=not mode.quantized_input, **options)
    kernel_input_scale, bn_factor, scale = _output_scales(model, six) if six \
        else ({}, {}, {})
    for layer in model.layers:
        if not layer.weights:
            continue
        weights = trained.get_layer(layer.name).get_weights()
        if layer.name in kernel_input_scale:  # a bias is not scaled by the input
            weights[0] = weights[0] / kernel_input_scale[layer.name]
        if layer.name in bn_factor:  # gamma and beta: the whole output grows
            weights[0], weights[1] = (w * bn_factor[layer.name] for w in weights[:2])
        layer.set_weights(weights)
    ranges = {name: (low * scale[name], high * scale[name])
              for name, (low, high) in trained_ranges(trained).items() if name in scale}
    return ExportGraph(model, ranges, float_layers(model) if float_stem else [])


def float_layers(model: keras.Model) -> list[str]:
    """The layers of `model` that an int8 export keeps in float
    (builder.INT8_FLOAT_LAYERS: a prefix names a layer and its parts, such as
    `stem_conv` and `stem_conv_bn`)."""
    return [layer.name for layer in model.layers if kept_in_float(layer.name)]


def kept_in_float(name: str) -> bool:
    """Whether the layer `name` is one of builder.INT8_FLOAT_LAYERS or a part of one."""
    return any(name == prefix or name.startswith(prefix + "_") for prefix in INT8_FLOAT_LAYERS)


def scale_input(images):
    """What the int8 graph expects in place of 0..255 pixels (calibration only):
    the same values as the model's `rescale` layer gives, in SCALED_INPUT_RANGE."""
    return images / 127.5 - 1.0
