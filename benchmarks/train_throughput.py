"""Training throughput (images/s) of our trainer against keras.applications'
MobileNetV3 compiled and fitted plainly, same batch, resolution and data, one run.

    python benchmarks/train_throughput.py --variant small --image_size 224 --batch_size 32 --json

Both train from the same in-memory batches, so only the model and the training
step are compared; each is timed over `--steps` steps after `--warmup` steps.

With `--config` (and `--set KEY=VALUE`), only our step is timed, for that
config's model, image size and batch: the speed of a recipe's training step,
without its data pipeline or evaluation, and its first call (tracing, graph
optimisation and one step: what each training start and phase change pays).

    python benchmarks/train_throughput.py --config configs/cifar10_small.yaml --steps 60 --json

With `--qat` as well, the config's step is timed with and without
quantization-aware training (in the last epoch's phase), taking turns
`--rounds` times, and the ratio is printed: what train.qat_epochs costs.

    python benchmarks/train_throughput.py --config configs/finetune.yaml --qat --json
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import NamedTuple

from mnv3 import cli


def _batches(image_size: int, batch_size: int, classes: int):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = tf.one_hot(rng.integers(0, classes, batch_size), classes)
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


def time_keras_fit(variant, image_size, batch_size, steps, warmup, classes=10) -> float:
    import keras
    import tensorflow as tf

    build = {"small": keras.applications.MobileNetV3Small,
             "large": keras.applications.MobileNetV3Large}[variant]
    model = build(input_shape=(image_size, image_size, 3), weights=None, classes=classes)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    data = _batches(image_size, batch_size, classes).map(
        lambda x, y: (tf.cast(x, tf.float32), y))
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def time_ours(variant, image_size, batch_size, steps, warmup, classes=10,
              steps_per_execution=1) -> float:
    from mnv3 import config as config_lib

    return time_config(config_lib.load(None, [
        f"model.variant={variant}", f"data.image_size={image_size}",
        f"data.num_classes={classes}", f"train.batch_size={batch_size}",
        f"train.steps_per_execution={steps_per_execution}"]), steps, warmup).images_per_sec


class StepTiming(NamedTuple):
    images_per_sec: float
    first_call_seconds: float  # tracing, graph optimisation and one call


def time_config(cfg, steps, warmup) -> StepTiming:
    """Our training step's speed for `cfg`'s model, size and batch."""
    import tensorflow as tf

    from mnv3 import tasks
    from mnv3.data.pipeline import Pipeline
    from mnv3.data.sources import Source, Split
    from mnv3.run_dir import RunDir
    from mnv3.training.strategy import distribute
    from mnv3.training.trainer import Trainer

    image_size, batch_size = cfg.data.image_size, cfg.train.batch_size
    classes = cfg.data.num_classes
    data = _batches(image_size, batch_size, classes)
    split = Split(lambda seed: data, batch_size * steps)
    pipeline = Pipeline(Source(split, split, [str(i) for i in range(classes)]), cfg,
                        tasks.get(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, RunDir(tmp), tf.distribute.get_strategy(), pipeline)
        # The last epoch's phase: the whole network trains (and, with
        # train.qat_epochs, the int8 rounding is on).
        trainer.enter_epoch(max(cfg.train.epochs - 1, 0))
        iterator = iter(distribute(trainer.strategy, data))
        per_call = tf.constant(cfg.train.steps_per_execution)
        start = time.perf_counter()
        trainer.train_batches(iterator, per_call)[1].numpy()
        first_call = time.perf_counter() - start
        for _ in range(warmup - 1):
            trainer.train_batches(iterator, per_call)[1].numpy()
        start = time.perf_counter()
        calls = max(steps // cfg.train.steps_per_execution, 1)
        for _ in range(calls):
            taken = trainer.train_batches(iterator, per_call)[1]
        taken.numpy()
        seconds = time.perf_counter() - start
        return StepTiming(calls * cfg.train.steps_per_execution * batch_size / seconds,
                          first_call)


def main(argv) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--variant", choices=["small", "large"], default="small")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps_per_execution", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--config", help="time only our step, for this config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of --config (repeatable)")
    parser.add_argument("--qat", action="store_true",
                        help="with --config: time it with and without train.qat_epochs")
    parser.add_argument("--rounds", type=int, default=2, help="turns each, with --qat")
    # A bad --config or --set is one line and exit status 2, as in the CLIs.
    return cli.run_command(lambda: _measure(parser.parse_args(argv)))


def _measure(args) -> None:
    if args.config:
        from mnv3 import config as config_lib

        cfg = config_lib.load(args.config, args.set)
        if args.qat:
            return _measure_qat(args, cfg)
        ips, first = time_config(cfg, args.steps, args.warmup)
        result = {"config": args.config, "set": args.set, "image_size": cfg.data.image_size,
                  "batch_size": cfg.train.batch_size, "steps": args.steps,
                  "ours_images_per_sec": round(ips, 1),
                  "first_call_seconds": round(first, 2), "cpu_count": os.cpu_count()}
        print(json.dumps(result) if args.json else
              f"ours {ips:.1f} img/s; first call {first:.2f} s")
        return
    common = (args.variant, args.image_size, args.batch_size, args.steps, args.warmup)
    keras_ips = time_keras_fit(*common)
    ours_ips = time_ours(*common, steps_per_execution=args.steps_per_execution)
    result = {"variant": args.variant, "image_size": args.image_size,
              "batch_size": args.batch_size, "steps": args.steps,
              "steps_per_execution": args.steps_per_execution,
              "keras_applications_fit_images_per_sec": round(keras_ips, 1),
              "ours_images_per_sec": round(ours_ips, 1),
              "ours_over_keras": round(ours_ips / keras_ips, 3),
              "cpu_count": os.cpu_count()}
    print(json.dumps(result) if args.json else
          f"ours {ours_ips:.1f} img/s, keras.applications fit {keras_ips:.1f} img/s "
          f"({ours_ips / keras_ips:.2f}x)")


def _measure_qat(args, cfg) -> None:
    import dataclasses
    import statistics

    rates = {"plain": [], "qat": []}
    configs = {"plain": dataclasses.replace(cfg, train=dataclasses.replace(
                   cfg.train, qat_epochs=0)),
               "qat": dataclasses.replace(cfg, train=dataclasses.replace(
                   cfg.train, qat_epochs=max(cfg.train.qat_epochs, 1)))}
    for _ in range(args.rounds):  # in turns: the machine's speed drifts
        for name, config in configs.items():
            rates[name].append(time_config(config, args.steps, args.warmup).images_per_sec)
    plain, qat = (statistics.median(rates[k]) for k in ("plain", "qat"))
    result = {"config": args.config, "set": args.set, "image_size": cfg.data.image_size,
              "batch_size": cfg.train.batch_size, "steps": args.steps,
              "rounds": args.rounds, "plain_images_per_sec": round(plain, 1),
              "qat_images_per_sec": round(qat, 1),
              "qat_time_over_plain": round(plain / qat, 3), "cpu_count": os.cpu_count()}
    print(json.dumps(result) if args.json else
          f"plain {plain:.1f} img/s, quantization-aware {qat:.1f} img/s "
          f"({plain / qat:.2f}x the time)")


if __name__ == "__main__":
    cli.main(main)
