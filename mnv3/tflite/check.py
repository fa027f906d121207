"""Loads and runs an exported .tflite in a separate process, before it is
published: a model with broken quantization can crash the interpreter (a
segfault or an abort), and that must fail the export, not the user's app.

    python -m mnv3.tflite.check MODEL.tflite IMAGES.npy 1000  # exit 0: it runs
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import numpy as np

from mnv3.errors import UserError
from mnv3.tflite.evaluate import TFLiteModel


def check_out_of_process(path: str, images: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raises UserError unless the model at `path` loads and gives finite outputs
    of `shape` (per image) on every image (HxWx3 pixels 0..255)."""
    with tempfile.NamedTemporaryFile(suffix=".npy") as f:
        np.save(f, images.astype(np.float32))
        f.flush()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        result = subprocess.run(
            [sys.executable, "-m", "mnv3.tflite.check", os.path.abspath(path), f.name,
             "x".join(map(str, shape))], capture_output=True, text=True, env=env, timeout=600)
    name = os.path.basename(path)
    if result.returncode < 0:
        sig = signal.Signals(-result.returncode).name
        raise UserError(f"{name}: the TFLite interpreter crashed running it ({sig}); "
                        "not published")
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no output"]
        raise UserError(f"{name}: fails its check ({lines[-1][:300]}); not published")


def main(argv) -> int:
    path, images_path = argv[0], argv[1]
    shape = tuple(int(n) for n in argv[2].split("x"))
    with open(path, "rb") as f:
        model = TFLiteModel(f.read())
    for image in np.load(images_path):
        out = model(image)
        if out.shape != shape:
            print(f"gives an output of shape {out.shape}, expected {shape}", file=sys.stderr)
            return 1
        if not np.all(np.isfinite(out)):
            print("gives non-finite outputs", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
