"""The paper's Lite R-ASPP segmentation head (Howard et al. 2019, section 6.3,
figure 10) on a MobileNetV3 backbone.

The last stage runs dilated (output stride 16, or 8) with half its channels.
On its features, a 1x1 conv branch (BatchNorm, ReLU) is gated channel by
channel by a sigmoid of the globally pooled features, like squeeze-excite (the
paper pools with a large kernel and stride; global pooling, as torchvision
does, takes any input size and converts to one MEAN op). The gated map is
upsampled to the stride-8 features, each side gets a 1x1 classifier, and their
sum is upsampled to the input size: per-pixel class logits.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from mnv3.model.builder import (CONV_INIT, build_backbone, keras_hard_sigmoid, keras_hard_swish,
                                model_name)

SKIP_STRIDE = 8
# The layers the head adds: they start afresh under model.init_from and train
# alone while a pretrained backbone is frozen.
HEAD_LAYERS = ("seg_branch_conv", "seg_branch_conv_bn", "seg_gate_conv",
               "seg_high_classifier", "seg_low_classifier")


def build_segmenter(model_cfg, task_cfg, size: tuple[int, int], num_classes: int, *,
                    batch_size: int | None = None, include_rescaling: bool = True,
                    hard_swish: Callable = keras_hard_swish,
                    hard_sigmoid: Callable = keras_hard_sigmoid,
                    name: str | None = None) -> keras.Model:
    """LR-ASPP MobileNetV3 for (height, width) RGB 0..255 inputs; outputs
    height x width x num_classes logits (float32)."""
    height, width = size
    net = build_backbone(model_cfg, (height, width), batch_size=batch_size,
                         include_rescaling=include_rescaling, hard_swish=hard_swish,
                         hard_sigmoid=hard_sigmoid, output_stride=task_cfg.output_stride,
                         reduced_tail=task_cfg.reduced_tail)
    b = net.builder
    # levels holds the last map at strides 2, 4, 8, ...: index 2 is stride 8.
    low = net.levels[2]
    high = net.features
    channels = task_cfg.head_channels

    branch = layers.Conv2D(channels, 1, use_bias=False, kernel_initializer=CONV_INIT,
                           name=HEAD_LAYERS[0])(high)
    branch = b.batch_norm(branch, HEAD_LAYERS[1])
    branch = layers.ReLU(name="seg_branch_relu")(branch)
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="seg_gate_pool")(high)
    gate = layers.Conv2D(channels, 1, use_bias=False, name=HEAD_LAYERS[2])(gate)
    gate = layers.Activation("sigmoid", name="seg_gate_sigmoid")(gate)
    x = layers.Multiply(name="seg_gated")([branch, gate])

    x = layers.Resizing(low.shape[1], low.shape[2], interpolation="bilinear",
                        name="seg_upsample_to_skip")(x)
    x = layers.Conv2D(num_classes, 1, name=HEAD_LAYERS[3])(x)
    skip = layers.Conv2D(num_classes, 1, name=HEAD_LAYERS[4])(low)
    x = layers.Add(name="seg_logits_low_res")([x, skip])
    x = layers.Resizing(height, width, interpolation="bilinear",
                        name="seg_upsample_to_input")(x)
    # float32 output even under mixed precision, for a stable loss.
    outputs = layers.Activation("linear", dtype="float32", name="seg_logits")(x)
    return keras.Model(net.inputs, outputs,
                       name=name or f"lraspp_{model_name(model_cfg)}")
