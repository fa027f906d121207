"""Latency on an Android phone: the file pushed with adb and timed by TFLite's
`benchmark_model` (the prebuilt binary from the TensorFlow Lite performance
docs, pushed once to budget.benchmark_model). benchmark_model does its own
warm-up and reports the mean of its timed runs in microseconds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from mnv3.errors import UserError

REMOTE_DIR = "/data/local/tmp"
# e.g. "Inference timings in us: Init: 3505, First inference: 27154, Warmup
# (avg): 24416.8, Inference (avg): 24188.5"
AVERAGE = re.compile(r"Inference \(avg\): ([0-9.eE+]+)")
TIMEOUT_S = 600


def _adb(serial: str, *args: str) -> str:
    if shutil.which("adb") is None:
        raise UserError("budget.adb_serial: adb is not on PATH (install Android's "
                        "platform-tools)")
    try:
        done = subprocess.run(["adb", "-s", serial, *args], capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"adb -s {serial} {args[0]}: no answer in {TIMEOUT_S} s") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"adb -s {serial} {args[0]}: failed ({said[-1] if said else 'exit status ' + str(done.returncode)})")
    return done.stdout + done.stderr


def latency_ms(path: str, serial: str, binary: str, threads: int, runs: int) -> float:
    """Mean latency of the .tflite at `path` on the device, in milliseconds."""
    remote = f"{REMOTE_DIR}/{os.path.basename(path)}"
    _adb(serial, "push", path, remote)
    said = _adb(serial, "shell", binary, f"--graph={remote}", f"--num_threads={threads}",
                f"--num_runs={runs}", "--use_xnnpack=true")
    found = AVERAGE.findall(said)
    if not found:
        raise UserError(f"{binary} on {serial}: no 'Inference (avg)' in its output; is "
                        "budget.benchmark_model TFLite's benchmark_model?")
    return round(float(found[-1]) / 1000, 3)
