"""Peak memory of an export against the size of its eval set: the eval images
stream, so 20,000 images at 224 px should take about what 1,000 do.

    python benchmarks/export_memory.py --images 1000,20000 --json

Each size gets a folder of JPEGs (synthetic shapes, 10 classes) and a run with
an untrained MobileNetV3-Small at 224 px (accuracy is not the point), then
`export_tflite.py` in its own process; its peak resident memory is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_images(folder: str, count: int, size: int = 224) -> None:
    import tensorflow as tf

    from mnv3.data.synthetic import CLASS_NAMES, generate

    unique = min(count, 500)  # encoded once each, then written under many names
    images, labels = generate(unique, size, seed=0)
    encoded = [tf.io.encode_jpeg(image).numpy() for image in images]
    for name in CLASS_NAMES:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for i in range(count):
        k = i % unique
        with open(os.path.join(folder, CLASS_NAMES[labels[k]], f"{i:06d}.jpg"), "wb") as f:
            f.write(encoded[k])


def make_run(model_dir: str, folder: str) -> None:
    from mnv3 import config as config_lib
    from mnv3 import tasks
    from mnv3.model.layers import with_keras_batch_norm
    from mnv3.run_dir import RunDir
    from mnv3.data.synthetic import CLASS_NAMES

    cfg = config_lib.load(None, [
        "model.alpha=0.35", "data.image_size=224", "data.source=folder",
        f"data.train_dir={folder}", f"data.eval_dir={folder}",
        "export.quant=[float32, int8]", "export.calibration_steps=64",
        "export.latency_runs=5"])
    run_dir = RunDir(model_dir)
    run_dir.ensure_writable()
    run_dir.save_config(cfg)
    run_dir.save_labels(list(CLASS_NAMES))
    with_keras_batch_norm(tasks.get(cfg).build(cfg)).save(run_dir.best_model)


def peak_rss_mb(model_dir: str) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of export_tflite.py on `model_dir`, run alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "export_tflite.py"),
                    "--model_dir", model_dir], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KB, largest child so far
    if peak <= before:
        raise RuntimeError("measure the larger sizes after the smaller ones")
    return peak / 1024, seconds


def main(argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="1000,20000",
                        help="eval set sizes, ascending (ru_maxrss keeps the largest child)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in [int(x) for x in args.images.split(",")]:
            folder = os.path.join(tmp, f"images{count}")
            model_dir = os.path.join(tmp, f"run{count}")
            make_images(folder, count)
            make_run(model_dir, folder)
            rss, seconds = peak_rss_mb(model_dir)
            with open(os.path.join(model_dir, "export", "report.json")) as f:
                evaluated = json.load(f)["eval_images"]
            results.append({"eval_images": evaluated, "peak_rss_mb": round(rss, 1),
                            "export_seconds": round(seconds, 1)})
            print(json.dumps(results[-1]) if args.json else
                  f"{evaluated} eval images: peak RSS {rss:.0f} MB, {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
