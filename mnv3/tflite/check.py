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


def _shape_text(shape: tuple[int, ...] | dict) -> str:
    """`shape` for the command line: 1x2x3, or name=1x2;count= for several outputs."""
    if isinstance(shape, dict):
        return ";".join(f"{name}={_shape_text(s)}" for name, s in shape.items())
    return "x".join(map(str, shape))


def _parse_shape(text: str) -> tuple[int, ...] | dict:
    if "=" in text:
        return {name: _parse_shape(s) for name, s in
                (part.split("=") for part in text.split(";"))}
    return tuple(int(n) for n in text.split("x") if n)


def check_out_of_process(path: str, images: np.ndarray,
                         shape: tuple[int, ...] | dict) -> None:
    """Raises UserError unless the model at `path` loads and gives finite outputs
    of `shape` (per image; {output name: shape} for a file with several) on
    every image (HxWx3 pixels 0..255)."""
    with tempfile.NamedTemporaryFile(suffix=".npy") as f:
        np.save(f, images.astype(np.float32))
        f.flush()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        result = subprocess.run(
            [sys.executable, "-m", "mnv3.tflite.check", os.path.abspath(path), f.name,
             _shape_text(shape)], capture_output=True, text=True, env=env, timeout=600)
    name = os.path.basename(path)
    if result.returncode < 0:
        sig = signal.Signals(-result.returncode).name
        said = result.stderr.strip().splitlines()
        raise UserError(f"{name}: the TFLite interpreter crashed running it ({sig}"
                        + (f": {said[-1][:300]}" if said else "") + "); not published")
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no output"]
        raise UserError(f"{name}: fails its check ({lines[-1][:300]}); not published")


def main(argv) -> int:
    path, images_path = argv[0], argv[1]
    expected = _parse_shape(argv[2])
    with open(path, "rb") as f:
        model = TFLiteModel(f.read())
    for image in np.load(images_path):
        out = model(image)
        outputs, shapes = (out, expected) if isinstance(expected, dict) else \
            ({"output": out}, {"output": expected})
        if set(outputs) != set(shapes):
            print(f"gives the outputs {sorted(outputs)}, expected {sorted(shapes)}",
                  file=sys.stderr)
            return 1
        for name, value in outputs.items():
            if value.shape != shapes[name]:
                print(f"gives {name} of shape {value.shape}, expected {shapes[name]}",
                      file=sys.stderr)
                return 1
            if not np.all(np.isfinite(value)):
                print(f"gives non-finite {name}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
