"""The graph that is converted to TFLite: the trained network, rebuilt for batch 1
and a static size, with two int8-only rewrites that keep what it computes.

1. Hard-swish is computed as 6 * hard_swish(x) = x * relu6(x + 3), and every
   linear layer fed by it has its kernel divided by 6. The converter fuses the
   usual x * relu6(x + 3) / 6 into one HARD_SWISH op, which XNNPACK runs slowly
   in int8; unfused, ADD/RELU6/MUL run fast.
2. The x / 127.5 - 1 input scaling is left out: the uint8 input's quantization
   (scale 1/127.5, zero point 128) carries it for free, as in classic quantized
   MobileNets. The caller calibrates with already scaled inputs.
"""

from __future__ import annotations

import keras
from keras import layers

from mnv3.config import Config
from mnv3.model import build_model

# Layers a scaled tensor passes through unchanged in scale (up to the next linear op).
_PASS_THROUGH = (layers.GlobalAveragePooling2D, layers.Dropout, layers.Flatten)


def _producer(tensor):
    return tensor._keras_history.operation


def _fed_by_scaled_hard_swish(layer) -> bool:
    """True when `layer`'s input is (a pooled / SE-scaled copy of) x * relu6(x + 3)."""
    tensor = layer.input
    while True:
        op = _producer(tensor)
        if isinstance(op, _PASS_THROUGH):
            tensor = op.input
        elif isinstance(op, layers.Multiply) and op.name.endswith("_se_scale"):
            tensor = op.input[0]  # the feature map; input[1] is the SE gate
        else:
            return isinstance(op, layers.Multiply) and op.name.endswith("_act")


def export_graph(trained: keras.Model, cfg: Config, for_int8: bool,
                 quantized_input: bool = True) -> keras.Model:
    """A batch-1 copy of `trained` (same weights); with the int8 rewrites if asked
    (the input scaling stays in the graph when the int8 model takes float input)."""
    model = build_model(cfg.model, cfg.data.image_size, cfg.data.num_classes,
                        name=trained.name, batch_size=1,
                        include_rescaling=not (for_int8 and quantized_input),
                        hard_swish_times_6=for_int8)
    for layer in model.layers:
        if not layer.weights:
            continue
        weights = trained.get_layer(layer.name).get_weights()
        if for_int8 and isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)) \
                and _fed_by_scaled_hard_swish(layer):
            weights[0] = weights[0] / 6.0  # kernel; a bias is not scaled by the input
        layer.set_weights(weights)
    return model


def scale_input(images):
    """What the int8 graph expects in place of 0..255 pixels (calibration only)."""
    return images / 127.5 - 1.0
