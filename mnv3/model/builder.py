"""Builds MobileNetV3 as a Keras functional model from the block tables in specs.py.

The network matches keras.applications' MobileNetV3 layer for layer (same
parameters, same outputs on the same weights), with readable layer names
(`stem_conv`, `block3_depthwise`, `head_conv`, `logits`) and a few options the
applications model lacks: small-image strides, multi-scale feature outputs and
configurable BatchNorm momentum.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import keras
from keras import layers

from mnv3.config import ModelConfig
from mnv3.model import specs
from mnv3.model.layers import FusedBatchNormalization

INPUT_NAME = "image"
# The classifier head: the layers after global pooling. They are what trains while
# a pretrained backbone is frozen; CLASSIFIER is re-initialised when a pretrained
# model had another class count.
HEAD_LAYERS = ("head_fc", "logits")
CLASSIFIER = "logits"
# The layers an int8 export keeps in float (export.int8_float_stem), by name
# prefix. The stem's 16 channels differ up to 24x in range, so one int8 scale for
# the whole tensor leaves the narrow channels a few levels; the first depthwise
# conv reads each channel alone and amplifies that error (three narrow channels
# made 78% of its error on an Imagenette model). Both layers are small.
INT8_FLOAT_LAYERS = ("stem_conv", "stem_act", "block0_depthwise")

# He initialisation over fan-out (as torchvision's MobileNetV3). For a depthwise
# kernel, Keras counts fan-out as k*k, its true fan-in, so activations keep their
# scale through the network from step 0 (Glorot shrinks them block by block).
CONV_INIT = keras.initializers.VarianceScaling(2.0, mode="fan_out",
                                               distribution="truncated_normal")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds channels to a multiple of 8, never more than 10% below `value`
    (the TF-Slim rule that keras.applications and the paper's models use)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def keras_hard_swish(x, name: str):
    """The paper's h-swish, x * relu6(x + 3) / 6, as one Keras layer."""
    return layers.Activation("hard_swish", name=name)(x)


def keras_hard_sigmoid(x, name: str):
    """The paper's h-sigmoid, relu6(x + 3) / 6 (the SE gate), as one Keras layer."""
    return layers.Activation("hard_sigmoid", name=name)(x)


class _Builder:
    """Holds the per-model settings so the block helpers stay short."""

    def __init__(self, cfg: ModelConfig, hard_swish: Callable = keras_hard_swish,
                 hard_sigmoid: Callable = keras_hard_sigmoid):
        self.cfg = cfg
        self.hard_swish, self.hard_sigmoid = hard_swish, hard_sigmoid

    def activation(self, x, kind: str, name: str):
        if kind == "relu":
            return layers.ReLU(name=name)(x)
        return self.hard_swish(x, name)

    def conv_bn(self, x, filters: int, kernel: int, stride: int, name: str):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same",
                          use_bias=False, kernel_initializer=CONV_INIT, name=name)(x)
        return self.batch_norm(x, f"{name}_bn")

    def batch_norm(self, x, name: str):
        return FusedBatchNormalization(momentum=self.cfg.bn_momentum,
                                       epsilon=self.cfg.bn_epsilon, name=name)(x)

    def squeeze_excite(self, x, name: str):
        channels = x.shape[-1]
        s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
        s = layers.Conv2D(make_divisible(channels * self.cfg.se_ratio), 1,
                          name=f"{name}_reduce")(s)
        s = layers.ReLU(name=f"{name}_relu")(s)
        s = layers.Conv2D(channels, 1, name=f"{name}_expand")(s)
        s = self.hard_sigmoid(s, f"{name}_gate")
        return layers.Multiply(name=f"{name}_scale")([x, s])

    def bottleneck(self, x, block: specs.Block, table_in: int, stride: int, name: str,
                   rate: int = 1):
        """Inverted residual: 1x1 expand, kxk depthwise, optional SE, 1x1 project."""
        shortcut = x
        in_channels = x.shape[-1]
        filters = make_divisible(block.filters * self.cfg.alpha)
        if block.expanded != table_in:  # the first row of each table has no expansion
            expanded = make_divisible(in_channels * block.expanded / table_in)
            x = self.conv_bn(x, expanded, 1, 1, f"{name}_expand")
            x = self.activation(x, block.activation, f"{name}_expand_act")
        x = layers.DepthwiseConv2D(block.kernel, strides=stride, padding="same",
                                   dilation_rate=rate, use_bias=False,
                                   depthwise_initializer=CONV_INIT,
                                   name=f"{name}_depthwise")(x)
        x = self.batch_norm(x, f"{name}_depthwise_bn")
        x = self.activation(x, block.activation, f"{name}_depthwise_act")
        if block.se:
            x = self.squeeze_excite(x, f"{name}_se")
        x = self.conv_bn(x, filters, 1, 1, f"{name}_project")
        if stride == 1 and in_channels == filters:
            x = layers.Add(name=f"{name}_add")([shortcut, x])
        return x


def block_table(cfg: ModelConfig, reduced_tail: bool = False):
    blocks = specs.BLOCKS[cfg.variant]
    if reduced_tail:
        blocks = specs.reduced_tail(blocks)
    return specs.minimalistic(blocks) if cfg.minimalistic else blocks


def reduced_tail_layers(cfg: ModelConfig) -> tuple[str, ...]:
    """Name prefixes of the layers the reduced tail halves (the last stage's
    blocks and head_conv): under model.init_from from a classifier they start
    afresh."""
    blocks = block_table(cfg)
    return tuple(f"block{i}_" for i in range(specs.last_stage_start(blocks), len(blocks))) \
        + ("head_conv",)


class Backbone(NamedTuple):
    inputs: keras.KerasTensor
    features: keras.KerasTensor  # the head conv's output, the last feature map
    levels: list  # the last tensor at each resolution (strides 2, 4, 8, ...)
    builder: _Builder  # for heads built on top, with the same settings


def build_backbone(cfg: ModelConfig, size, *, batch_size: int | None = None,
                   include_rescaling: bool = True, hard_swish: Callable = keras_hard_swish,
                   hard_sigmoid: Callable = keras_hard_sigmoid, output_stride: int = 32,
                   reduced_tail: bool = False) -> Backbone:
    """The network up to and including the 1x1 head conv. `size`: an int (square),
    (height, width), or None for any size. `output_stride` < 32 runs the stages
    past it at stride 1 with dilated depthwise kernels (DeepLab's atrous scheme:
    the layer that loses its stride keeps rate 1, later layers see the doubled
    rate), so the map stays at 1/output_stride of the input with the same weights."""
    b = _Builder(cfg, hard_swish, hard_sigmoid)
    blocks = block_table(cfg, reduced_tail)
    top_activation = "relu" if cfg.minimalistic else "hard_swish"
    strides_to_remove = cfg.remove_early_strides
    height, width = (size, size) if size is None or isinstance(size, int) else size

    inputs = keras.Input((height, width, 3), batch_size=batch_size, name=INPUT_NAME)
    # Preprocessing lives in the model, so apps feed raw 0..255 pixels.
    x = inputs
    if include_rescaling:
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)

    stem_stride = 2
    if strides_to_remove:
        stem_stride, strides_to_remove = 1, strides_to_remove - 1
    x = b.conv_bn(x, specs.STEM_FILTERS, 3, stem_stride, "stem_conv")
    x = b.activation(x, top_activation, "stem_act")

    levels = []
    stride_so_far, rate, next_rate = 2, 1, 1
    table_in = specs.STEM_FILTERS
    for i, block in enumerate(blocks):
        stride = block.stride
        rate = next_rate
        if stride == 2:
            levels.append(x)
            if strides_to_remove:
                stride, strides_to_remove = 1, strides_to_remove - 1
            elif stride_so_far >= output_stride:
                stride, next_rate = 1, rate * 2
            else:
                stride_so_far *= 2
        x = b.bottleneck(x, block, table_in, stride, f"block{i}", rate)
        table_in = block.filters

    x = b.conv_bn(x, make_divisible(x.shape[-1] * 6), 1, 1, "head_conv")
    x = b.activation(x, top_activation, "head_act")
    levels.append(x)
    return Backbone(inputs, x, levels, b)


def build_model(cfg: ModelConfig, image_size: int | None, num_classes: int,
                name: str | None = None, *, batch_size: int | None = None,
                include_rescaling: bool = True,
                hard_swish: Callable = keras_hard_swish,
                hard_sigmoid: Callable = keras_hard_sigmoid) -> keras.Model:
    """MobileNetV3 taking RGB images with values 0..255 (float), any size >= 32.

    `image_size=None` builds a model that accepts any height and width.
    Outputs class probabilities (or logits with classifier_activation=linear);
    with include_top=False a pooled feature vector, the last feature map, or
    with feature_outputs=True a list of maps at strides 8, 16 and 32.
    `hard_swish(x, name) -> tensor` builds each h-swish activation and
    `hard_sigmoid` each SE gate (the int8 export injects forms that quantize
    faster, see mnv3.tflite.graph);
    `include_rescaling=False` leaves out the 0..255 -> -1..1 input scaling.
    """
    net = build_backbone(cfg, image_size, batch_size=batch_size,
                         include_rescaling=include_rescaling, hard_swish=hard_swish,
                         hard_sigmoid=hard_sigmoid)
    b, x = net.builder, net.features
    top_activation = "relu" if cfg.minimalistic else "hard_swish"
    if cfg.include_top:
        head_filters = specs.HEAD_FILTERS[cfg.variant]
        if cfg.alpha > 1.0:
            head_filters = make_divisible(head_filters * cfg.alpha)
        x = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
        x = layers.Conv2D(head_filters, 1, name=HEAD_LAYERS[0])(x)
        x = b.activation(x, top_activation, "head_fc_act")
        if cfg.dropout > 0:
            x = layers.Dropout(cfg.dropout, name="dropout")(x)
        x = layers.Conv2D(num_classes, 1, name=CLASSIFIER)(x)
        x = layers.Flatten(name="flatten")(x)
        # float32 output even under mixed precision, for a stable loss.
        outputs = layers.Activation(cfg.classifier_activation, dtype="float32",
                                    name="predictions")(x)
    elif cfg.feature_outputs:
        outputs = net.levels[-3:]
    elif cfg.pooling == "avg":
        outputs = layers.GlobalAveragePooling2D(name="pool")(x)
    elif cfg.pooling == "max":
        outputs = layers.GlobalMaxPooling2D(name="pool")(x)
    else:
        outputs = x
    return keras.Model(net.inputs, outputs, name=name or model_name(cfg))


def model_name(cfg: ModelConfig) -> str:
    return f"mobilenet_v3_{cfg.variant}{'_minimalistic' if cfg.minimalistic else ''}"

