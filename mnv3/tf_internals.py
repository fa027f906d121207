"""Every private TensorFlow, Keras and LiteRT API that mnv3 uses, and only here.

Checked against the versions in CHECKED (those pinned in requirements.txt). An
upgrade may remove or change any of them without notice, so each use checks
what it relies on and raises InternalMissing, naming the internal and the
version to pin, rather than produce a silently different model. Callers with a
public way round it (the int8 export: the converter's own calibration) fall
back to that with a warning; the others stop with the error.

    python -m mnv3.tf_internals   # lists each internal: present, or what is wrong
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Sequence

from mnv3.errors import UserError

CHECKED = {"tensorflow": "2.21.0", "keras": "3.15.1", "ai-edge-litert": "2.3.0"}


class InternalMissing(UserError):
    """A private API that this TensorFlow or Keras lacks or has changed."""

    def __init__(self, internal: str, why: str):
        import keras
        import tensorflow as tf

        self.internal = internal
        checked = ", ".join(f"{name}=={version}" for name, version in CHECKED.items())
        super().__init__(
            f"{internal} {why} in tensorflow {tf.__version__} / keras {keras.__version__}; "
            f"mnv3 was checked with {checked}: pin those (pip install -r requirements.txt)")


# --- .tflite flatbuffers: the schema's object API --------------------------------
# For editing a converted model (mnv3.tflite.rewrite) and reading its calibration
# slots (mnv3.tflite.calibrate). The same schema ships with mediapipe, but only
# TensorFlow's has the object API (ModelT) that can be changed and written back.

def tflite_schema():
    """TensorFlow's generated .tflite schema module (BuiltinOperator, TensorType, ...)."""
    try:
        from tensorflow.lite.python import schema_py_generated
    except ImportError:
        raise InternalMissing("tensorflow.lite.python.schema_py_generated",
                              "cannot be imported") from None
    for name in ("ModelT", "OperatorT", "OperatorCodeT", "BufferT", "BuiltinOperator",
                 "TensorType", "SignatureDefT", "TensorMapT"):
        if not hasattr(schema_py_generated, name):
            raise InternalMissing("tensorflow.lite.python.schema_py_generated",
                                  f"has no {name}")
    return schema_py_generated


def _flatbuffer_utils():
    try:
        from tensorflow.lite.tools import flatbuffer_utils
    except ImportError:
        raise InternalMissing("tensorflow.lite.tools.flatbuffer_utils",
                              "cannot be imported") from None
    for name in ("convert_bytearray_to_object", "convert_object_to_bytearray"):
        if not hasattr(flatbuffer_utils, name):
            raise InternalMissing("tensorflow.lite.tools.flatbuffer_utils", f"has no {name}")
    return flatbuffer_utils


def check_tflite_editing() -> None:
    """Raises InternalMissing unless a .tflite can be read, edited and written."""
    tflite_schema()
    _flatbuffer_utils()


def read_tflite(tflite: bytes):
    """A .tflite as an editable schema ModelT."""
    return _flatbuffer_utils().convert_bytearray_to_object(bytearray(tflite))


def write_tflite(model) -> bytes:
    return bytes(_flatbuffer_utils().convert_object_to_bytearray(model))


# --- The converter's quantizer, fed with ranges we record ourselves -------------
# The same two entry points TensorFlow's QuantizationDebugger uses: a
# calibrate-only conversion gives the float model with a min/max slot on every
# tensor to quantize; mlir_quantize turns the ranges written there into int8.

_CALIBRATE_ONLY = "TFLiteConverter._experimental_calibrate_only"
_QUANTIZE = "tensorflow.lite.python.convert.mlir_quantize"


def _require_calibrate_only(converter) -> None:
    if not hasattr(converter, "_experimental_calibrate_only"):
        raise InternalMissing(_CALIBRATE_ONLY, "does not exist")


def calibrate_only(converter):
    """The float model with empty min/max slots, as bytes and parsed (ModelT).
    The converter must already hold a representative_dataset; one sample is
    enough to lay the slots out."""
    _require_calibrate_only(converter)
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    try:
        calibrated = converter.convert()
    finally:  # the converter stays usable for a plain conversion
        converter._experimental_calibrate_only = False  # pylint: disable=protected-access
    model = read_tflite(calibrated)
    if not calibration_slots(model):
        raise InternalMissing(_CALIBRATE_ONLY, "gave a model without min/max slots")
    return calibrated, model


def calibration_slots(model) -> list[int]:
    """Indices of the tensors of subgraph 0 that carry a min/max slot."""
    return [i for i, t in enumerate(model.subgraphs[0].tensors)
            if t.quantization is not None and t.quantization.min is not None
            and len(t.quantization.min)]


def _mlir_quantize():
    try:
        from tensorflow.lite.python.convert import mlir_quantize
    except ImportError:
        raise InternalMissing(_QUANTIZE, "does not exist") from None
    missing = {"input_data_type", "output_data_type", "denylisted_ops",
               "denylisted_nodes"} - \
        set(inspect.signature(mlir_quantize).parameters)
    if missing:
        raise InternalMissing(_QUANTIZE, f"takes no {', '.join(sorted(missing))}")
    return mlir_quantize


def quantize(calibrated: bytes, input_type, output_type, float_ops,
             float_nodes=None) -> bytes:
    """The int8 model from a calibrate-only model whose min/max slots hold our
    ranges; `float_ops`: kinds of op left in float, `float_nodes`: single ops
    left in float, by their first output tensor's name (None: none)."""
    return _mlir_quantize()(calibrated, input_data_type=input_type,
                            output_data_type=output_type, denylisted_ops=float_ops,
                            denylisted_nodes=float_nodes)


def ops_of_layers(graph, layer_names: Sequence[str]) -> list[str]:
    """The ops of `graph` (a subgraph of a converted model) that compute any of
    the Keras layers `layer_names`, each named by its first output tensor (what
    quantize's float_nodes match). It reads the converter's unpublished naming:
    a tensor is named after every TensorFlow op fused into it, 'model/layer/op'
    parts joined by ';', where a scope may carry a '_N' call-count suffix. If
    that changes, nothing is found, and the caller says so."""
    wanted = set(layer_names)
    found = []
    for op in graph.operators:
        name = graph.tensors[op.outputs[0]].name
        name = name.decode() if isinstance(name, bytes) else name
        scopes = [part.split("/")[1] for part in name.split(";") if part.count("/") >= 2]
        if any(s in wanted or re.sub(r"_\d+$", "", s) in wanted for s in scopes):
            found.append(name)
    return found


# --- Keras: which layer made a symbolic tensor ----------------------------------
# Walking a functional model's graph (mnv3.tflite.graph) needs each input
# tensor's producer; Keras 3 keeps it only in the private _keras_history.

def producer(tensor):
    """The layer whose output `tensor` (a symbolic Keras tensor) is."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or not hasattr(history, "operation"):
        raise InternalMissing("KerasTensor._keras_history.operation", "does not exist")
    return history.operation


# --- Keras optimisers: the hooks a per-variable learning rate overrides ----------
# mnv3.training.optim gives the backbone a lower rate by overriding two of the
# optimiser's private methods (Keras has no parameter groups).

OPTIMIZER_HOOKS = ("_get_variable_index", "_use_weight_decay")


def check_optimizer_hooks(optimizer_class) -> None:
    for name in OPTIMIZER_HOOKS:
        if not callable(getattr(optimizer_class, name, None)):
            raise InternalMissing(f"keras.optimizers.Optimizer.{name}", "does not exist")


# --- Keras optimisers: their slot variables ----------------------------------------
# mnv3.training.fused_steps hands a variable's slots to TensorFlow's fused
# kernels. Keras keeps them in lists indexed as the variables it was built for.

OPTIMIZER_SLOTS = {"Adam": ("_momentums", "_velocities"),
                   "RMSprop": ("_velocities", "_momentums"),  # mean square, momentum
                   "SGD": ("momentums",)}


def optimizer_slots(optimizer, kind: str, variable) -> list:
    """`variable`'s slots in a built Keras optimiser of `kind` (a key of
    OPTIMIZER_SLOTS), in that key's order."""
    check_optimizer_hooks(type(optimizer))
    index = optimizer._get_variable_index(variable)
    slots = []
    for name in OPTIMIZER_SLOTS[kind]:
        held = getattr(optimizer, name, None)
        if not isinstance(held, list) or index >= len(held):
            raise InternalMissing(f"keras.optimizers.{kind}.{name}",
                                  "is not a list of slot variables")
        slots.append(held[index])
    return slots


def _check_optimizer_slots() -> None:
    import keras

    variable = keras.Variable([1.0])
    made = {"Adam": keras.optimizers.Adam(), "SGD": keras.optimizers.SGD(momentum=0.9),
            "RMSprop": keras.optimizers.RMSprop(momentum=0.9)}
    for kind in OPTIMIZER_SLOTS:
        made[kind].build([variable])
        optimizer_slots(made[kind], kind, variable)


# --- LiteRT: the interpreter's list of ops -----------------------------------------
# The public API lists tensors only; tests and the op profiler need the ops.

_INTERPRETER_OPS = "ai_edge_litert Interpreter._get_ops_details"


def _ops_method(interpreter):
    ops = getattr(interpreter, "_get_ops_details", None)
    if not callable(ops):
        raise InternalMissing(_INTERPRETER_OPS, "does not exist")
    return ops


def interpreter_ops(interpreter) -> list[dict]:
    """The ops of a LiteRT Interpreter in execution order (op_name, inputs, outputs)."""
    return _ops_method(interpreter)()


def problems() -> dict[str, str]:
    """{internal: what is wrong} for every internal above; empty when all work."""
    import keras

    checks = {
        "tensorflow.lite.python.schema_py_generated": tflite_schema,
        "tensorflow.lite.tools.flatbuffer_utils": _flatbuffer_utils,
        _QUANTIZE: _mlir_quantize,
        _CALIBRATE_ONLY: _check_calibrate_only,
        "KerasTensor._keras_history.operation":
            lambda: producer(keras.layers.ReLU()(keras.Input((1,)))),
        "keras.optimizers.Optimizer hooks":
            lambda: check_optimizer_hooks(keras.optimizers.Optimizer),
        "keras.optimizers slot lists": _check_optimizer_slots,
        _INTERPRETER_OPS: _check_interpreter_ops,
    }
    found = {}
    for name, check in checks.items():
        try:
            check()
        except InternalMissing as e:
            found[name] = str(e)
    return found


def _check_interpreter_ops() -> None:
    from ai_edge_litert.interpreter import Interpreter

    _ops_method(Interpreter)


def _check_calibrate_only() -> None:
    import tensorflow as tf

    # The attribute is set per instance, in the converter's constructor.
    module = tf.Module()
    module.add_one = tf.function(lambda x: x + 1.0,
                                 input_signature=[tf.TensorSpec([1], tf.float32)])
    _require_calibrate_only(tf.lite.TFLiteConverter.from_concrete_functions(
        [module.add_one.get_concrete_function()], module))


if __name__ == "__main__":
    wrong = problems()
    for name, why in wrong.items():
        print(f"{name}: {why}")
    print("all private APIs present" if not wrong else f"{len(wrong)} missing or changed")
    sys.exit(1 if wrong else 0)
