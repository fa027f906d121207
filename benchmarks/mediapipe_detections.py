"""How often MediaPipe's ObjectDetector, given a run's exported detector and its
held-out photos, returns the detections our interpreter returns (#28's goal: the
same class at IoU 0.9 or more, for at least 95% of the detections above the
score threshold).

    python benchmarks/mediapipe_detections.py --model_dir runs/fruits_qat --json

The run's held-out photos are its config's split, as training made it. Two
comparisons per file, each over the detections scoring `--min_score` or more
on both sides (a detection of one side is matched when the other has one of
the same class at IoU 0.9 or more):
- same_pixels: MediaPipe and our interpreter both get the photo as our
  `predict.resize_like_mediapipe` resizes it: what the file, its metadata and
  its post-processing do in MediaPipe, against our interpreter;
- whole_photos: MediaPipe gets the photo whole, as an app hands it a camera
  frame, and resizes it itself. Our resize matches MediaPipe's bit for bit
  except at positions halfway between two of OpenCV's 1/32-pixel steps
  (tests/test_predict.py), so this also shows how far those few pixels move
  the file's detections.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from mnv3 import cli
from mnv3 import config as config_lib
from mnv3.data.boxes import load_source
from mnv3.errors import UserError
from mnv3.model.anchors import same_detections
from mnv3.predict import read_rgb, resize_like_mediapipe
from mnv3.predict_boxes import Detector
from mnv3.tflite.evaluate import TFLiteModel


def held_out_photos(model_dir: str) -> list[str]:
    """The run's held-out photos, as its config's data source splits them."""
    saved = os.path.join(model_dir, "config.yaml")
    if not os.path.isfile(saved):
        raise UserError(f"{model_dir}: not a run directory (no config.yaml)")
    cfg = config_lib.load([saved], [])
    if cfg.task.name != "detection":
        raise UserError(f"{model_dir}: a {cfg.task.name} run; this compares detectors")
    if cfg.data.source != "folder" or cfg.data.eval_dir:
        raise UserError(f"{model_dir}: its held-out photos are not carved from a "
                        "folder (data.source folder, no data.eval_dir)")
    return list(load_source(cfg.data, cfg.task.max_boxes).eval.paths)


def _ours(model: TFLiteModel, pixels: np.ndarray, min_score: float):
    """Our interpreter's detections scoring `min_score` or more in `pixels`:
    (boxes [N, 4] as [y0, x0, y1, x1] in 0..1, clipped to the photo as
    MediaPipe clips them; class ids [N])."""
    out = model(pixels.astype(np.float32))
    keep = out["detection_scores"][:int(out["num_detections"])] >= min_score
    return (np.clip(out["detection_boxes"][:len(keep)][keep], 0, 1),
            out["detection_classes"][:len(keep)][keep].astype(int))


def _in_whole_pixels(found, labels, height: int, width: int):
    """`_ours`' detections as MediaPipe gives them: class names, and boxes
    [x0, y0, x1, y1] in whole pixels of a `height` x `width` photo (the corner
    and the size each cut to an integer), so that a small box is not told apart
    by MediaPipe's rounding."""
    boxes, classes = found
    y0, x0 = boxes[:, 0] * height, boxes[:, 1] * width
    left, top = x0.astype(int), y0.astype(int)
    right = left + (boxes[:, 3] * width - x0).astype(int)
    bottom = top + (boxes[:, 2] * height - y0).astype(int)
    return (np.stack([left, top, right, bottom], 1).reshape(-1, 4),
            np.array([labels[c] for c in classes]))


def _mediapipe(found):
    """MediaPipe's detections (predict_boxes.Found): boxes [x0, y0, x1, y1] in
    whole pixels, class names."""
    return (np.array([f.box for f in found], np.float32).reshape(-1, 4),
            np.array([f.label for f in found]))


def _agreement(pairs, min_iou: float) -> dict:
    """Counts and matched shares over [(MediaPipe's detections, ours)] per photo."""
    theirs = sum(len(t[0]) for t, _ in pairs)
    ours = sum(len(o[0]) for _, o in pairs)
    return {"mediapipe_detections": theirs, "our_detections": ours,
            "mediapipe_found_by_ours": sum(same_detections(*t, *o, min_iou) for t, o in pairs)
            / max(theirs, 1),
            "ours_found_by_mediapipe": sum(same_detections(*o, *t, min_iou) for t, o in pairs)
            / max(ours, 1)}


def compare(tflite: str, photos: list[str], min_score: float, min_iou: float) -> dict:
    labels = open(os.path.join(os.path.dirname(tflite), "labels.txt")).read().split()
    ours = TFLiteModel(open(tflite, "rb").read())
    height, width = (int(n) for n in ours.input["shape"][1:3])
    mediapipe = Detector(tflite, min_score)
    same_pixels, whole_photos = [], []
    try:
        for photo in photos:
            image = read_rgb(photo)
            resized = resize_like_mediapipe(image, height, width)
            found = _ours(ours, resized, min_score)
            same_pixels.append((_mediapipe(mediapipe.detect_pixels(resized)),
                                _in_whole_pixels(found, labels, height, width)))
            whole_photos.append((_mediapipe(mediapipe.detect_pixels(image)),
                                 _in_whole_pixels(found, labels, *image.shape[:2])))
    finally:
        mediapipe.close()
    return {"file": os.path.basename(tflite), "photos": len(photos),
            "same_pixels": _agreement(same_pixels, min_iou),
            "whole_photos": _agreement(whole_photos, min_iou)}


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--model_dir", required=True, help="a detection run with an export")
    parser.add_argument("--min_score", type=float, default=0.3,
                        help="score threshold on both sides (the export report's)")
    parser.add_argument("--min_iou", type=float, default=0.9)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    # A run that is missing, not a detector's or not exported: one line, exit 2.
    return cli.run_command(lambda: _measure(parser.parse_args(argv)))


def _measure(args) -> None:
    files = sorted(glob.glob(os.path.join(args.model_dir, "export", "*.tflite")))
    photos = held_out_photos(args.model_dir)
    if not files:
        raise UserError(f"{args.model_dir}: no exported .tflite in export/ (run "
                        "export_tflite.py first)")
    result = {"model_dir": args.model_dir, "min_score": args.min_score,
              "min_iou": args.min_iou,
              "files": [compare(f, photos, args.min_score, args.min_iou) for f in files]}
    if args.json:
        print(json.dumps(result))
        return
    for row in result["files"]:
        for how in ("same_pixels", "whole_photos"):
            a = row[how]
            print(f"{row['file']}, {how} ({row['photos']} photos): MediaPipe's "
                  f"{a['mediapipe_detections']} detections, "
                  f"{a['mediapipe_found_by_ours']:.1%} found by ours; ours "
                  f"{a['our_detections']}, {a['ours_found_by_mediapipe']:.1%} found by "
                  "MediaPipe")


if __name__ == "__main__":
    raise SystemExit(main())
