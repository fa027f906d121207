"""Stage 1 of the search: every candidate built, exported as it will ship (int8,
calibrated on the user's training images) and timed on the target runtime.

Each converted file and its costs are kept in the work folder as they are made,
so an interrupted search converts nothing twice; the latencies are measured in
one sitting, the files taking turns (export.pipeline.time_in_turns), because
this machine's speed drifts over minutes and a ranking must not follow the
drift. Untrained weights time the same as trained ones: the int8 kernels do
not depend on the values."""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np

from mnv3 import tasks
from mnv3.budget import android
from mnv3.budget.candidates import Candidate
from mnv3.config import Config
from mnv3.console import say
from mnv3.data import Pipeline, user_errors_from_data
from mnv3.errors import UserError, first_line
from mnv3.export.pipeline import Graphs, convert_model, time_in_turns
from mnv3.files import write_atomically
from mnv3.model import pretrained
from mnv3.model.cost import summarize
from mnv3.tflite import modes
from mnv3.tflite.evaluate import TFLiteModel

TIMINGS = "timings.json"


def fits_init(cfg: Config, candidates: list[Candidate]) -> dict[tuple, str | None]:
    """For each architecture: None if model.init_from's weights can start it,
    else why not (one line). Without init_from every architecture fits."""
    reasons = {}
    for candidate in candidates:
        arch = candidate.architecture
        if arch in reasons:
            continue
        reasons[arch] = None
        if cfg.model.init_from:
            try:
                c_cfg = candidate.config(cfg)
                pretrained.plan(c_cfg, tasks.get(c_cfg))
            except UserError as e:
                reasons[arch] = f"not trained: {e}"
            keras.backend.clear_session()
    return reasons


def convert_candidate(cfg: Config, candidate: Candidate, source, folder: str) -> dict:
    """Builds and converts one candidate into folder/<name>.tflite; returns its
    row (costs, file size) or, if it cannot be built or converted, the reason.
    The row is kept beside the file, and read back next time."""
    row_path = os.path.join(folder, candidate.name + ".json")
    if os.path.exists(row_path):
        with open(row_path, encoding="utf-8") as f:
            return json.load(f)
    started = time.perf_counter()
    row = {"name": candidate.name}
    try:
        c_cfg = candidate.config(cfg)
        task = tasks.get(c_cfg)
        model = task.build(c_cfg)
        cost = summarize(model)
        row.update(madds=cost["madds"], params=cost["params"])
        pipeline = Pipeline(source, c_cfg, task)
        with user_errors_from_data(pipeline):
            calibration = [x.numpy().astype(np.float32) for x in
                           pipeline.calibration(cfg.budget.calibration_images)]
        mode = modes.get("int8", cfg.export.int8_input, cfg.export.int8_output)
        tflite = convert_model(Graphs(model, c_cfg, task), mode, calibration)
        write_atomically(os.path.join(folder, candidate.name + ".tflite"), tflite)
        row["size_mb"] = round(len(tflite) / 2**20, 3)
    except Exception as e:  # one candidate that cannot be made is a row, not the end
        row["error"] = f"cannot be built or converted: {first_line(e)}"
    finally:
        keras.backend.clear_session()
    row["convert_s"] = round(time.perf_counter() - started, 1)
    write_atomically(row_path, json.dumps(row))
    return row


def measure(cfg: Config, candidates: list[Candidate], source, folder: str) -> dict[str, dict]:
    """{name: row} for every candidate: madds, params, size_mb and latency_ms,
    or an `error`. Reads folder/timings.json when an earlier run finished it."""
    done = os.path.join(folder, TIMINGS)
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            rows = json.load(f)
        if set(rows) == {c.name for c in candidates}:
            say(f"timing: read {len(rows)} candidates' latencies from {done}")
            return rows
    os.makedirs(folder, exist_ok=True)
    unfit = fits_init(cfg, candidates)
    skipped = sum(bool(unfit[c.architecture]) for c in candidates)
    if skipped:
        say(f"timing: {skipped} of {len(candidates)} candidates are networks that "
            f"model.init_from's weights do not fit (listed with the reason); "
            f"{len(candidates) - skipped} to build and convert")
    rows, started, converted, to_convert = {}, time.perf_counter(), 0, len(candidates) - skipped
    for candidate in candidates:
        if unfit[candidate.architecture]:
            rows[candidate.name] = {"name": candidate.name,
                                    "error": unfit[candidate.architecture]}
            continue
        rows[candidate.name] = row = convert_candidate(cfg, candidate, source, folder)
        converted += 1
        spent = time.perf_counter() - started
        say(f"timing: {converted}/{to_convert} {candidate.name} "
            + (row["error"] if "error" in row else f"converted ({row['size_mb']} MB)")
            + f", {_minutes(spent)} so far, about "
            f"{_minutes(spent / converted * (to_convert - converted))} left")
    ready = [row for row in rows.values() if "error" not in row]
    if cfg.budget.adb_serial:
        for row in ready:
            row["latency_ms"] = android.latency_ms(
                os.path.join(folder, row["name"] + ".tflite"), cfg.budget.adb_serial,
                cfg.budget.benchmark_model, cfg.export.threads, cfg.export.latency_runs)
    else:
        say(f"timing: {len(ready)} files in turns, {cfg.export.threads} thread(s), "
            f"{cfg.export.latency_runs} runs each")
        loaded = []
        for row in ready:
            with open(os.path.join(folder, row["name"] + ".tflite"), "rb") as f:
                loaded.append((row, TFLiteModel(f.read(), threads=cfg.export.threads)))
        time_in_turns(loaded, cfg.export.latency_runs)
    for row in ready:
        row["runtime"] = (f"benchmark_model on {cfg.budget.adb_serial}" if cfg.budget.adb_serial
                          else f"LiteRT XNNPACK, {cfg.export.threads} thread(s)")
    write_atomically(done, json.dumps(rows, indent=1))
    return rows


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"
