"""TFLite export of a trained run: convert each mode, add metadata, check it on
real data and time it. `run(cfg, model_dir)` writes model_dir/export/."""

from __future__ import annotations

import os

import numpy as np

from mnv3.config import Config
from mnv3.errors import UserError


def _load_trained(run_dir, cfg: Config):
    import keras

    if not os.path.isdir(run_dir.path):
        raise UserError(f"{run_dir.path}: model_dir not found")
    if not os.path.exists(run_dir.best_model):
        raise UserError(f"{run_dir.path}: no best.keras (train first: python train.py "
                        f"--config ... --model_dir {run_dir.path})")
    if not os.path.exists(run_dir.labels):
        raise UserError(f"{run_dir.labels}: missing (written by train.py)")
    try:
        model = keras.saving.load_model(run_dir.best_model, compile=False)
    except Exception as e:  # corrupt or foreign files raise many types
        raise UserError(f"{run_dir.best_model}: cannot be loaded "
                        f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})") from None
    labels = run_dir.read_labels()
    expected = (cfg.data.image_size, cfg.data.image_size, 3)
    if tuple(model.input.shape[1:]) != expected or model.output.shape[-1] != len(labels) \
            or len(labels) != cfg.data.num_classes:
        raise UserError(f"{run_dir.best_model}: model takes {tuple(model.input.shape[1:])} "
                        f"and gives {model.output.shape[-1]} classes, but the config says "
                        f"{expected} and {cfg.data.num_classes} ({len(labels)} labels)")
    return model, labels


def run(cfg: Config, model_dir: str) -> dict:
    """Exports every mode in cfg.export.quant; returns the report."""
    from mnv3.data import make_pipeline
    from mnv3.export import convert as convert_lib
    from mnv3.export.calibrate import PROBABILITY_RANGE
    from mnv3.export.evaluate import Classifier
    from mnv3.export.graph import SCALED_INPUT_RANGE, export_graph, scale_input
    from mnv3.export.metadata import add_metadata
    from mnv3.export.report import format_table, write_report
    from mnv3.files import write_atomically
    from mnv3.training.run_dir import RunDir

    run_dir = RunDir(model_dir)
    trained, labels = _load_trained(run_dir, cfg)
    out_dir = os.path.join(model_dir, "export")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot create the export directory "
                        f"({e.strerror or e})") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"{out_dir}: export directory is not writable")

    pipeline = make_pipeline(cfg)
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
    images = np.concatenate(images)[:cfg.export.eval_images].astype(np.float32)
    targets = np.concatenate(targets)[:cfg.export.eval_images]
    keras_pred = np.argmax(trained.predict(images, batch_size=64, verbose=0), axis=-1)

    name = f"{trained.name}_{cfg.data.image_size}"
    description = (f"MobileNetV3-{cfg.model.variant.capitalize()} (alpha {cfg.model.alpha}) "
                   f"image classifier, {len(labels)} classes, trained with mnv3.")
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
    print(format_table(report))
    return report
