"""Quantization-aware training (QAT): the network trains while it sees the int8
rounding its TFLite export will apply, and keeps the activation ranges it
trained with, which the int8 export then uses instead of calibrating.

The rounding sits where the converter's int8 model rounds:
- Weights: per output channel, symmetric over [-127, 127], as the converter
  quantizes conv kernels. The converter folds each BatchNorm into its conv
  first; a symmetric per-channel grid scales with its channel, so rounding the
  unfolded kernel gives exactly the rounded folded kernel, whatever the
  BatchNorm's statistics (and the export graph's 1/6 kernel scaling too).
- Activations: per tensor over a tracked range (a moving average of each
  training batch's min and max, widened to take in 0), at every tensor that
  survives the converter's fusion: a conv's output after its BatchNorm and
  ReLU, hard-swish's input x, its gate relu6(x + 3) and its output, the SE
  gate, poolings, products and sums. Reshapes and dropout keep their input's
  grid; the input (pinned to the uint8 pixels) and the output are not rounded.
- Layers the export keeps in float (export.int8_float_stem) are not rounded,
  except where their result enters the int8 part.

Each activation range is stored under the name of the layer of the int8
export graph (mnv3.tflite.graph) whose output it is: hard-swish N keeps N_relu6
(its gate) and N; every other point is the layer it follows. Ranges are in
this model's units; the export graph scales them where it computes 6x.

The rounding is switched on by `set_quantizing` (a trace-time switch: the
caller retraces its step), so one model serves a run's float epochs and its
quantization-aware ones.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import keras
import tensorflow as tf
from keras import layers

from mnv3.tf_internals import producer

SUFFIX = "_quant"  # an ActivationQuantizer after layer L is named L + SUFFIX
# The tracked ranges forget a batch in about 100 steps: a QAT phase of a few
# epochs on a few thousand photos is a few hundred steps.
MOMENTUM = 0.99
_TINY = 1e-30  # a kernel channel of zeros still gets a usable grid


def _fake_quant(x, low, high, narrow_range=False, axis=None):
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, tf.stop_gradient(low), tf.stop_gradient(high), num_bits=8,
        narrow_range=narrow_range, axis=axis)


@tf.custom_gradient
def _rounded_activation(x, low, high):
    """x on the int8 grid over [low, high]; the gradient passes straight
    through. (FakeQuant's own gradient op also computes the gradients of low
    and high, two more reductions per tensor that tracked ranges never use:
    most of what QAT cost on top of a plain step, BENCHMARKS.md.)"""
    def grad(upstream):
        return upstream, None, None
    return tf.quantization.fake_quant_with_min_max_vars(x, low, high, num_bits=8), grad


def quantized_kernel(kernel, channels_last: int):
    """`kernel` rounded per output channel on the converter's symmetric int8
    grid; the output channels are its last `channels_last` axes, flattened (a
    depthwise kernel's input channels times its multiplier)."""
    shape = tf.shape(kernel)
    flat = tf.reshape(kernel, tf.concat([shape[:-channels_last], [-1]], 0))
    reduce = list(range(len(kernel.shape) - channels_last))
    bound = tf.maximum(tf.reduce_max(tf.abs(flat), axis=reduce), _TINY)
    return tf.reshape(_fake_quant(flat, -bound, bound, narrow_range=True, axis=-1), shape)


class _Quantizing:
    """The switch every QAT layer shares, saved in its config."""

    def _init_switch(self, quantizing: bool):
        self.quantizing = bool(quantizing)

    def get_config(self):
        return {**super().get_config(), "quantizing": self.quantizing}


@keras.saving.register_keras_serializable(package="mnv3")
class QuantConv2D(_Quantizing, layers.Conv2D):
    def __init__(self, *args, quantizing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_switch(quantizing)

    def convolution_op(self, inputs, kernel):
        if self.quantizing:
            kernel = quantized_kernel(kernel, 1)
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="mnv3")
class QuantDepthwiseConv2D(_Quantizing, layers.DepthwiseConv2D):
    def __init__(self, *args, quantizing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_switch(quantizing)

    def call(self, inputs):
        if not self.quantizing:
            return super().call(inputs)
        # DepthwiseConv2D has no convolution_op to hand the rounded kernel to.
        x = keras.ops.depthwise_conv(inputs, quantized_kernel(self.kernel, 2),
                                     strides=self.strides, padding=self.padding,
                                     dilation_rate=self.dilation_rate,
                                     data_format=self.data_format)
        if self.use_bias:
            x = x + self.bias  # channels last: broadcasts over the channels
        return self.activation(x)


class _Ranges(_Quantizing):
    """Tracked (low, high) pairs and the per-tensor rounding over them."""

    def _add_range(self, point: str):
        pair = tuple(self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     autocast=False, name=f"{point}_{end}")
                     for end in ("low", "high"))
        self._pairs = getattr(self, "_pairs", {})
        self._pairs[point] = pair

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {point: (float(low.numpy()), float(high.numpy()))
                for point, (low, high) in self._pairs.items()}

    def _round(self, x, point: str, training):
        low, high = self._pairs[point]
        if training:
            # A pair still at (0, 0) has seen no batch: it starts from this one.
            keep = tf.where(tf.logical_and(tf.equal(low, 0.0), tf.equal(high, 0.0)),
                            0.0, MOMENTUM)
            x32 = tf.cast(x, tf.float32)
            low.assign(keep * low + (1 - keep) * tf.minimum(tf.reduce_min(x32), 0.0))
            high.assign(keep * high + (1 - keep) * tf.maximum(tf.reduce_max(x32), 0.0))
        return tf.cast(_rounded_activation(tf.cast(x, tf.float32), low, high), x.dtype)

    def compute_output_spec(self, x, training=None):
        return keras.KerasTensor(x.shape, x.dtype)


@keras.saving.register_keras_serializable(package="mnv3")
class ActivationQuantizer(_Ranges, layers.Layer):
    """Rounds the output of the layer `point` (which it follows) to int8."""

    def __init__(self, point: str, quantizing: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.point = point
        self._init_switch(quantizing)
        self._add_range(point)

    def call(self, x, training=None):
        return self._round(x, self.point, training) if self.quantizing else x

    def get_config(self):
        return {**super().get_config(), "point": self.point}


@keras.saving.register_keras_serializable(package="mnv3")
class QuantHardSwish(_Ranges, layers.Layer):
    """h-swish, x * relu6(x + 3) / 6, with its gate and output rounded (its
    input x is rounded by the quantizer after the layer feeding it)."""

    def __init__(self, quantizing: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._init_switch(quantizing)
        self._add_range(f"{self.name}_relu6")
        self._add_range(self.name)

    def call(self, x, training=None):
        gate = tf.nn.relu6(x + 3.0)
        if not self.quantizing:
            return x * gate / 6.0
        gate = self._round(gate, f"{self.name}_relu6", training)
        return self._round(x * gate / 6.0, self.name, training)


@keras.saving.register_keras_serializable(package="mnv3")
class QuantHardSigmoid(_Ranges, layers.Layer):
    """The SE gate, relu6(x + 3) / 6, its output rounded (the conv before it is
    fused with it)."""

    def __init__(self, quantizing: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._init_switch(quantizing)
        self._add_range(self.name)

    def call(self, x, training=None):
        gate = tf.nn.relu6(x + 3.0) / 6.0
        return self._round(gate, self.name, training) if self.quantizing else gate


# --- the model ------------------------------------------------------------------------

def _activation(layer) -> str | None:
    if not isinstance(layer, layers.Activation):
        return None
    name = getattr(layer.activation, "__name__", None)
    return "hard_swish" if name == "hard_silu" else name  # Keras' two names for it


# What the converter fuses into the op before it: a conv's BatchNorm, a ReLU,
# and the SE gate's relu6(x + 3) (its +3 goes into the conv's bias).
def _fused_into_producer(layer) -> bool:
    return isinstance(layer, (layers.BatchNormalization, layers.ReLU)) or \
        _activation(layer) in ("relu", "hard_sigmoid")


_SAME_GRID = (layers.InputLayer, layers.Rescaling, layers.Dropout, layers.Flatten,
              layers.Reshape)


def _rounded_outputs(model: keras.Model, float_layers: Iterable[str]) -> set[str]:
    """The layers after which the int8 model rounds (see the module docstring)."""
    consumers = defaultdict(list)
    for layer in model.layers:
        if not isinstance(layer, layers.InputLayer):
            inputs = layer.input if isinstance(layer.input, list) else [layer.input]
            for tensor in inputs:
                consumers[producer(tensor).name].append(layer)
    floats, outputs = set(float_layers), {producer(t).name for t in model.outputs}
    points = set()
    for layer in model.layers:
        after = consumers[layer.name]
        if isinstance(layer, _SAME_GRID) or layer.name in outputs:
            continue
        if _activation(layer) in ("hard_swish", "hard_sigmoid") \
                and layer.name not in floats:
            continue  # rounds inside itself
        if after and all(_fused_into_producer(c) for c in after):
            continue
        if layer.name in floats and all(c.name in floats for c in after):
            continue
        points.add(layer.name)
    return points


def _qat_layer(layer, floats: set[str]):
    """The QAT form of `layer`, or a plain copy (the layers kept in float too)."""
    if layer.name not in floats:
        if type(layer) in (layers.Conv2D, layers.DepthwiseConv2D):
            quant = QuantConv2D if type(layer) is layers.Conv2D else QuantDepthwiseConv2D
            return quant.from_config({**layer.get_config(), "quantizing": False})
        kind = _activation(layer)
        if kind == "hard_swish":
            return QuantHardSwish(name=layer.name)
        if kind == "hard_sigmoid":
            return QuantHardSigmoid(name=layer.name)
    return layer.__class__.from_config(layer.get_config())


def quantize_aware(model: keras.Model, float_layers: Iterable[str] = ()) -> keras.Model:
    """A copy of `model` (same weights) ready for quantization-aware training,
    its rounding off until `set_quantizing`. `float_layers`: layers the int8
    export keeps in float."""
    floats = set(float_layers)
    points = _rounded_outputs(model, floats)

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if layer.name in points:
            out = ActivationQuantizer(layer.name, name=layer.name + SUFFIX)(out)
        return out

    copy = keras.models.clone_model(model, clone_function=lambda l: _qat_layer(l, floats),
                                    call_function=call)
    for layer in model.layers:
        if layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


def qat_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, _Quantizing)]


def is_quantize_aware(model: keras.Model) -> bool:
    return bool(qat_layers(model))


def set_quantizing(model: keras.Model, on: bool) -> bool:
    """Switches the rounding of every QAT layer; True if that changed anything
    (a traced step must then be traced anew)."""
    changed = False
    for layer in qat_layers(model):
        changed |= layer.quantizing != on
        layer.quantizing = on
    return changed


def range_layer(layer) -> bool:
    """A layer whose weights are tracked ranges, not learned weights."""
    return isinstance(layer, _Ranges)


def trained_ranges(model: keras.Model) -> dict[str, tuple[float, float]]:
    """{export graph layer name: (low, high)} in this model's units; empty for
    a model without QAT layers or whose ranges saw no batch."""
    ranges = {}
    for layer in model.layers:
        if range_layer(layer):
            ranges.update(layer.ranges())
    return {k: v for k, v in ranges.items() if v != (0.0, 0.0)}
