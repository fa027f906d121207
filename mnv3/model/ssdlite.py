"""SSDLite on MobileNetV3: the paper's detector (section 6.2).

The first detection map is the expansion layer of the last block at output
stride 16 (the 1x1 expand of the block that then strides to 32); the second
is the network's last layer at output stride 32; four extra SSDLite layers
(1x1 conv to half depth, 3x3 depthwise at stride 2, 1x1 conv; 512, 256, 256
and 128 deep, as in TF's ssdlite_mobilenet_v3 configs) take it down to 1x1.
The last stage runs at half its channels (the paper's reduced tail: the same
accuracy for less latency). Each map gets two depthwise-separable predictors
(3x3 depthwise, BatchNorm, ReLU6, 1x1 conv): box codes and class logits for
each of its anchors (mnv3.model.anchors).

The model's one output is [batch, anchors, 4 + 1 + classes]: the four box
codes, then the logits of background and of each class, anchors in the order
AnchorSpec.anchors lists them.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
from keras import layers

from mnv3.model.anchors import AnchorSpec
from mnv3.model.builder import (CONV_INIT, block_table, build_backbone, keras_hard_sigmoid,
                                keras_hard_swish, model_name)

EXTRA_DEPTHS = (512, 256, 256, 128)
HEAD_PREFIX = "ssd_"  # every layer past the backbone: what starts afresh from a classifier


def _head_layer_names() -> tuple[str, ...]:
    """Every layer build_detector adds past the backbone (tested against a built
    model): what trains while a pretrained backbone is frozen."""
    conv = lambda name: [name, f"{name}_bn", f"{name}_relu6"]  # noqa: E731
    names = []
    for k in range(len(EXTRA_DEPTHS)):
        for part in ("reduce", "depthwise", "expand"):
            names += conv(f"{HEAD_PREFIX}extra{k}_{part}")
    for k in range(len(EXTRA_DEPTHS) + 2):
        for kind in ("box", "class"):
            name = f"{HEAD_PREFIX}{kind}{k}"
            names += conv(f"{name}_depthwise") + [name, f"{name}_flat"]
        names.append(f"{HEAD_PREFIX}map{k}")
    return tuple(names + [f"{HEAD_PREFIX}all_maps", f"{HEAD_PREFIX}predictions"])


HEAD_LAYERS = _head_layer_names()


def map_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(rows, cols) of each detection map for an input of height x width."""
    sizes = [(math.ceil(height / 16), math.ceil(width / 16)),
             (math.ceil(height / 32), math.ceil(width / 32))]
    for _ in EXTRA_DEPTHS:
        rows, cols = sizes[-1]
        sizes.append((math.ceil(rows / 2), math.ceil(cols / 2)))
    return sizes


def _conv_bn_relu6(b, x, filters: int, name: str, depthwise_stride: int = 0):
    if depthwise_stride:
        x = layers.DepthwiseConv2D(3, strides=depthwise_stride, padding="same", use_bias=False,
                                   depthwise_initializer=CONV_INIT, name=name)(x)
    else:
        x = layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=CONV_INIT,
                          name=name)(x)
    x = b.batch_norm(x, f"{name}_bn")
    return layers.ReLU(6.0, name=f"{name}_relu6")(x)


@keras.saving.register_keras_serializable(package="mnv3")
class BackgroundPrior(keras.initializers.Initializer):
    """Class-logit biases under which every anchor starts out `prior` sure it is
    background (RetinaNet's prior, for softmax): with zeros, thousands of
    background anchors each start at 1/(classes + 1) and their loss swamps
    the first steps (about 120 for a small batch, against 8 with the prior)."""

    def __init__(self, classes: int, prior: float = 0.99):
        self.classes, self.prior = classes, prior

    def __call__(self, shape, dtype=None):
        background = math.log(self.prior * self.classes / (1 - self.prior))
        first = keras.ops.arange(shape[0]) % (self.classes + 1) == 0
        return keras.ops.cast(keras.ops.where(first, background, 0.0), dtype or "float32")

    def get_config(self):
        return {"classes": self.classes, "prior": self.prior}


def _predictor(b, x, outputs: int, name: str, bias_initializer="zeros"):
    x = _conv_bn_relu6(b, x, 0, f"{name}_depthwise", depthwise_stride=1)
    return layers.Conv2D(outputs, 1, kernel_initializer=CONV_INIT,
                         bias_initializer=bias_initializer, name=name)(x)


def build_detector(model_cfg, size: tuple[int, int], num_classes: int,
                   spec: AnchorSpec = AnchorSpec(), *, batch_size: int | None = None,
                   include_rescaling: bool = True,
                   hard_swish: Callable = keras_hard_swish,
                   hard_sigmoid: Callable = keras_hard_sigmoid,
                   reduced_tail: bool = True,
                   name: str | None = None) -> keras.Model:
    """SSDLite MobileNetV3 for (height, width) RGB 0..255 inputs."""
    net = build_backbone(model_cfg, size, batch_size=batch_size,
                         include_rescaling=include_rescaling, hard_swish=hard_swish,
                         hard_sigmoid=hard_sigmoid, reduced_tail=reduced_tail)
    b = net.builder
    blocks = block_table(model_cfg, reduced_tail=reduced_tail)
    to_stride_32 = max(i for i, block in enumerate(blocks) if block.stride == 2)
    backbone = keras.Model(net.inputs, net.features)
    maps = [backbone.get_layer(f"block{to_stride_32}_expand_act").output, net.features]
    x = net.features
    for k, depth in enumerate(EXTRA_DEPTHS):
        x = _conv_bn_relu6(b, x, depth // 2, f"{HEAD_PREFIX}extra{k}_reduce")
        x = _conv_bn_relu6(b, x, 0, f"{HEAD_PREFIX}extra{k}_depthwise", depthwise_stride=2)
        x = _conv_bn_relu6(b, x, depth, f"{HEAD_PREFIX}extra{k}_expand")
        maps.append(x)
    per_cell = spec.boxes_per_cell(len(maps))
    outputs = []
    for k, (feature_map, anchors) in enumerate(zip(maps, per_cell)):
        codes = _predictor(b, feature_map, anchors * 4, f"{HEAD_PREFIX}box{k}")
        logits = _predictor(b, feature_map, anchors * (num_classes + 1),
                            f"{HEAD_PREFIX}class{k}", BackgroundPrior(num_classes))
        codes = layers.Reshape((-1, 4), name=f"{HEAD_PREFIX}box{k}_flat")(codes)
        logits = layers.Reshape((-1, num_classes + 1), name=f"{HEAD_PREFIX}class{k}_flat")(logits)
        outputs.append(layers.Concatenate(name=f"{HEAD_PREFIX}map{k}")([codes, logits]))
    joined = layers.Concatenate(axis=1, name=f"{HEAD_PREFIX}all_maps")(outputs)
    # float32 output even under mixed precision, for a stable loss.
    predictions = layers.Activation("linear", dtype="float32",
                                    name=f"{HEAD_PREFIX}predictions")(joined)
    return keras.Model(net.inputs, predictions,
                       name=name or f"ssdlite_{model_name(model_cfg)}")
