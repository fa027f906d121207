"""Edits of a converted .tflite that leave every value it computes unchanged.

with_signature: a conversion from a traced function (tflite/convert.py) has no
signature; apps, MediaPipe and the LiteRT signature runner find the input and
outputs by the names one gives.

uint8_input_through_float: the converter's int8 model starts with a uint8 ->
int8 QUANTIZE. XNNPACK does not take that requantize, so TFLite's own kernel runs
it element by element: 0.108 ms at 224 px, 3.5% of MobileNetV3-Large in int8
(benchmarks/tflite_op_profile.py). As uint8 -> float32 (DEQUANTIZE) -> int8
(QUANTIZE), both steps run in XNNPACK, 0.017 ms together.
The int8 values are the same: the two ends share one scale, and every uint8
level is exact in float32.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from mnv3 import tf_internals


def _builtin(code) -> int:
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _opcode_index(model, schema, builtin: int, version: int) -> int:
    for i, code in enumerate(model.operatorCodes):
        if _builtin(code) == builtin:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)  # the old int8 field tops out at 127
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def uint8_input_through_float(tflite: bytes) -> bytes:
    """`tflite` with its uint8 input's QUANTIZE to int8 split into DEQUANTIZE to
    float32 and QUANTIZE from it; unchanged if it has no such QUANTIZE."""
    schema = tf_internals.tflite_schema()
    model = tf_internals.read_tflite(tflite)
    graph = model.subgraphs[0]
    image = int(graph.inputs[0])
    first = [i for i, op in enumerate(graph.operators) if image in op.inputs]
    if len(first) != 1 or graph.tensors[image].type != schema.TensorType.UINT8:
        return tflite
    quantize = graph.operators[first[0]]
    if _builtin(model.operatorCodes[quantize.opcodeIndex]) != schema.BuiltinOperator.QUANTIZE:
        return tflite

    as_float = copy.deepcopy(graph.tensors[image])
    as_float.name = graph.tensors[image].name + b"_float"
    as_float.type = schema.TensorType.FLOAT32
    as_float.quantization = None
    model.buffers.append(schema.BufferT())  # empty: computed, not a constant
    as_float.buffer = len(model.buffers) - 1
    graph.tensors.append(as_float)
    as_float_index = len(graph.tensors) - 1

    dequantize = schema.OperatorT()
    dequantize.opcodeIndex = _opcode_index(model, schema, schema.BuiltinOperator.DEQUANTIZE, 1)
    dequantize.inputs = np.array([image], np.int32)
    dequantize.outputs = np.array([as_float_index], np.int32)
    quantize.inputs = np.array([as_float_index], np.int32)
    graph.operators.insert(first[0], dequantize)
    return tf_internals.write_tflite(model)


def can_edit() -> bool:
    """Whether this TensorFlow has what the edits here need (tf_internals)."""
    try:
        tf_internals.check_tflite_editing()
    except tf_internals.InternalMissing:
        return False
    return True


def with_signature(tflite: bytes, key: str, inputs: Sequence[str],
                   outputs: Sequence[str]) -> bytes:
    """`tflite` with the signature `key` naming its first subgraph's inputs and
    outputs, in their order; unchanged if it has a signature already."""
    schema = tf_internals.tflite_schema()
    model = tf_internals.read_tflite(tflite)
    if model.signatureDefs:
        return tflite
    graph = model.subgraphs[0]
    if (len(graph.inputs), len(graph.outputs)) != (len(inputs), len(outputs)):
        raise ValueError(f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs "
                         f"to name, not {len(inputs)} and {len(outputs)}")

    def tensor_map(name: str, index) -> object:
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, int(index)
        return entry
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = key, 0
    signature.inputs = [tensor_map(n, i) for n, i in zip(inputs, graph.inputs)]
    signature.outputs = [tensor_map(n, i) for n, i in zip(outputs, graph.outputs)]
    model.signatureDefs = [signature]
    return tf_internals.write_tflite(model)


def with_custom_op(tflite: bytes, name: str, options: bytes,
                   constants: Sequence[np.ndarray], output_shapes: Sequence[tuple]) -> bytes:
    """`tflite` with the custom op `name` appended: its inputs the graph's
    outputs then `constants` (float32), its float32 outputs of `output_shapes`
    the graph's new outputs; `options`, the op's FlexBuffer settings."""
    schema = tf_internals.tflite_schema()
    model = tf_internals.read_tflite(tflite)
    graph = model.subgraphs[0]

    def tensor(shape, tensor_name: str, data: np.ndarray | None = None) -> int:
        made = schema.TensorT()
        made.shape = np.array(shape, np.int32)
        made.type, made.name = schema.TensorType.FLOAT32, tensor_name
        buffer = schema.BufferT()
        if data is not None:
            buffer.data = np.frombuffer(np.ascontiguousarray(data, np.float32).tobytes(),
                                        np.uint8)
        model.buffers.append(buffer)
        made.buffer = len(model.buffers) - 1
        graph.tensors.append(made)
        return len(graph.tensors) - 1

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode, code.version = name, 1
    model.operatorCodes.append(code)
    op = schema.OperatorT()
    op.opcodeIndex = len(model.operatorCodes) - 1
    op.inputs = np.array([*graph.outputs, *(tensor(c.shape, f"{name}/constant{i}", c)
                                            for i, c in enumerate(constants))], np.int32)
    op.outputs = np.array([tensor(shape, f"{name}/output{i}")
                           for i, shape in enumerate(output_shapes)], np.int32)
    op.customOptions = np.frombuffer(options, np.uint8)
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    graph.operators.append(op)
    graph.outputs = op.outputs.copy()
    return tf_internals.write_tflite(model)
