"""Images per second of the training input pipeline alone (decode, augment, batch).

    python benchmarks/input_pipeline.py --config configs/imagenette_small.yaml --json

Compare with the training throughput at the same size (benchmarks/train_throughput.py):
input should run several times faster, so it never bounds training.
"""

from __future__ import annotations

import json
import os
import time

from mnv3 import config as config_lib
from mnv3 import cli


def measure(cfg, batches: int, warmup: int) -> dict:
    from mnv3 import tasks
    from mnv3.data import make_pipeline

    pipeline = make_pipeline(cfg, tasks.get(cfg))
    iterator = iter(pipeline.train(epoch=0).repeat())
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        images += int(next(iterator)[0].shape[0])
    seconds = time.perf_counter() - start
    return {"images_per_sec": round(images / seconds, 1), "images": images,
            "seconds": round(seconds, 2), "batch_size": cfg.train.batch_size,
            "image_size": cfg.data.image_size, "source": cfg.data.source,
            "train_crop": cfg.data.train_crop, "cpu_count": os.cpu_count()}


def main(argv) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--config", help="YAML config (defaults when omitted)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object")

    def go():
        args = parser.parse_args(argv)
        cfg = config_lib.load(args.config, args.set)
        result = measure(cfg, args.batches, args.warmup)
        print(json.dumps(result) if args.json else
              f"{result['images_per_sec']} images/s ({result['images']} images in "
              f"{result['seconds']} s)")
    return cli.run_command(go)


if __name__ == "__main__":
    cli.main(main)
