"""Quantization-aware training: the rounding it simulates is the int8 file's,
its ranges replace calibration, and a QAT run trains, saves and exports."""

import json
import shutil
from functools import partial

import keras
import numpy as np
import pytest

from mnv3 import config as config_lib
from mnv3 import tasks
from mnv3.model import quantize_aware as qat
from mnv3.tflite import modes
from mnv3.tflite.convert import convert
from mnv3.tflite.evaluate import TFLiteModel
from mnv3.tflite.graph import export_graph, float_layers, scale_input
from tests.conftest import (EXPORT, kill_at_first_checkpoint, shared_directory, tiny_cfg,
                            train_cli, train_here)

INT8 = modes.get("int8")


def _tiny_qat_model(size=32, seed=0):
    keras.utils.set_random_seed(seed)
    cfg = tiny_cfg(f"data.image_size={size}")
    task = tasks.get(cfg)
    model = task.build(cfg)
    return cfg, task, model, qat.quantize_aware(model, float_layers(model))


def test_a_quantize_aware_copy_computes_the_same_until_its_rounding_is_on():
    _, _, model, copy = _tiny_qat_model()
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    for layer in model.layers:
        for ours, theirs in zip(copy.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(copy(pixels), model(pixels), atol=1e-6)
    assert qat.set_quantizing(copy, True) and not qat.set_quantizing(copy, True)
    assert np.abs(copy(pixels, training=True) - model(pixels)).max() > 1e-4
    # Every conv outside the float stem rounds its weights; hard-swish and the
    # SE gate round inside themselves.
    kinds = {type(layer).__name__ for layer in copy.layers}
    assert {"QuantConv2D", "QuantDepthwiseConv2D", "QuantHardSwish",
            "QuantHardSigmoid", "ActivationQuantizer"} <= kinds
    assert type(copy.get_layer("stem_conv")).__name__ == "Conv2D"


def test_weights_round_per_channel_on_the_converters_symmetric_grid():
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1, (3, 3, 4, 8)).astype("float32")
    kernel[..., 5] *= 1e-3  # a narrow channel keeps its own 255 levels
    rounded = np.asarray(qat.quantized_kernel(kernel, 1))
    for c in range(8):
        step = np.abs(kernel[..., c]).max() / 127
        levels = rounded[..., c] / step
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
        np.testing.assert_allclose(rounded[..., c], kernel[..., c], atol=step / 2 + 1e-9)
    # A per-channel factor (a folded BatchNorm) commutes with the rounding.
    scale = rng.uniform(0.1, 10, 8).astype("float32")
    np.testing.assert_allclose(np.asarray(qat.quantized_kernel(kernel * scale, 1)),
                               rounded * scale, rtol=1e-5, atol=1e-9)


@pytest.mark.slow  # converts to int8
def test_the_int8_file_takes_every_trained_range_and_computes_what_the_qat_model_does():
    cfg, task, model, copy = _tiny_qat_model()
    qat.set_quantizing(copy, True)
    rng = np.random.default_rng(1)
    for _ in range(4):  # training-mode batches set the tracked ranges
        copy(rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32"), training=True)
    graph = export_graph(copy, partial(task.build, cfg), INT8, float_stem=True)
    # The export graph's 6x layers get 6x ranges: hard-swish's output...
    low, high = qat.trained_ranges(copy)["head_act"]
    assert graph.ranges["head_act"] == pytest.approx((6 * low, 6 * high))
    samples = [scale_input(rng.uniform(0, 255, (32, 32, 3)).astype("float32"))[None]
               for _ in range(4)]
    provenance = {}
    tflite = convert(graph.model, INT8, samples, output_range=(0.0, 1.0),
                     float_ops=task.export.float_ops,
                     float_layers=graph.float_layers, trained_ranges=graph.ranges,
                     provenance=provenance)
    assert provenance["calibrated"] == 0 and provenance["trained"] > 100
    pixels = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    int8 = np.stack([TFLiteModel(tflite)(x) for x in pixels])
    simulated, unrounded = copy.predict_on_batch(pixels), model.predict_on_batch(pixels)
    # The QAT model is what the int8 file computes, far closer than the float model.
    assert np.abs(int8 - simulated).mean() < 0.5 * np.abs(int8 - unrounded).mean()


@pytest.mark.slow  # converts to int8
def test_a_segmenter_takes_every_trained_range_too():
    cfg = config_lib.load(None, ["task.name=segmentation", "model.alpha=0.35",
                                 "data.image_size=64", "data.num_classes=4"])
    task = tasks.get(cfg)
    model = task.build(cfg)
    copy = qat.quantize_aware(model, float_layers(model))
    qat.set_quantizing(copy, True)
    rng = np.random.default_rng(0)
    copy(rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32"), training=True)
    graph = export_graph(copy, partial(task.build, cfg), INT8, float_stem=True)
    samples = [scale_input(rng.uniform(0, 255, (64, 64, 3)).astype("float32"))[None]]
    provenance = {}
    convert(graph.model, INT8, samples, output_range=task.export.output_range(),
            float_ops=task.export.float_ops, float_layers=graph.float_layers,
            trained_ranges=graph.ranges, provenance=provenance)
    assert provenance["calibrated"] == 0 and provenance["trained"] > 100


def test_qat_epochs_past_the_run_are_refused():
    with pytest.raises(config_lib.ConfigError, match="train.qat_epochs: 3 is more than"):
        tiny_cfg("train.epochs=2", "train.qat_epochs=3")


QAT = ["train.epochs=1", "train.qat_epochs=1", "train.learning_rate=0.002"]


@pytest.fixture(scope="session")
def qat_run(learned_run, tmp_path_factory):
    """A short quantization-aware run from the shared run's best.keras, in a
    real process killed (SIGKILL) after its first checkpoint, resumed here,
    then exported: (run directory, what the kill and the resume showed)."""
    from mnv3.export.pipeline import run as export_run

    extra = [f"model.init_from={learned_run / 'best.keras'}", *QAT,
             "train.checkpoint_every_steps=5"]

    def build(path):
        killed_at = kill_at_first_checkpoint(train_cli(path, *extra), path / "checkpoints")
        code, out = train_here(path, *extra)
        assert code == 0, out[-3000:]
        (path.parent / "qat_run.json").write_text(
            json.dumps({"killed_at": killed_at, "resumed": out}))
        export_run(config_lib.load(str(path / "config.yaml"),
                                   [*EXPORT, "export.quant=[float32, int8]"]), str(path))

    path = shared_directory(tmp_path_factory, "qat_run", build)
    return path, json.loads((path.parent / "qat_run.json").read_text())


@pytest.mark.slow
def test_a_killed_qat_run_resumes_with_its_ranges(qat_run):
    """Killed at its first checkpoint, the run resumes there (the tracked
    ranges with the rest) and finishes its one epoch once."""
    path, log = qat_run
    assert f"resuming from {log['killed_at']}" in log["resumed"]
    metrics = [json.loads(line) for line in open(path / "metrics.jsonl")]
    assert [r["epoch"] for r in metrics] == [1] and metrics[-1]["step"] == 20
    assert len(qat.trained_ranges(keras.saving.load_model(str(path / "best.keras")))) > 100


@pytest.mark.slow
def test_a_qat_run_saves_its_ranges_and_exports_int8_with_them(qat_run, tmp_path):
    run_dir, _ = qat_run
    best = keras.saving.load_model(str(run_dir / "best.keras"))
    assert qat.is_quantize_aware(best)
    ranges = qat.trained_ranges(best)
    assert len(ranges) > 100 and all(low <= 0 <= high and low < high
                                     for low, high in ranges.values())
    report = json.loads((run_dir / "export" / "report.json").read_text())
    rows = {row["mode"]: row for row in report["rows"]}
    assert rows["int8"]["int8_ranges"].startswith("quantization-aware (all ")
    assert "int8_ranges" not in rows["float32"]
    # The QAT model (the keras row) simulates the int8 file.
    assert rows["int8"]["agreement"] >= 0.85
    # 160 images of a tiny, one-epoch model: 0.00-0.044 seen across runs.
    assert abs(rows["int8"]["top1"] - rows["keras"]["top1"]) <= 0.06
    assert "int8: activation ranges quantization-aware" in \
        (run_dir / "export" / "report.md").read_text()

    # export.int8_ranges: calibrated measures them afresh, as a check.
    from mnv3.export.pipeline import run as export_run

    copy = tmp_path / "calibrated"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    cfg = tiny_cfg(f"model.init_from={run_dir / 'best.keras'}", *QAT, *EXPORT,
                   "export.quant=[int8]", "export.int8_ranges=calibrated")
    report = export_run(cfg, str(copy))
    assert report["rows"][1]["int8_ranges"] == "calibrated"
