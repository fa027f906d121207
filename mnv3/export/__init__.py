"""TFLite export of a trained run: convert each mode, add metadata, check it on
real data and time it. `run(cfg, model_dir)` writes model_dir/export/."""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np

from mnv3.config import Config
from mnv3.errors import UserError
from mnv3.export.report import format_table
from mnv3.files import (make_staging_dir, publish_directory, recover_directory,
                        write_atomically)


def _load_trained(run_dir, cfg: Config):
    from mnv3.model.saved import load_keras_file

    if not os.path.isdir(run_dir.path):
        raise UserError(f"{run_dir.path}: model_dir not found")
    if not os.path.exists(run_dir.best_model):
        raise UserError(f"{run_dir.path}: no best.keras (train first: python train.py "
                        f"--config ... --model_dir {run_dir.path})")
    if not os.path.exists(run_dir.labels):
        raise UserError(f"{run_dir.labels}: missing (written by train.py)")
    damaged = (f"{run_dir.best_model}: damaged or not a Keras model file; rerun train.py "
               "on the run to rewrite it from its checkpoints")
    model = load_keras_file(run_dir.best_model, damaged)
    for weight in model.weights:
        if not np.all(np.isfinite(weight.numpy())):
            raise UserError(f"{run_dir.best_model}: non-finite values in {weight.path}; "
                            "this model cannot be exported (retrain it)")
    labels = run_dir.read_labels(expected=model.output.shape[-1])
    expected = (cfg.data.image_size, cfg.data.image_size, 3)
    if tuple(model.input.shape[1:]) != expected or len(labels) != cfg.data.num_classes:
        raise UserError(f"{run_dir.best_model}: model takes {tuple(model.input.shape[1:])} "
                        f"and gives {model.output.shape[-1]} classes, but the config says "
                        f"{expected} and {cfg.data.num_classes} ({len(labels)} labels)")
    return model, labels


def run(cfg: Config, model_dir: str) -> dict:
    """Exports every mode in cfg.export.quant; returns the report. The files are
    built and checked in a staging folder, then replace export/ as one set."""
    from mnv3.run_dir import RunDir

    run_dir = RunDir(model_dir)
    trained, labels = _load_trained(run_dir, cfg)
    if os.path.exists(run_dir.export) and not os.path.isdir(run_dir.export):
        raise UserError(f"{run_dir.export}: in the way of the export directory "
                        "(a file, not a directory)")
    if not os.access(model_dir, os.W_OK):
        raise UserError(f"{model_dir}: not writable, cannot export")
    with run_dir.export_lock():
        recover_directory(run_dir.export)
        for stale in glob.glob(os.path.join(glob.escape(model_dir), STAGING + "*")):
            shutil.rmtree(stale, ignore_errors=True)  # a killed export's leftovers
        staging = make_staging_dir(model_dir, STAGING)
        try:
            report = _export(cfg, trained, labels, run_dir, staging)
            publish_directory(staging, run_dir.export)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(format_table(report))
    return report


STAGING = ".export-new-"


def _export(cfg: Config, trained, labels: list[str], run_dir, out_dir: str) -> dict:
    from mnv3.data import make_pipeline, user_errors_from_data
    from mnv3.export import convert as convert_lib
    from mnv3.export.calibrate import PROBABILITY_RANGE
    from mnv3.export.check import check_out_of_process
    from mnv3.export.evaluate import Classifier
    from mnv3.export.graph import SCALED_INPUT_RANGE, export_graph, scale_input
    from mnv3.export.metadata import add_metadata
    from mnv3.export.report import write_report

    pipeline = make_pipeline(cfg)
    with user_errors_from_data(pipeline):
        calibration = [x.numpy().astype(np.float32)
                       for x in pipeline.calibration(cfg.export.calibration_steps)]
        if not calibration:
            raise UserError("no calibration images could be read from the training data")
        images, targets = [], []
        for batch, onehot in pipeline.eval(batch_size=64):
            images.append(batch.numpy())
            targets.append(np.argmax(onehot.numpy(), axis=-1))
            if cfg.export.eval_images and sum(map(len, images)) >= cfg.export.eval_images:
                break
    if not images:
        raise UserError("no evaluation images could be read")
    images = np.concatenate(images)[:cfg.export.eval_images].astype(np.float32)
    targets = np.concatenate(targets)[:cfg.export.eval_images]
    keras_scores = trained.predict(images, batch_size=64, verbose=0)
    if not np.all(np.isfinite(keras_scores)):
        raise UserError(f"{run_dir.best_model}: gives non-finite scores on the eval images; "
                        "this model cannot be exported (retrain it)")
    keras_pred = np.argmax(keras_scores, axis=-1)

    name = f"{trained.name}_{cfg.data.image_size}"
    # train.epochs 0: the starting weights as they are, not a model trained here.
    origin = (f"the {cfg.model.init_from} weights as they are, exported with mnv3"
              if cfg.train.epochs == 0 else "trained with mnv3")
    description = (f"MobileNetV3-{cfg.model.variant.capitalize()} (alpha {cfg.model.alpha}) "
                   f"image classifier, {len(labels)} classes, {origin}.")
    rows = [{"mode": "keras", "file": os.path.basename(run_dir.best_model),
             "size_mb": round(os.path.getsize(run_dir.best_model) / 2**20, 2),
             "top1": float(np.mean(keras_pred == targets)), "agreement": 1.0,
             "latency_ms": None}]
    for mode in cfg.export.quant:
        int8 = mode == "int8"
        # uint8 / int8 input carries the normalisation; float input is raw 0..255.
        quantized_input = int8 and cfg.export.int8_input != "float32"
        graph = export_graph(trained, cfg, for_int8=int8, quantized_input=quantized_input)
        samples = [(scale_input(x) if quantized_input else x)[None]
                   for x in calibration] if int8 else []
        tflite = convert_lib.convert(
            graph, mode, samples, cfg.export.int8_input, cfg.export.int8_output,
            percentile=cfg.export.calibration_percentile,
            input_range=SCALED_INPUT_RANGE if quantized_input else (0.0, 255.0),
            output_range=(PROBABILITY_RANGE if cfg.model.classifier_activation == "softmax"
                          else None))
        tflite = add_metadata(tflite, name=name, description=description, labels=labels,
                              mean=127.5 if quantized_input else 0.0,
                              std=127.5 if quantized_input else 1.0)
        path = os.path.join(out_dir, f"{name}_{mode}.tflite")
        write_atomically(path, tflite)
        # In another process first: a crash there fails the export, not this one.
        check_out_of_process(path, images[:4], len(labels))
        classifier = Classifier(tflite, threads=cfg.export.threads)
        pred = np.array([np.argmax(classifier(x)) for x in images])
        rows.append({"mode": mode, "file": os.path.basename(path),
                     "size_mb": round(len(tflite) / 2**20, 2),
                     "top1": float(np.mean(pred == targets)),
                     "agreement": float(np.mean(pred == keras_pred)),
                     "latency_ms": round(classifier.latency_ms(cfg.export.latency_runs), 3)})
    write_atomically(os.path.join(out_dir, "labels.txt"), "\n".join(labels) + "\n")
    report = {"model": name, "eval_images": int(len(targets)), "threads": cfg.export.threads,
              "rows": rows}
    write_report(report, out_dir)
    return report
