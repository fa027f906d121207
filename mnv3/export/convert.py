"""Keras model -> TFLite flatbuffer, one quantization mode at a time.

Only built-in TFLite ops are allowed (no Flex / SELECT_TF_OPS, which Android apps
without the Flex delegate cannot run); the model goes through a SavedModel with
one named signature, so the .tflite has a `serving_default` signature with input
`image` and output `probabilities`.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from mnv3.errors import UserError, first_line
from mnv3.export import calibrate, rewrite
from mnv3.export.graph import SCALED_INPUT_RANGE
from mnv3.native_output import captured_stderr

MODES = ("float32", "fp16", "dynamic", "int8")
SIGNATURE = "serving_default"
IO_TYPES = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}


def _saved_model(model: keras.Model, directory: str) -> None:
    spec = tf.TensorSpec(model.input.shape, tf.float32, name="image")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=lambda image: {"probabilities": model(image, training=False)},
        input_signature=[spec])
    archive.write_out(directory, verbose=False)


def convert(model: keras.Model, mode: str, samples: Sequence[np.ndarray] = (),
            input_type: str = "uint8", output_type: str = "float32",
            percentile: float = 100.0,
            input_range: tuple[float, float] = SCALED_INPUT_RANGE,
            output_range: tuple[float, float] | None = calibrate.PROBABILITY_RANGE) -> bytes:
    """The .tflite bytes of `model` in `mode`. int8 calibrates on `samples` (model
    inputs, batch 1), with activation ranges at `percentile`, the input's range
    fixed at `input_range` and the output's at `output_range` (None: calibrated,
    for logits)."""
    with tempfile.TemporaryDirectory() as tmp:
        _saved_model(model, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if mode == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif mode == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        try:
            # The converter reports some errors only as native "error:" lines and
            # returns a model anyway: such a model is a failure, not a result.
            with captured_stderr() as log:
                if mode == "int8":
                    tflite = calibrate.int8_model(
                        converter, samples, percentile, input_range, IO_TYPES[input_type],
                        IO_TYPES[output_type], output_range)
                    tflite = rewrite.uint8_input_through_float(tflite)
                else:
                    tflite = converter.convert()
        except UserError:
            raise
        except Exception as e:  # the converter raises many types; name the mode
            raise UserError(f"TFLite conversion ({mode}) failed: {first_line(e, 300)}") \
                from None
        if log.errors():
            sys.stderr.write(log.text)
            raise UserError(f"TFLite conversion ({mode}) reported an error: "
                            f"{log.errors()[0][:300]}")
        return tflite
