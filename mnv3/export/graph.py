"""The graph that is converted to TFLite: the trained network, rebuilt for batch 1
and a static size, with two int8-only rewrites that keep what it computes.

1. Hard-swish is computed as 6 * hard_swish(x) = x * relu6(x + 3), and every
   linear layer fed by it has its kernel divided by 6 (a residual sum it joins
   stays 6x; see _output_scales). The converter fuses the usual
   x * relu6(x + 3) / 6 into one HARD_SWISH op, which XNNPACK runs slowly in
   int8; unfused, ADD/RELU6/MUL run fast.
2. The x / 127.5 - 1 input scaling is left out: the uint8 input's quantization
   (scale 1/127.5, zero point 128) carries it for free, as in classic quantized
   MobileNets. The caller calibrates with already scaled inputs.
"""

from __future__ import annotations

import keras
from keras import layers

from mnv3.config import Config
from mnv3.model import build_model

_LINEAR = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)


def _producer(tensor):
    return tensor._keras_history.operation


def _output_scales(model: keras.Model) -> tuple[dict, dict]:
    """Where the 6x of 6 * hard_swish goes: {linear layer: the scale of its input}
    (its kernel is divided by it) and {BatchNorm layer: factor} (its gamma and
    beta are multiplied by it).

    A 6 * hard_swish output is 6x what the trained model has there; a linear
    layer fed 6x gives 1x once its kernel is divided by 6; pooling, dropout,
    ReLU and the squeeze-excite product pass their input's scale on. A residual
    Add of a 6x shortcut (the stem's hard-swish, when the first block keeps its
    stride and width) and a 1x branch scales the branch's last BatchNorm by 6,
    and the sum is 6x.
    """
    scale, kernel_input_scale, bn_factor = {}, {}, {}
    for layer in model.layers:  # functional models list layers in graph order
        if isinstance(layer, layers.InputLayer):
            continue
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        in_scales = [scale.get(_producer(t).name, 1.0) for t in inputs]
        if isinstance(layer, layers.Multiply) and layer.name.endswith("_act"):
            out = 6.0  # x * relu6(x + 3), x being a 1x BatchNorm output
        elif isinstance(layer, layers.ReLU) and layer.name.endswith("_relu6"):
            out = 1.0  # the [0, 6] gate inside it
        elif isinstance(layer, _LINEAR):
            kernel_input_scale[layer.name], out = in_scales[0], 1.0
        elif isinstance(layer, layers.Add):
            out = max(in_scales)
            for tensor, branch_scale in zip(inputs, in_scales):
                if branch_scale != out:
                    branch = _producer(tensor)
                    if not isinstance(branch, layers.BatchNormalization):
                        raise ValueError(f"{layer.name}: cannot rescale {branch.name}")
                    bn_factor[branch.name] = out / branch_scale
        else:
            out = in_scales[0]
        scale[layer.name] = out
    return kernel_input_scale, bn_factor


def export_graph(trained: keras.Model, cfg: Config, for_int8: bool,
                 quantized_input: bool = True) -> keras.Model:
    """A batch-1 copy of `trained` (same weights); with the int8 rewrites if asked
    (the input scaling stays in the graph when the int8 model takes float input)."""
    model = build_model(cfg.model, cfg.data.image_size, cfg.data.num_classes,
                        name=trained.name, batch_size=1,
                        include_rescaling=not (for_int8 and quantized_input),
                        hard_swish_times_6=for_int8)
    kernel_input_scale, bn_factor = _output_scales(model) if for_int8 else ({}, {})
    for layer in model.layers:
        if not layer.weights:
            continue
        weights = trained.get_layer(layer.name).get_weights()
        if layer.name in kernel_input_scale:  # a bias is not scaled by the input
            weights[0] = weights[0] / kernel_input_scale[layer.name]
        if layer.name in bn_factor:  # gamma and beta: the whole output grows
            weights[0], weights[1] = (w * bn_factor[layer.name] for w in weights[:2])
        layer.set_weights(weights)
    return model


# What scale_input makes of 0..255: the int8 input's quantization range.
SCALED_INPUT_RANGE = (-1.0, 1.0)


def scale_input(images):
    """What the int8 graph expects in place of 0..255 pixels (calibration only)."""
    return images / 127.5 - 1.0
