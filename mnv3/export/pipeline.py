"""TFLite export of a trained run, in three steps: collect the calibration
images (eval images stream, so memory does not grow with the eval set), export
each mode (convert, add metadata, check, evaluate, time), and report. What is
task-specific (scoring, metadata, pictures, report sections) the task's export
half gives. `run(cfg, model_dir)` does them all and publishes model_dir/export/."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import statistics
import time
from functools import partial
from typing import Callable, Iterator

import numpy as np

from mnv3 import tasks
from mnv3.config import Config
from mnv3.console import Progress, say
from mnv3.data import make_pipeline, user_errors_from_data
from mnv3.errors import UserError
from mnv3.files import (make_staging_dir, publish_directory, recover_directory,
                        write_atomically)
from mnv3.model.saved import load_keras_file
from mnv3.results import plots
from mnv3.results.report import format_table, write_report
from mnv3.run_dir import RunDir
from mnv3.tasks import Task
from mnv3.tflite import modes
from mnv3.tflite.check import check_out_of_process
from mnv3.tflite.convert import convert
from mnv3.tflite.evaluate import TFLiteModel
from mnv3.tflite.graph import ExportGraph, export_graph, scale_input
from mnv3.tflite.modes import Mode

STAGING = ".export-new-"


def run(cfg: Config, model_dir: str) -> dict:
    """Exports every mode in cfg.export.quant; returns the report. The files are
    built and checked in a staging folder, then replace export/ as one set."""
    task = tasks.get(cfg)  # the one look-up: everything below is handed it
    run_dir = RunDir(model_dir)
    trained, labels = _load_trained(run_dir, cfg, task)
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
            data = collect(cfg, task)
            target = Target(Graphs(trained, cfg, task), labels, staging)
            keras, reference = keras_row(target, data, run_dir.best_model)
            exported = [export_mode(target, mode, data, reference)
                        for mode in modes.from_config(cfg.export)]
            time_in_turns(exported, cfg.export.latency_runs)
            rows = [keras] + [row for row, _ in exported]
            write_atomically(os.path.join(staging, "labels.txt"), "\n".join(labels) + "\n")
            report = {"model": target.name, "task": task.name,
                      "eval_images": int(reference.count),
                      "threads": cfg.export.threads, "labels": labels,
                      "headline": [list(h) for h in task.export.headline],
                      "agreement": task.export.agreement, "rows": rows,
                      "pictures": draw_pictures(target, reference, run_dir.read_metrics())}
            write_report(report, staging, task.export.report_sections(report))
            publish_directory(staging, run_dir.export)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(format_table(report))
    return report


def _load_trained(run_dir, cfg: Config, task: Task):
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
    classes = task.export.classes_given(model)
    labels = run_dir.read_labels(expected=classes)
    expected = (*task.input_size, 3)
    if tuple(model.input.shape[1:]) != expected or len(labels) != cfg.data.num_classes:
        raise UserError(f"{run_dir.best_model}: model takes {tuple(model.input.shape[1:])} "
                        f"and gives {classes} classes, but the config says "
                        f"{expected} and {cfg.data.num_classes} ({len(labels)} labels)")
    return model, labels


# --- 1. the images -----------------------------------------------------------------

@dataclasses.dataclass
class EvalData:
    calibration: list  # HxWx3 float32 pixels 0..255, one per calibration step
    # Each call reads the eval images afresh, in order: (NxHxWx3 float32 pixels
    # 0..255, N targets: class indices, or masks) per batch, export.eval_images at
    # most in all.
    batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
    expected: int  # eval images listed (images that fail to decode are skipped)


def collect(cfg: Config, task: Task) -> EvalData:
    """Calibration images from the training data (a fixed number, kept), and a
    way to stream the eval images (never all held at once)."""
    pipeline = make_pipeline(cfg, task)
    progress = Progress(cfg.export.calibration_steps, "reading calibration images")
    calibration = []
    with user_errors_from_data(pipeline):
        for x in pipeline.calibration(cfg.export.calibration_steps):
            calibration.append(x.numpy().astype(np.float32))
            progress.add(1)
    progress.close()
    if not calibration:
        raise UserError("no calibration images could be read from the training data")
    say(f"calibration: {len(calibration)} training images read")
    limit = cfg.export.eval_images

    def batches():
        seen = 0
        with user_errors_from_data(pipeline):
            for images, labels in pipeline.eval(batch_size=16):
                take = limit - seen if limit else None
                images = images.numpy()[:take].astype(np.float32)
                targets = pipeline.task.targets(labels.numpy())[:take]
                if len(images):
                    yield images, targets
                seen += len(images)
                if limit and seen >= limit:
                    return

    size = pipeline.source.eval.size
    return EvalData(calibration, batches, min(size, limit) if limit else size)


# --- 2. each mode ------------------------------------------------------------------

class Graphs:
    """Each mode's export graph (tflite/graph.py), built once per kind: float32,
    fp16 and dynamic convert the same float graph."""

    def __init__(self, trained, cfg: Config, task: Task):
        self.trained, self.cfg, self.task = trained, cfg, task
        self._made: dict[tuple, tuple[ExportGraph, object]] = {}

    def get(self, mode: Mode) -> tuple[ExportGraph, object]:
        """(the graph for `mode`, the task's serving function around it: see
        convert)."""
        key = (mode.integer, mode.quantized_input)  # all export_graph reads of a mode
        if key not in self._made:
            graph = export_graph(self.trained, partial(self.task.build, self.cfg), mode,
                                 float_stem=self.cfg.export.int8_float_stem)
            self._made[key] = (graph, self.task.export.serving(graph.model))
        return self._made[key]


class Target:
    """The trained model and what every exported file of it shares."""

    def __init__(self, graphs: Graphs, labels: list[str], out_dir: str):
        self.graphs, self.labels, self.out_dir = graphs, labels, out_dir
        trained, cfg, task = graphs.trained, graphs.cfg, graphs.task
        self.trained, self.cfg, self.task = trained, cfg, task
        height, width = task.input_size
        self.name = f"{trained.name}_{height}" + (f"x{width}" if width != height else "")
        # train.epochs 0: the starting weights as they are, not a model trained here.
        origin = (f"the {cfg.model.init_from} weights as they are, exported with mnv3"
                  if cfg.train.epochs == 0 else "trained with mnv3")
        self.description = (f"MobileNetV3-{cfg.model.variant.capitalize()} (alpha "
                            f"{cfg.model.alpha}) {task.export.description}, {len(labels)} "
                            f"classes, {origin}.")


def keras_row(target: Target, data: EvalData, best_model: str) -> tuple[dict, object]:
    """The trained Keras model's report row, and its scorecard: the reference
    every mode is compared with."""
    reference = target.task.export.scorecard(target.labels, expected=data.expected)
    progress = Progress(data.expected, "keras: evaluating")
    for images, truth in data.batches():
        progress.add(len(images))
        scores = np.asarray(target.trained.predict_on_batch(images))
        if not np.all(np.isfinite(scores)):
            raise UserError(f"{best_model}: gives non-finite scores on the eval images; "
                            "this model cannot be exported (retrain it)")
        reference.add(images, truth, scores)
    progress.close()
    if not reference.count:
        raise UserError("no evaluation images could be read")
    reference.finish()
    say(f"keras: {reference.count} eval images, {reference.summary()}")
    row = {"mode": "keras", "file": os.path.basename(best_model),
           "size_mb": round(os.path.getsize(best_model) / 2**20, 2), "latency_ms": None,
           **reference.row()}
    return row, reference


def export_mode(target: Target, mode: Mode, data: EvalData,
                reference) -> tuple[dict, TFLiteModel]:
    """Converts, labels, checks and evaluates one mode; returns its report row
    (latency still to come, see time_in_turns) and the loaded file."""
    cfg, task_export = target.cfg, target.task.export
    started = time.perf_counter()
    provenance = {}
    tflite = convert_model(target.graphs, mode, data.calibration, provenance)
    mean, std = mode.normalization
    tflite = task_export.metadata(tflite, name=target.name,
                                  description=target.description, labels=target.labels,
                                  mean=mean, std=std)
    path = os.path.join(target.out_dir, f"{target.name}_{mode.name}.tflite")
    write_atomically(path, tflite)
    say(f"{mode.name}: converted in {time.perf_counter() - started:.1f} s "
        f"({len(tflite) / 2**20:.2f} MB); checking and evaluating it")
    # In another process first: a crash there fails the export, not this one.
    check_out_of_process(path, reference.probe, task_export.output_shape())
    model = TFLiteModel(tflite, threads=cfg.export.threads)
    types = (np.dtype(model.input["dtype"]).name, np.dtype(model.output["dtype"]).name)
    if types != (mode.input_type, mode.output_type):
        raise UserError(f"{os.path.basename(path)}: the converter gave {types[0]} input and "
                        f"{types[1]} output, not the {mode.input_type} / {mode.output_type} "
                        f"that {mode.name} means; not published")
    progress = Progress(reference.count, f"{mode.name}: evaluating")
    card = task_export.scorecard(target.labels, reference)
    for images, truth in data.batches():
        card.add(images, truth, _stacked([model(x) for x in images]))
        progress.add(len(images))
    progress.close()
    if card.count != reference.count:
        raise UserError(f"the eval data changed during the export ({card.count} images, "
                        f"{reference.count} before)")
    card.finish()
    return {"mode": mode.name, "file": os.path.basename(path),
            "size_mb": round(len(tflite) / 2**20, 2), "latency_ms": None,
            **({"int8_ranges": int8_ranges(provenance)} if provenance else {}),
            **card.row()}, model


def convert_model(graphs: Graphs, mode: Mode, calibration: list,
                  provenance: dict | None = None) -> bytes:
    """The trained model as a TFLite file of `mode`, without metadata: the graph
    rewrites, the calibration (`calibration`: HxWx3 pixels 0..255) and the
    conversion that every exported file goes through."""
    cfg, task = graphs.cfg, graphs.task
    graph, serve = graphs.get(mode)
    samples = [(scale_input(x) if mode.quantized_input else x)[None]
               for x in calibration] if mode.integer else []
    return convert(graph.model, mode, samples,
                   percentile=cfg.export.calibration_percentile,
                   output_range=task.export.output_range(), float_ops=task.export.float_ops,
                   float_layers=graph.float_layers,
                   trained_ranges=graph.ranges if cfg.export.int8_ranges == "trained"
                   else None, provenance=provenance, serve=serve)


def _stacked(outputs: list):
    """One batch from per-image outputs (arrays, or {name: array})."""
    if isinstance(outputs[0], dict):
        return {name: np.stack([o[name] for o in outputs]) for name in outputs[0]}
    return np.stack(outputs)


def int8_ranges(provenance: dict) -> str:
    """How an int8 file's activation ranges were made, for the report."""
    trained, calibrated = provenance["trained"], provenance["calibrated"]
    if not trained:
        return "calibrated"
    if not calibrated:
        return f"quantization-aware (all {trained} trained)"
    return f"quantization-aware ({trained} trained, {calibrated} calibrated)"


LATENCY_ROUNDS = 5


def time_in_turns(exported: list[tuple[dict, TFLiteModel]], runs: int) -> None:
    """Each row's latency_ms: the median of per-round medians, the files taking
    turns round after round. This machine's speed drifts by 10-20% over
    minutes, so one measurement per file, minutes apart, could rank a faster
    file slower (BENCHMARKS.md, fine-tuning: 1.44 against 1.04 ms for files
    that time 0.87 and 0.87 in turns)."""
    rounds = min(LATENCY_ROUNDS, runs)
    medians = [[] for _ in exported]
    for _ in range(rounds):
        for times, (_, model) in zip(medians, exported):
            times.append(model.latency_ms(runs // rounds))
    for times, (row, _) in zip(medians, exported):
        row["latency_ms"] = round(statistics.median(times), 3)


def draw_pictures(target: Target, reference, records: list[dict]) -> dict:
    """The task's pictures and the training curves of its headline metric, in
    the export folder; {what: file name}."""
    task = target.task
    pictures = task.export.pictures(reference, target.out_dir, target.name)
    if records:
        title = next(t for key, t, _ in task.export.headline if key == task.best_metric)
        plots.curves_png(records, os.path.join(target.out_dir, "curves.png"),
                         task.best_metric, title)
        pictures["curves"] = "curves.png"
    return pictures
