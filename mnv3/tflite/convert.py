"""Keras model -> TFLite flatbuffer, one quantization mode at a time.

Only built-in TFLite ops are allowed (no Flex / SELECT_TF_OPS, which Android apps
without the Flex delegate cannot run). The converter reads the traced serving
function itself, and the .tflite gets a `serving_default` signature with input
`image` and output `probabilities` (or the outputs a task's own serving function
names: a detector's boxes, classes, scores and count).
"""

from __future__ import annotations

import sys
import tempfile
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mnv3 import tf_internals
from mnv3.errors import UserError, first_line
from mnv3.tflite import calibrate, rewrite
from mnv3.tflite.modes import Mode
from mnv3.native_output import captured_stderr

SIGNATURE = "serving_default"
INPUT, OUTPUT = "image", "probabilities"  # the signature's names for a model's own output


def save_graph(model: keras.Model, directory: str, serve=None) -> None:
    """`model` as a SavedModel with the signature the .tflite gets (`serve`: see
    convert)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=_serving(model, serve),
                         input_signature=[_image_spec(model)])
    archive.write_out(directory, verbose=False)


def _image_spec(model: keras.Model) -> tf.TensorSpec:
    return tf.TensorSpec(model.input.shape, tf.float32, name=INPUT)


def _serving(model: keras.Model, serve=None):
    return serve or (lambda image: {OUTPUT: model(image, training=False)})


def _converter(model: keras.Model, serve, folder: str):
    """A converter for `model` (and `serve`), and the edit the file it makes
    needs after (None: none). From the traced function itself, the converter
    gives the same ops and values as through a SavedModel written to `folder`
    and read back, in less time (BENCHMARKS.md, export time), but no signature
    and no TFLite custom op: both are written into the file after. Where the
    file cannot be edited (mnv3.tf_internals), the SavedModel is the way: its
    importer fuses the op that `serve` declares."""
    if not rewrite.can_edit():
        save_graph(model, folder, serve)
        return tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE]), None
    function = tf.function(serve.head if serve else _serving(model)).get_concrete_function(
        _image_spec(model))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.experimental_lower_to_saved_model = False
    outputs = list(serve.outputs) if serve else [OUTPUT]
    appended = serve.finish if serve else (lambda tflite: tflite)
    return converter, lambda tflite: rewrite.with_signature(
        appended(tflite), SIGNATURE, [INPUT], outputs)


def convert(model: keras.Model, mode: Mode, samples: Sequence[np.ndarray] = (),
            percentile: float = 100.0,
            output_range: tuple[float, float] | None = None,
            float_ops: Sequence[str] = (),
            float_layers: Sequence[str] = (),
            trained_ranges: dict | None = None,
            provenance: dict | None = None,
            serve=None) -> bytes:
    """The .tflite bytes of `model` in `mode`. An integer mode calibrates on
    `samples` (model inputs, batch 1), with activation ranges at `percentile`,
    the input's range fixed at mode.input_range and the output's at
    `output_range` (None: calibrated, for logits); with a float output, the
    `float_ops` near it stay in float, and so do the Keras layers
    `float_layers` (calibrate.int8_model). `trained_ranges`: {layer: (low,
    high)} of a quantization-aware model, used where they match instead of
    calibrated ranges; `provenance` gets the counts of each. `serve`: for a
    file whose outputs are not the model's own, what it computes around
    `model` (postprocess.DetectorServing: `head` converted, then `finish`ed;
    called whole on the SavedModel way, whose TFLite custom ops are allowed:
    TFLite's own detection post-processing, which every runtime has)."""
    with tempfile.TemporaryDirectory() as folder:
        converter, finish = _converter(model, serve, folder)
        tflite = _convert(converter, mode, samples, percentile, output_range, float_ops,
                          float_layers, (model, trained_ranges) if trained_ranges else None,
                          provenance, custom_ops=serve is not None and finish is None)
    return finish(tflite) if finish else tflite


def _convert(converter, mode: Mode, samples, percentile, output_range, float_ops,
             float_layers, trained, provenance, custom_ops: bool) -> bytes:
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = custom_ops
    if mode.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode.weight_type:
        converter.target_spec.supported_types = [tf.as_dtype(mode.weight_type)]
    warnings = []
    try:
        # The converter reports some errors only as native "error:" lines and
        # returns a model anyway: such a model is a failure, not a result.
        with captured_stderr() as log:
            if mode.integer:
                tflite = calibrate.int8_model(converter, samples, percentile, mode,
                                              output_range, warnings, float_ops,
                                              float_layers, trained, provenance)
            else:
                tflite = converter.convert()
    except UserError:
        raise
    except Exception as e:  # the converter raises many types; name the mode
        raise UserError(f"TFLite conversion ({mode.name}) failed: {first_line(e, 300)}") \
            from None
    if log.errors():
        sys.stderr.write(log.text)
        raise UserError(f"TFLite conversion ({mode.name}) reported an error: "
                        f"{log.errors()[0][:300]}")
    if mode.integer:
        try:
            tflite = rewrite.uint8_input_through_float(tflite)
        except tf_internals.InternalMissing as e:  # the same model, only slower
            warnings.append(f"{e}; the uint8 input's QUANTIZE is left as the converter "
                            "made it (slower under XNNPACK)")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return tflite
