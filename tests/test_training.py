import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnv3 import config as config_lib
from mnv3.training import run
from mnv3.training import optim
from tests.conftest import ROOT, assert_one_line_error, run_cli

# Tiny and quick: MobileNetV3-Small at alpha 0.35 on 32 px synthetic shapes.
TINY = ["model.alpha=0.35", "model.dropout=0.0", "model.bn_momentum=0.9",
        "data.image_size=64", "data.synthetic_images=800", "data.crop_scale=[0.6, 1.0]",
        "data.val_fraction=0.2",
        "train.batch_size=32", "train.learning_rate=0.02", "train.warmup_epochs=0.5",
        "train.weight_decay=0.0", "train.log_every_steps=5"]


def tiny_cfg(*extra):
    return config_lib.load(None, TINY + list(extra))


def read_metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_cli(model_dir, *extra, env=None, **kwargs):
    args = ["train.py", "--config", os.path.join(ROOT, "configs", "quickstart.yaml"),
            "--model_dir", str(model_dir)]
    for item in TINY + list(extra):
        args += ["--set", item]
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, **kwargs)


def test_training_learns_and_inference_mode_tracks_training(tmp_path):
    model_dir = tmp_path / "run"
    learn = ["train.epochs=6", "data.synthetic_images=2000", "train.learning_rate=0.06"]
    run(tiny_cfg(*learn), str(model_dir))
    last = read_metrics(model_dir)[-1]
    assert last["epoch"] == 6 and last["step"] == 6 * (1600 // 32)
    assert last["train_top1"] > 0.4  # chance is 0.1
    # BatchNorm moving statistics must fit the run: inference-mode accuracy on
    # held-out images tracks the training-mode accuracy.
    assert last["eval_top1"] > 0.4 and last["eval_top1"] > last["train_top1"] - 0.15
    for name in ["config.yaml", "labels.txt", "best.keras", "checkpoints", "tb"]:
        assert os.path.exists(model_dir / name), name
    assert (model_dir / "labels.txt").read_text().split()[:2] == ["disc", "square"]
    assert config_lib.load(str(model_dir / "config.yaml")) == tiny_cfg(*learn)

    # best.keras is the best epoch's model; eval mode reproduces its accuracy.
    best_top1 = max(r["eval_top1"] for r in read_metrics(model_dir))
    metrics = run(tiny_cfg(*learn, "train.mode=eval"), str(model_dir))
    assert metrics["top1"] <= best_top1 + 1e-6
    # best.keras is plain Keras: it loads in a process that cannot import mnv3.
    load = "import sys, keras; print(keras.saving.load_model(sys.argv[1]).output.shape)"
    out = subprocess.run([sys.executable, "-c", load, str(model_dir / "best.keras")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(None, 10)" in out.stdout


def test_kill_9_and_resume(tmp_path):
    model_dir = tmp_path / "run"
    extra = ["train.epochs=3", "train.checkpoint_every_steps=5"]
    proc = train_cli(model_dir, *extra)
    checkpoints = model_dir / "checkpoints"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if checkpoints.exists() and any(f.startswith("ckpt-") and f.endswith(".index")
                                        for f in os.listdir(checkpoints)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = tf.train.latest_checkpoint(str(checkpoints))
    assert killed_at is not None

    resumed = train_cli(model_dir, *extra)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert f"resuming from {killed_at}" in out
    metrics = read_metrics(model_dir)
    assert [r["epoch"] for r in metrics][-1] == 3
    assert metrics[-1]["step"] == 3 * 20


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model_dir = tmp_path / "run"
    run(tiny_cfg("train.epochs=1", "train.optimizer=sgd"), str(model_dir))
    good = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    proc = train_cli(model_dir, "train.epochs=2", "train.optimizer=sgd",
                     "train.learning_rate=10", "train.base_batch_size=1",
                     "train.schedule=constant", "train.warmup_epochs=0")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert "training loss became" in last and "checkpoint" in last
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")) == good
    reader = tf.train.load_checkpoint(good)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


def test_ema_weights_are_evaluated_and_saved(tmp_path):
    from mnv3.data import make_pipeline
    from mnv3.run_dir import RunDir
    from mnv3.training.trainer import Trainer

    cfg = tiny_cfg("train.epochs=1", "train.ema_decay=0.9999")
    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.ensure_writable()
    trainer = Trainer(cfg, run_dir, tf.distribute.get_strategy(), make_pipeline(cfg))
    trainer.fit()
    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    raw = trainer.model(images, training=False).numpy()
    saved = keras.saving.load_model(run_dir.best_model)(images, training=False).numpy()
    assert not np.allclose(raw, saved, atol=1e-4)  # best.keras holds other weights...
    trainer.ema.on_test_begin()
    np.testing.assert_allclose(trainer.model(images, training=False).numpy(), saved,
                               atol=1e-5)  # ...the moving averages
    trainer.ema.on_test_end()
    np.testing.assert_allclose(trainer.model(images, training=False).numpy(), raw, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16"])  # the loss-scaling path
def test_mixed_precision_trains_and_saves_a_float32_output(tmp_path, policy):
    model_dir = tmp_path / "run"
    run(tiny_cfg("train.epochs=1", "data.synthetic_images=320",
                 f"runtime.mixed_precision={policy}"), str(model_dir))
    assert keras.mixed_precision.dtype_policy().name == policy
    last = read_metrics(model_dir)[-1]
    assert np.isfinite(last["train_loss"]) and last["step"] == 256 // 32
    model = keras.saving.load_model(str(model_dir / "best.keras"))
    assert model.get_layer("stem_conv").compute_dtype == policy.split("_")[1]
    assert model.output.dtype == "float32"
    run(tiny_cfg("train.epochs=1", "data.synthetic_images=320"), str(tmp_path / "next"))
    assert keras.mixed_precision.dtype_policy().name == "float32"  # nothing leaks


def test_errors_in_use_are_one_line(tmp_path, write_yaml):
    model_dir = tmp_path / "run"
    run(tiny_cfg("train.epochs=1"), str(model_dir))
    result = run_cli("train.py", "--config", "configs/quickstart.yaml", "--model_dir",
                     str(model_dir), *sum((["--set", s] for s in TINY), []),
                     "--set", "model.alpha=0.5")
    assert_one_line_error(result, "model.alpha=0.35", "new --model_dir")

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("train.py", "--config", "configs/quickstart.yaml", "--model_dir",
                     str(blocker / "run"), *sum((["--set", s] for s in TINY), []))
    assert_one_line_error(result, "not writable")

    result = run_cli("train.py", "--config", "configs/quickstart.yaml", "--model_dir",
                     str(tmp_path / "empty"), "--set", "train.mode=eval")
    assert_one_line_error(result, "no checkpoint to evaluate")

    result = run_cli("train.py", "--config", "configs/quickstart.yaml", "--model_dir",
                     str(tmp_path / "x"), "--set", "data.source=folder",
                     "--set", f"data.train_dir={tmp_path / 'nowhere'}")
    assert_one_line_error(result, "data directory not found")
    assert not (tmp_path / "x").exists()


def test_schedules_and_weight_decay_targets():
    cfg = config_lib.load(None, ["train.learning_rate=0.1", "train.batch_size=512",
                                 "train.base_batch_size=256", "train.schedule=exponential",
                                 "train.warmup_epochs=1", "train.decay_epochs=3",
                                 "train.decay_rate=0.5", "train.epochs=10"]).train
    schedule = optim.make_schedule(cfg, steps_per_epoch=10)
    lr = lambda step: float(schedule(step))
    assert optim.peak_learning_rate(cfg) == pytest.approx(0.2)
    assert lr(0) == pytest.approx(0.02) and lr(9) == pytest.approx(0.2)
    # Staircase after the 10 warm-up steps: halve every 30 steps.
    assert lr(10) == pytest.approx(0.2) and lr(39) == pytest.approx(0.2)
    assert lr(40) == pytest.approx(0.1) and lr(70) == pytest.approx(0.05)
    cosine = optim.make_schedule(config_lib.load(None, ["train.epochs=10"]).train, 10)
    values = [float(cosine(s)) for s in range(0, 100, 5)]
    assert values.index(max(values)) == 2 and values[-1] < 0.05 * max(values)

    from mnv3.config import ModelConfig
    from mnv3.model import build_model
    model = build_model(ModelConfig(alpha=0.35), 32, 10)
    kernels = optim.decayed_weights(model)
    assert kernels and all(v.path.endswith("kernel") for v in kernels)
    assert not any("_bn" in v.path or "bias" in v.path for v in kernels)
    rms = optim.make_optimizer(config_lib.load(None, ["train.optimizer=rmsprop"]).train, 10)
    assert rms.epsilon == pytest.approx(0.002 ** 0.5) and rms.rho == 0.9


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_train_one_model_on_loopback(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(train_cli(tmp_path / "run", "train.epochs=1",
                               "runtime.strategy=multi_worker_mirrored",
                               env={"TF_CONFIG": tf_config}))
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=400)
        outputs.append(out)
        assert proc.returncode == 0, out[-3000:]
    checksums = [line for out in outputs for line in out.splitlines()
                 if line.startswith("weights checksum")]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert "2 replica(s)" in outputs[0]
    metrics = read_metrics(tmp_path / "run")  # written by the chief alone
    assert len(metrics) == 1 and metrics[0]["step"] == 640 // 32
    assert metrics[0]["train_images"] == 640 // 32 * 32
