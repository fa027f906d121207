"""Where a .tflite's time goes: each op timed alone, in a model of its own.

    python benchmarks/tflite_op_profile.py --variant large --mode int8 --json
    python benchmarks/tflite_op_profile.py --model runs/X/export/NAME_int8.tflite --json

XNNPACK runs a whole delegated graph as one node, so TFLite's op profiler sees
one op. Here every op becomes a one-op model (same tensors, quantization and
weights), run with ai-edge-litert's default XNNPACK delegate, 1 thread, on
zeros; `delegated` says whether XNNPACK took it. The sum runs a little over the
whole model's time (one invoke per op, no fusion across ops).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time


def _single_op_models(tflite: bytes):
    """One model per op of `tflite`, in graph order (the file is parsed once)."""
    import numpy as np

    from mnv3 import tf_internals

    model = tf_internals.read_tflite(tflite)
    model.signatureDefs = []
    graph = model.subgraphs[0]
    weights = {i for i, t in enumerate(graph.tensors) if model.buffers[t.buffer].data is not None
               and len(model.buffers[t.buffer].data)}
    for op in list(graph.operators):
        graph.operators = [op]
        graph.inputs = np.array([i for i in op.inputs if i >= 0 and i not in weights], np.int32)
        graph.outputs = np.array(op.outputs, np.int32)
        yield tf_internals.write_tflite(model)


def profile(tflite: bytes, runs: int) -> list[dict]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from mnv3.tf_internals import interpreter_ops

    # Without the delegate, its node does not join the list of ops.
    whole = Interpreter(model_content=tflite,
                        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    rows = []
    ops = interpreter_ops(whole)
    for index, (op, single) in enumerate(zip(ops, _single_op_models(tflite), strict=True)):
        runner = Interpreter(model_content=single, num_threads=1)
        runner.allocate_tensors()
        for d in runner.get_input_details():
            runner.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        try:
            runner.invoke()
        except RuntimeError:  # e.g. a RESHAPE whose shape input, all zeros here, is computed
            rows.append({"index": index, "op": op["op_name"], "ms": None})
            continue
        for _ in range(10):
            runner.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            runner.invoke()
            times.append(time.perf_counter() - start)
        output = runner.get_output_details()[0]
        rows.append({"index": index, "op": op["op_name"],
                     "output_shape": [int(x) for x in output["shape"]],
                     "dtype": output["dtype"].__name__,
                     "delegated": any(o["op_name"] == "DELEGATE"
                                      for o in interpreter_ops(runner)),
                     "ms": round(statistics.median(times) * 1e3, 4)})
    return rows


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a .tflite file (else --variant is built)")
    parser.add_argument("--variant", choices=["small", "large"], default="large")
    parser.add_argument("--mode", choices=["float", "int8"], default="int8")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--top", type=int, default=10, help="slowest ops listed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.model:
        tflite = open(args.model, "rb").read()
    else:
        import keras
        import numpy as np

        from benchmarks.tflite_latency import _our_tflite
        from mnv3.data.synthetic import generate

        keras.utils.set_random_seed(0)
        calibration = generate(32, args.image_size, seed=1)[0].astype(np.float32)
        tflite = _our_tflite(args.variant, args.image_size, calibration, args.mode == "int8")
    rows = profile(tflite, args.runs)
    by_op = collections.defaultdict(float)
    timed = [row for row in rows if row["ms"] is not None]
    for row in timed:
        by_op[row["op"]] += row["ms"]
    result = {"model": args.model or f"our {args.variant} {args.mode}, {args.image_size} px",
              "ops": len(rows), "sum_ms": round(sum(r["ms"] for r in timed), 3),
              "ms_by_op": {k: round(v, 3) for k, v in sorted(by_op.items(), key=lambda x: -x[1])},
              "not_delegated": [r for r in timed if not r["delegated"]],
              "not_timed": [r for r in rows if r["ms"] is None],
              "slowest": sorted(timed, key=lambda r: -r["ms"])[:args.top]}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
