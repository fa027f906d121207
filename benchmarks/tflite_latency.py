"""TFLite latency of our float32 and int8 exports against keras.applications'
MobileNetV3 exported the usual way, one run, same machine, same calibration.

    python benchmarks/tflite_latency.py --variant large --json
    python benchmarks/tflite_latency.py --config configs/camvid.yaml --json

Randomly initialised models at 224 px, 1000 classes: ours in float32, in int8
(the stem in float, the export's default) and in int8 with every layer
quantized (export.int8_float_stem false: our_int8_all); ai-edge-litert with its
default XNNPACK delegate, 1 thread, batch 1; the models take turns for
--rounds rounds of --runs / --rounds invokes each (after warm-up), and each
figure is the median of its per-round medians. keras.applications goes
SavedModel -> TFLiteConverter (full int8, uint8 input, float output),
calibrated on the same images.

With --config, the config's model (any task, at its size) is timed alone, in
the same three forms of ours, calibrated on random pixels.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from functools import partial

from mnv3 import cli


def _keras_applications_tflite(variant: str, size: int, calibration, int8: bool) -> bytes:
    import keras
    import tensorflow as tf

    build = {"small": keras.applications.MobileNetV3Small,
             "large": keras.applications.MobileNetV3Large}[variant]
    model = build(input_shape=(size, size, 3), weights=None)
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([x[None]] for x in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.float32
        return converter.convert()


def _our_models(cfg, calibration) -> dict:
    """Our float32, int8 and all-int8 files of `cfg`'s model, randomly
    initialised, converted as the export converts them; `calibration`: N x H x W
    x 3 pixels 0..255."""
    from mnv3 import tasks
    from mnv3.tflite import modes
    from mnv3.tflite.convert import convert
    from mnv3.tflite.graph import export_graph, scale_input

    task = tasks.get(cfg)
    trained = task.build(cfg)
    build = partial(task.build, cfg)
    files = {"our_float": convert(export_graph(trained, build, modes.get("float32")).model,
                                  modes.get("float32"))}
    int8 = modes.get("int8", cfg.export.int8_input, cfg.export.int8_output)
    samples = [scale_input(x)[None] for x in calibration]
    # our_int8_all: export.int8_float_stem false, to show what the float stem costs.
    for name, float_stem in (("our_int8", True), ("our_int8_all", False)):
        graph = export_graph(trained, build, int8, float_stem=float_stem)
        files[name] = convert(graph.model, int8, samples,
                              percentile=cfg.export.calibration_percentile,
                              output_range=task.export.output_range(),
                              float_ops=task.export.float_ops,
                              float_layers=graph.float_layers)
    return files


def main(argv) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--variant", choices=["small", "large"], default="large")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model, in all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calibration_images", type=int, default=32)
    parser.add_argument("--config", help="time this config's model alone (any task)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --config: a config override (repeatable)")
    parser.add_argument("--json", action="store_true")
    # A bad --config or --set is one line and exit status 2, as in the CLIs.
    return cli.run_command(lambda: _measure(parser.parse_args(argv)))


def _measure(args) -> None:
    import keras
    import numpy as np

    from mnv3.data.synthetic import generate
    from mnv3 import config as config_lib, tasks
    from mnv3.tflite.evaluate import TFLiteModel

    keras.utils.set_random_seed(0)
    result = {"threads": 1, "runs": args.runs, "rounds": args.rounds}
    if args.config:
        result["config"] = args.config
        cfg = config_lib.load(args.config, args.set)
        size = tasks.get(cfg).input_size
        calibration = np.random.default_rng(1).uniform(
            0, 255, (args.calibration_images, *size, 3)).astype(np.float32)
    else:
        result.update(variant=args.variant, image_size=args.image_size)
        cfg = config_lib.load(None, [f"model.variant={args.variant}",
                                     f"data.image_size={args.image_size}",
                                     "data.num_classes=1000"])
        calibration = generate(args.calibration_images, args.image_size,
                               seed=1)[0].astype(np.float32)
    files = _our_models(cfg, calibration)
    if not args.config:
        for mode in ("float", "int8"):
            files[f"keras_{mode}"] = _keras_applications_tflite(
                args.variant, args.image_size, calibration, mode == "int8")
    classifiers = {}
    for name, tflite in files.items():
        classifiers[name] = TFLiteModel(tflite)
        result[f"{name}_mb"] = round(len(tflite) / 2**20, 2)
    # The models take turns, round after round: this machine's speed drifts
    # by 10-20% over minutes, and turns keep that drift out of the ratios.
    medians = {name: [] for name in classifiers}
    for _ in range(args.rounds):
        for name, classifier in classifiers.items():
            medians[name].append(classifier.latency_ms(args.runs // args.rounds))
    for name, values in medians.items():
        result[f"{name}_ms"] = round(statistics.median(values), 3)
    ratios = [("our_int8", "our_float"), ("our_int8", "keras_int8"),
              ("our_float", "keras_float"), ("our_int8", "our_int8_all"),
              ("our_int8_all", "our_float"), ("keras_int8", "keras_float")]
    for top, bottom in ratios:
        if f"{bottom}_ms" in result:
            result[f"{top}_over_{bottom}"] = round(result[f"{top}_ms"] / result[f"{bottom}_ms"], 3)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    cli.main(main)
