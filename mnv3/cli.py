"""The command-line entry points (`mnv3-train`, `mnv3-export`, `mnv3-predict`,
`mnv3-tfrecord`, `mnv3-budget`, and the scripts train.py / export_tflite.py / predict.py that
call the same functions), and their shared plumbing: every way a user can get
the input wrong ends in one `error: ...` line on stderr and exit status 2.

Each command is `main(argv) -> exit status`, so tests can run it in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from mnv3.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is our one line (argparse prints the usage
    block first, and its last line then names the program, not the mistake)."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of a module docstring."""
    return _Parser(description=doc.strip().split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config_flags(p: argparse.ArgumentParser, config_help: str,
                     set_example: str = "train.epochs=5", required: bool = False) -> None:
    p.add_argument("--config", action="append", required=required,
                   help=f"{config_help}; repeatable: a later file overrides an earlier "
                   "one key by key (a base config, then a phase's changes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, e.g. --set {set_example} (repeatable)")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def main(command: Callable[[Sequence[str] | None], int]) -> None:
    """Runs a command as a script: its return value is the exit status."""
    sys.exit(command(sys.argv[1:]))


def add_verbose_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show everything TensorFlow, "
                   "the converter and MediaPipe print (hidden by default, and shown "
                   "anyway when a step fails)")


def run_command(fn: Callable[[], object], verbose: bool = True) -> int:
    """Runs fn; bad input becomes one line on stderr and exit status 2. Unless
    `verbose`, what libraries print below Python is held back (native_output)."""
    from mnv3.native_output import libraries_quiet

    try:
        if verbose:
            fn()
        else:
            with libraries_quiet():
                fn()
    except UserError as e:
        return _fail(str(e))
    except OSError as e:
        if e.filename is None:  # not about a path: a real fault, keep the trace
            raise
        return _fail(f"{e.filename}: {e.strerror or e}")
    return 0


def _command(p: argparse.ArgumentParser, argv, body: Callable[[argparse.Namespace], None]):
    """Parses argv (a usage error is our one line), then runs body(args), quiet
    unless --verbose."""
    add_verbose_flag(p)
    try:
        args = p.parse_args(argv)
    except UserError as e:
        return _fail(str(e))
    return run_command(lambda: body(args), args.verbose)


def _quiet_tensorflow() -> None:
    # TensorFlow's own INFO lines (checkpoint sharding, ...) drown our progress.
    from absl import logging

    logging.set_verbosity(logging.WARNING)


def train(argv: Sequence[str] | None = None) -> int:
    """Train a MobileNetV3 classifier, segmenter or detector (config task.name).

    mnv3-train --config configs/quickstart.yaml --model_dir runs/quickstart
    """
    p = parser(train.__doc__)
    add_config_flags(p, "YAML experiment config (see configs/)", required=True)
    p.add_argument("--model_dir", required=True, help="where checkpoints, best.keras, "
                   "logs and the resolved config go; rerun the same command to resume")

    def body(args):
        from mnv3 import config as config_lib

        cfg = config_lib.load(args.config, args.set)
        _quiet_tensorflow()
        from mnv3.training import run

        run(cfg, args.model_dir)
    return _command(p, argv, body)


def export(argv: Sequence[str] | None = None) -> int:
    """Export a trained run to TFLite for Android.

    mnv3-export --model_dir runs/quickstart [--quant float32,int8]
    """
    p = parser(export.__doc__)
    p.add_argument("--model_dir", required=True, help="a run directory written by train.py")
    add_config_flags(p, "config to use instead of the run's saved config.yaml "
                     "(rarely needed)", "export.quant=[int8]")
    p.add_argument("--quant", help="TFLite modes, comma-separated: float32, fp16, dynamic, "
                   "int8 (default: export.quant from the config)")

    def body(args):
        from mnv3 import config as config_lib

        overrides = list(args.set)
        if args.quant:
            overrides.append(f"export.quant=[{args.quant}]")
        cfg = config_lib.load(args.config or [os.path.join(args.model_dir, "config.yaml")],
                              overrides)
        _quiet_tensorflow()
        from mnv3.export.pipeline import run

        run(cfg, args.model_dir)
    return _command(p, argv, body)


def predict(argv: Sequence[str] | None = None) -> int:
    """Top classes (or, for a detector, the boxes) in your own photos, one line per image.

    mnv3-predict --model runs/quickstart/export/mobilenet_v3_small_64_int8.tflite a.jpg b.png
    """
    p = parser(predict.__doc__)
    p.add_argument("--model", required=True, help="a .tflite from export_tflite.py, a "
                   ".keras file, or a run directory (its best.keras and labels.txt)")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, GIF)")
    p.add_argument("--top_k", type=int, default=3, help="classes listed per image")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--min_score", type=float, default=0.3,
                   help="a detector's boxes listed from this score up")
    p.add_argument("--draw", metavar="DIR", help="a detector: also write each photo with "
                   "its boxes to DIR/<name>_boxes.png")

    def body(args):
        if args.top_k < 1:
            raise UserError(f"--top_k {args.top_k}: must be 1 or more")
        from mnv3.predict import Model
        from mnv3.predict_boxes import is_detector_file

        if is_detector_file(args.model):
            return _print_detections(args)
        if args.draw:
            raise UserError(f"--draw: for detectors; {args.model} is not an exported "
                            "detector")
        model = Model(args.model)
        try:
            _print_predictions(model, args)
        finally:
            model.close()
    return _command(p, argv, body)


def _print_predictions(model, args) -> None:
    import json

    for path in args.images:
        result = model.predict(path, args.top_k)
        if args.json:
            print(json.dumps({"image": path, "top": [
                {"index": i, "label": label, "score": round(score, 6)}
                for i, label, score in result.top]}), flush=True)
        else:
            print(f"{path}: " + ", ".join(f"{label} {score:.3f}"
                                          for _, label, score in result.top), flush=True)


def _print_detections(args) -> None:
    import json

    from mnv3.predict_boxes import Detector, draw

    if not 0 <= args.min_score <= 1:
        raise UserError(f"--min_score {args.min_score}: must be 0 to 1")
    if args.draw:
        if os.path.exists(args.draw) and not os.path.isdir(args.draw):
            raise UserError(f"--draw {args.draw}: exists and is not a directory")
        os.makedirs(args.draw, exist_ok=True)
    detector = Detector(args.model, args.min_score)
    try:
        for path in args.images:
            image, found = detector.detect(path)
            if args.json:
                print(json.dumps({"image": path, "detections": [
                    {"label": f.label, "index": f.index, "score": round(f.score, 6),
                     "box": list(f.box)} for f in found]}), flush=True)
            else:
                print(f"{path}: " + (", ".join(
                    f"{f.label} {f.score:.2f} at ({f.box[0]}, {f.box[1]})-({f.box[2]}, "
                    f"{f.box[3]})" for f in found) or
                    f"nothing scoring {args.min_score:g} or more"), flush=True)
            if args.draw:
                stem = os.path.splitext(os.path.basename(path))[0]
                draw(image, found, os.path.join(args.draw, f"{stem}_boxes.png"))
    finally:
        detector.close()


def tfrecord(argv: Sequence[str] | None = None) -> int:
    """Write ImageNet-layout TFRecord shards from a class-per-folder image directory.

    mnv3-tfrecord --src DIR --out DIR [--shards 16] [--prefix train]
    """
    p = parser(tfrecord.__doc__)
    p.add_argument("--src", required=True, help="directory with one sub-folder per class")
    p.add_argument("--out", required=True, help="output directory for the shards")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--prefix", default="train", help="shard name prefix "
                   "(train or validation)")
    p.add_argument("--strict", action="store_true", help="fail on unreadable images")

    def body(args):
        from mnv3.data.tfrecord import write_shards

        count = write_shards(args.src, args.out, args.shards, args.prefix, args.strict)
        print(f"wrote {count} images to {args.out}/{args.prefix}-*")
    return _command(p, argv, body)


def budget(argv: Sequence[str] | None = None) -> int:
    """The most accurate model within a latency budget: time the budget.* grid as
    int8 files, train the front within the budget with your recipe, and write the
    table, a plot and the winning config.

    mnv3-budget --config configs/finetune.yaml --budget_ms 1.5 --out_dir runs/budget
    mnv3-budget --config configs/finetune.yaml --budget_ratio 0.5 --out_dir runs/budget
    """
    p = parser(budget.__doc__)
    add_config_flags(p, "YAML experiment config: your data and recipe (see configs/)",
                     "budget.epochs=5", required=True)
    budget_flags = p.add_mutually_exclusive_group(required=True)
    budget_flags.add_argument("--budget_ms", type=float,
                              help="latency budget of the int8 file, milliseconds per image")
    budget_flags.add_argument("--budget_ratio", type=float, help="the budget as a share of "
                              "the config as given's own int8 latency, timed beside the "
                              "candidates (0.5: half as slow; holds on a slower day too)")
    p.add_argument("--out_dir", required=True, help="where the timings, the trained "
                   "candidates and the results go; rerun the same command to resume "
                   "(or with another budget to reuse the work)")

    def body(args):
        from mnv3 import config as config_lib

        cfg = config_lib.load(args.config, args.set)
        _quiet_tensorflow()
        from mnv3.budget import run

        run(cfg, args.out_dir, budget_ms=args.budget_ms, budget_ratio=args.budget_ratio)
    return _command(p, argv, body)
