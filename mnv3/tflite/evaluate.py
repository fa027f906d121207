"""Runs .tflite files with ai-edge-litert: accuracy on real data, latency."""

from __future__ import annotations

import statistics
import time

import numpy as np


def interpreter(model: bytes, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model, num_threads=threads)
    runner.allocate_tensors()
    return runner


class TFLiteModel:
    """Feeds 0..255 RGB pixels to a .tflite, quantizing them the way its input says."""

    def __init__(self, model: bytes, threads: int = 1):
        self.runner = interpreter(model, threads)
        self.input = self.runner.get_input_details()[0]
        # By signature name: a detector's four outputs are known by name, not order.
        self.outputs = self.runner.get_signature_runner().get_output_details()
        self.output = next(iter(self.outputs.values()))

    def _read(self, details: dict) -> np.ndarray:
        out = self.runner.get_tensor(details["index"])[0]
        scale, zero = details["quantization"]
        if details["dtype"] != np.float32 and scale:
            out = (out.astype(np.float32) - zero) * scale
        return out

    def _prepare(self, pixels: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return pixels.astype(np.float32)
        if dtype == np.uint8:  # the graph's quantization carries the normalisation
            return np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        # int8 input: pixels shifted by 128 mean the same as the uint8 form
        return (np.clip(np.round(pixels), 0, 255) - 128).astype(np.int8)

    def __call__(self, pixels: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """The output for one HxWx3 image, dequantized ({name: output} for a
        file with several)."""
        self.runner.set_tensor(self.input["index"], self._prepare(pixels)[None])
        self.runner.invoke()
        if len(self.outputs) == 1:
            return self._read(self.output)
        return {name: self._read(details) for name, details in self.outputs.items()}

    def latency_ms(self, runs: int = 50, warmup: int = 5) -> float:
        """Median wall time of one invoke on a fixed input."""
        shape = self.input["shape"]
        pixels = np.random.default_rng(0).uniform(0, 255, shape[1:]).astype(np.float32)
        self.runner.set_tensor(self.input["index"], self._prepare(pixels)[None])
        for _ in range(warmup):
            self.runner.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.runner.invoke()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)
