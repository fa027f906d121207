"""int8 calibration: activation ranges recorded by running the float TFLite model
op by op, clipped at a percentile, then handed to the converter's quantizer.

Why not the converter's own calibration (both measured on the CIFAR-10 model):
1. It logs a tensor after later ops may have reused its memory in place, so the
   relu6 gate of x * relu6(x + 3) got the product's range (about [-2, 390]) and
   kept 4 of its 256 levels. Run with every tensor preserved, each gets its own.
2. Plain min/max lets a handful of outlier values set the step for a whole
   tensor. Ranges at the 99.99th percentile of the calibration values took int8
   agreement with the float model from 90.1% to 96.0% (top-1 79.5% -> 80.8%,
   float 81.1%).

The layers that builder.INT8_FLOAT_LAYERS names (the stem, the first depthwise
conv) are left in float: int8_model passes their ops to the quantizer's denylist.

The converter's quantizer itself is reused through the internal entry points
its QuantizationDebugger uses (mnv3.tf_internals). Where a TensorFlow lacks
them, the export falls back to the converter's public calibration, with a
warning that names what is missing.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from mnv3 import tf_internals
from mnv3.errors import UserError
from mnv3.tflite.modes import Mode

IO_TYPES = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}


class Tails:
    """The `percentile`-th value from the top and bottom of everything fed in,
    exact, keeping only the tails in memory (the total count is known ahead)."""

    def __init__(self, total: int, percentile: float):
        # (the small epsilon: 100 - 99.9 is 0.0999...9 in floating point)
        self.keep = math.floor(total * (100 - percentile) / 100 + 1e-6) + 1
        self.low = np.empty(0, np.float32)
        self.high = np.empty(0, np.float32)

    def update(self, values: np.ndarray) -> None:
        values = values.ravel()
        self.high = self._merge(self.high, values, largest=True)
        self.low = self._merge(self.low, values, largest=False)

    def _merge(self, tail: np.ndarray, values: np.ndarray, largest: bool) -> np.ndarray:
        k = self.keep
        if len(tail) == k:  # once full, only values beyond its k-th can enter
            values = values[values > tail.min()] if largest else values[values < tail.max()]
        merged = np.concatenate([tail, values])
        if len(merged) <= k:
            return merged
        return np.partition(merged, len(merged) - k)[-k:] if largest \
            else np.partition(merged, k - 1)[:k]

    def range(self) -> tuple[float, float]:
        return float(self.low.max()), float(self.high.min())


def _every_tensor_kept(float_model: bytes):
    """An interpreter with no delegate and no memory reuse: every intermediate
    tensor is readable and still holds its own value after invoke()."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    runner = Interpreter(model_content=float_model, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner.allocate_tensors()
    return runner


def record_ranges(float_model: bytes, tensors: Sequence[int], samples: Sequence[np.ndarray],
                  percentile: float) -> dict[int, tuple[float, float]]:
    """(low, high) of each tensor in `tensors` over `samples` fed one at a time."""
    runner = _every_tensor_kept(float_model)
    details = {d["index"]: d for d in runner.get_tensor_details()}
    tails = {i: Tails(len(samples) * int(np.prod(details[i]["shape"])), percentile)
             for i in tensors}
    image = runner.get_input_details()[0]["index"]
    for sample in samples:
        runner.set_tensor(image, sample.astype(np.float32))
        runner.invoke()
        for i, tail in tails.items():
            tail.update(runner.get_tensor(i))
    return {i: tail.range() for i, tail in tails.items()}


# A tensor is a layer's output when their values on one sample agree this
# closely, relative to the layer's largest value (float32 differences between
# TFLite and Keras stay near 1e-5; two different tensors differ by far more).
_SAME_VALUES = 1e-3


def _run_once(float_model: bytes, sample: np.ndarray):
    """The float model run on `sample`, every tensor's value kept."""
    runner = _every_tensor_kept(float_model)
    runner.set_tensor(runner.get_input_details()[0]["index"], sample.astype(np.float32))
    runner.invoke()
    return runner


def match_layers(runner, keras_model, layer_names: Sequence[str],
                 tensors: Sequence[int], sample: np.ndarray) -> dict[int, str]:
    """{tensor: layer} for each of `tensors` of the converted model, run on
    `sample` by `runner` (_run_once), whose values are those of the output of
    one of the layers `layer_names` of `keras_model`, the model it was
    converted from. By value, not by the converter's tensor names, which are
    not published."""
    import keras

    probe = keras.Model(keras_model.input,
                        [keras_model.get_layer(name).output for name in layer_names])
    outputs = probe.predict_on_batch(sample)
    outputs = [np.asarray(o).ravel() for o in (outputs if len(layer_names) > 1 else [outputs])]
    matched = {}
    for i in tensors:
        values = runner.get_tensor(i).ravel()
        best, best_error = None, _SAME_VALUES
        for name, out in zip(layer_names, outputs):
            if out.size == values.size:
                error = np.max(np.abs(out - values)) / max(np.max(np.abs(out)), 1e-12)
                if error < best_error:
                    best, best_error = name, error
        if best is not None:
            matched[i] = best
    return matched


def int8_model(converter: tf.lite.TFLiteConverter, samples: Sequence[np.ndarray],
               percentile: float, mode: Mode,
               output_range: tuple[float, float] | None = None,
               warnings: list[str] | None = None,
               float_ops: Sequence[str] = ("SOFTMAX",),
               float_layers: Sequence[str] = (), trained=None,
               provenance: dict | None = None) -> bytes:
    """The int8 model from `converter` (a float conversion not yet run).
    `output_range`: the output's fixed range, or None to calibrate it (logits).
    `float_ops`: kinds of op left in float when the output is float anyway.
    `float_layers`: Keras layers whose ops stay in float.
    `trained`: (Keras model converted, {layer: (low, high)}), the ranges a
    quantization-aware model trained with; they replace calibration for the
    tensors they match. `provenance` gets how many tensors took trained ranges
    and how many calibrated ones.
    A fallback or a missing layer is noted in `warnings` (the caller may be
    capturing stderr)."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if warnings is None:
        warnings = []
    try:
        return _with_our_ranges(converter, samples, percentile, mode, output_range,
                                float_ops, float_layers, warnings, trained,
                                {} if provenance is None else provenance)
    except tf_internals.InternalMissing as e:
        warnings.append(f"{e}. The int8 model is calibrated by the converter instead "
                        "(plain min/max ranges, no export.calibration_percentile, "
                        "every layer in int8): expect lower int8 accuracy")
        return _with_converter_ranges(converter, samples, mode)


def _with_our_ranges(converter, samples, percentile, mode, output_range,
                     float_ops, float_layers, warnings, trained, provenance) -> bytes:
    # One sample is enough to lay out the min/max slots; ours overwrite them.
    converter.representative_dataset = lambda: iter([[samples[0]]])
    float_model, model = tf_internals.calibrate_only(converter)
    graph = model.subgraphs[0]
    # A custom op (TFLite's detection post-processing) stays float: its outputs
    # need no range, and past its count they hold no values to measure.
    custom = {t for op in graph.operators
              if model.operatorCodes[op.opcodeIndex].customCode for t in op.outputs}
    slots = [i for i in tf_internals.calibration_slots(model) if i not in custom]
    # These ranges are what the values mean, not statistics: pinned, so the uint8
    # input's scale and zero point match the normalisation in the metadata.
    pinned = {graph.inputs[0]: mode.input_range}
    if output_range is not None:
        pinned[graph.outputs[0]] = output_range
    float_nodes = tf_internals.ops_of_layers(graph, float_layers)
    ranges = dict(pinned)
    if trained:
        ranges.update(_trained_ranges(float_model, graph, trained, samples[0],
                                      [i for i in slots if i not in pinned], float_nodes))
    measured = [i for i in slots if i not in ranges]
    if measured:
        ranges.update(record_ranges(float_model, measured, samples, percentile))
    provenance.update(trained=len(slots) - len(pinned) - len(measured),
                      calibrated=len(measured))
    for i in slots:
        lo, hi = ranges[i]
        # The quantizer crashes the process on a scale it cannot represent
        # (after printing "scale out of expressed type range"); refuse first.
        if not np.isfinite(np.float32(hi) - np.float32(lo)):
            raise UserError(f"int8 calibration: tensor {_tensor_name(graph.tensors[i])} has "
                            f"the range [{lo}, {hi}]; the model's activations overflow "
                            "float32, so it cannot be quantized (retrain with a lower "
                            "train.learning_rate)")
    for i in slots:
        lo, hi = ranges[i]
        if i not in pinned:  # pinned ranges mean values; measured ones get the floor
            hi = max(hi, lo + MIN_RANGE_WIDTH)
        graph.tensors[i].quantization.min = [lo]
        graph.tensors[i].quantization.max = [hi]
    # A float output keeps the task's last ops in float (see each task's
    # float_ops: a classifier's softmax, a segmenter's upsampling).
    kept = list(float_ops) if mode.output_type == "float32" and float_ops else None
    if float_layers and not float_nodes:
        warnings.append(f"no op of the layers {', '.join(float_layers)} was found in the "
                        "converted model; they are quantized with the rest (expect "
                        "lower int8 accuracy)")
    return tf_internals.quantize(tf_internals.write_tflite(model),
                                 IO_TYPES[mode.input_type], IO_TYPES[mode.output_type],
                                 kept, float_nodes or None)


# An activation that is (almost) always zero, such as a squeeze-excite branch a
# fine-tune switched off, calibrates to a range like [0, 2e-6]. Its scale then
# makes the next layer's requantization factor smaller than XNNPACK can hold
# (2^-32), and XNNPACK 2.3 corrupts its heap on such a model ("double free or
# corruption" at the first invoke) instead of refusing the node. A floor on the
# width keeps the factor in range and loses nothing the float model had.
MIN_RANGE_WIDTH = 1e-3


def _tensor_name(tensor) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name


def _trained_ranges(float_model, graph, trained, sample, tensors, float_nodes) -> dict:
    """{tensor: range} for the `tensors` that a quantization-aware model's
    trained ranges cover, and for those between ops kept in float, whose
    ranges the quantizer never uses (the sample's extremes lay them out)."""
    keras_model, layer_ranges = trained
    runner = _run_once(float_model, sample)
    matched = match_layers(runner, keras_model, sorted(layer_ranges), tensors, sample)
    ranges = {i: layer_ranges[name] for i, name in matched.items()}
    for i in tensors:
        if i not in ranges and _tensor_name(graph.tensors[i]) in float_nodes:
            values = runner.get_tensor(i)
            ranges[i] = (float(values.min()), float(values.max()))
    return ranges


def _with_converter_ranges(converter, samples, mode: Mode) -> bytes:
    """The public path: the converter calibrates on the samples itself. Two
    constant images at the ends of the input's range pin its quantization to
    what the metadata's normalisation says."""
    ends = [np.full_like(samples[0], value) for value in mode.input_range]
    converter.representative_dataset = lambda: ([sample] for sample in [*ends, *samples])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = IO_TYPES[mode.input_type]
    converter.inference_output_type = IO_TYPES[mode.output_type]
    return converter.convert()
