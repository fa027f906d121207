"""Keras model -> TFLite flatbuffer, one quantization mode at a time.

Only built-in TFLite ops are allowed (no Flex / SELECT_TF_OPS, which Android apps
without the Flex delegate cannot run); the model goes through a SavedModel with
one named signature, so the .tflite has a `serving_default` signature with input
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


def save_graph(model: keras.Model, directory: str, serve=None) -> None:
    """`model` as the SavedModel the converter reads (`serve`: see convert)."""
    spec = tf.TensorSpec(model.input.shape, tf.float32, name="image")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=serve or (lambda image: {"probabilities": model(image, training=False)}),
        input_signature=[spec])
    archive.write_out(directory, verbose=False)


def convert(model: keras.Model, mode: Mode, samples: Sequence[np.ndarray] = (),
            percentile: float = 100.0,
            output_range: tuple[float, float] | None = None,
            float_ops: Sequence[str] = (),
            float_layers: Sequence[str] = (),
            trained_ranges: dict | None = None,
            provenance: dict | None = None,
            serve=None, saved: str | None = None) -> bytes:
    """The .tflite bytes of `model` in `mode`. An integer mode calibrates on
    `samples` (model inputs, batch 1), with activation ranges at `percentile`,
    the input's range fixed at mode.input_range and the output's at
    `output_range` (None: calibrated, for logits); with a float output, the
    `float_ops` near it stay in float, and so do the Keras layers
    `float_layers` (calibrate.int8_model). `trained_ranges`: {layer: (low,
    high)} of a quantization-aware model, used where they match instead of
    calibrated ranges; `provenance` gets the counts of each. `serve`: image ->
    {output name: tensor} around `model`, for a file whose outputs are not the
    model's own (tflite/postprocess.py); its TFLite custom ops are allowed
    (TFLite's own detection post-processing, which every runtime has).
    `saved`: where save_graph already wrote `model` and `serve` (modes that
    share a graph share the write); None writes them here."""
    with tempfile.TemporaryDirectory() as tmp:
        if saved is None:
            saved = tmp
            save_graph(model, saved, serve)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.allow_custom_ops = serve is not None
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
                                                  float_layers,
                                                  (model, trained_ranges) if trained_ranges
                                                  else None, provenance)
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
