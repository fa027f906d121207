import json
import os
import shutil
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnv3 import config as config_lib
from mnv3.training import run
from mnv3.training import optim
from mnv3.training.strategy import distribute
from mnv3 import cli
from mnv3.data.pipeline import train_image_size
from mnv3.errors import UserError
from tests.conftest import (LEARN, SMALL, TINY, assert_one_line_error, call_cli, read_metrics,
                            tiny_cfg, train_cli)

@pytest.mark.slow
def test_training_learns_and_inference_mode_tracks_training(learned_run):
    model_dir = learned_run
    metrics = read_metrics(model_dir)
    last = metrics[-1]
    assert last["epoch"] == 6 and last["step"] == 6 * (1600 // 32)
    assert last["train_top1"] > 0.4  # chance is 0.1
    # BatchNorm moving statistics must fit the run: inference-mode accuracy on
    # held-out images tracks the training-mode accuracy.
    assert last["eval_top1"] > 0.4 and last["eval_top1"] > last["train_top1"] - 0.15
    for name in ["config.yaml", "labels.txt", "best.keras", "checkpoints", "tb"]:
        assert os.path.exists(model_dir / name), name
    assert (model_dir / "labels.txt").read_text().split()[:2] == ["disc", "square"]
    assert config_lib.load(str(model_dir / "config.yaml")) == tiny_cfg(*LEARN)

    # Eval mode restores the newest checkpoint and gives its epoch's figures,
    # writing nothing.
    before = sorted(os.listdir(model_dir))
    evaluated = run(tiny_cfg(*LEARN, "train.mode=eval"), str(model_dir))
    assert evaluated["top1"] == pytest.approx(last["eval_top1"], abs=1e-6)
    assert sorted(os.listdir(model_dir)) == before
    # best.keras is the best epoch's model: it scores the best eval top-1.
    from tests.conftest import make_pipeline

    best = keras.saving.load_model(str(model_dir / "best.keras"))
    right = total = 0
    for images, labels in make_pipeline(tiny_cfg(*LEARN)).eval():
        scores = best(images, training=False).numpy()
        right += int(np.sum(np.argmax(scores, -1) == np.argmax(labels.numpy(), -1)))
        total += len(scores)
    assert right / total == pytest.approx(max(r["eval_top1"] for r in metrics), abs=1e-6)
    # best.keras is plain Keras: it loads in a process that cannot import mnv3.
    # (mnv3 is installed, so the process blocks the import itself.)
    load = ("import sys; sys.modules['mnv3'] = None; import keras; "
            "print(keras.saving.load_model(sys.argv[1]).output.shape)")
    out = subprocess.run([sys.executable, "-c", load, str(model_dir / "best.keras")],
                         cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(None, 10)" in out.stdout


def _fitted_trainer(tmp_path, cfg, pipeline=None):
    """A Trainer in a new run directory under tmp_path, after fit(): (trainer, run_dir)."""
    from tests.conftest import make_pipeline
    from mnv3.run_dir import RunDir
    from mnv3.training.trainer import Trainer

    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.ensure_writable()
    trainer = Trainer(cfg, run_dir, tf.distribute.get_strategy(),
                      pipeline or make_pipeline(cfg))
    trainer.fit()
    return trainer, run_dir


@pytest.fixture(scope="module")
def schedule_run(tmp_path_factory):
    """One run for the two tests below: 3 epochs on 160 images, trained at 32,
    32 then 48 px (data.train_image_sizes) and evaluated after epochs 2 and 3
    (train.eval_every_epochs 2): (pipeline, trainer after fit(), run_dir)."""
    from tests.conftest import make_pipeline

    cfg = tiny_cfg("train.epochs=3", "data.synthetic_images=160",
                   "data.train_image_sizes=[32,48]", "train.eval_every_epochs=2")
    pipeline = make_pipeline(cfg)
    return (pipeline, *_fitted_trainer(tmp_path_factory.mktemp("schedule"), cfg, pipeline))


@pytest.mark.slow
def test_eval_every_epochs_evaluates_on_its_epochs_and_the_last(schedule_run, tmp_path):
    from mnv3.results.plots import curves_png

    _, trainer, run_dir = schedule_run
    records = read_metrics(run_dir.path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert ["eval_top1" in r for r in records] == [False, True, True]
    # best.keras is the better of the evaluated epochs, and the run knows its score.
    assert float(trainer.best.value.numpy()) == pytest.approx(
        max(records[1]["eval_top1"], records[2]["eval_top1"]))
    assert trainer.evaluate()["top1"] == pytest.approx(records[2]["eval_top1"], abs=1e-6)
    # The training curves still draw, from records where eval skips epochs.
    curves_png(records, str(tmp_path / "curves.png"))
    assert os.path.getsize(tmp_path / "curves.png") > 10_000


def test_resolution_schedule_stages():
    cfg = config_lib.load(None, ["train.epochs=10", "data.train_image_sizes=[96,112,128]"])
    assert [train_image_size(cfg, e) for e in range(10)] == [96] * 4 + [112] * 3 + [128] * 3
    assert train_image_size(config_lib.load(None, ["data.image_size=160"]), 5) == 160


@pytest.mark.slow
def test_a_resolution_schedule_trains_at_its_sizes_and_saves_at_image_size(schedule_run,
                                                                          tmp_path):
    from mnv3.training.best import BestModel

    pipeline, trainer, run_dir = schedule_run
    assert [tuple(pipeline.train(e).element_spec[0].shape[1:3]) for e in range(3)] == \
        [(32, 32), (32, 32), (48, 48)]
    records = read_metrics(run_dir.path)
    assert [r["train_image_size"] for r in records] == [32, 32, 48]
    assert all(np.isfinite(r["train_loss"]) for r in records)
    assert [r.get("eval_images", 0) > 0 for r in records] == [False, True, True]
    # Evaluated and saved at data.image_size (64), as the export expects.
    saved = keras.saving.load_model(run_dir.best_model)
    assert tuple(saved.input.shape[1:]) == (64, 64, 3)
    # The last epoch's weights (whatever eval chose), saved as best.keras is.
    last = BestModel(str(tmp_path / "last.keras"), (64, 64), True, trainer.keeper)
    last.save(trainer.model, 0.0)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.saving.load_model(last.path)(images, training=False).numpy(),
        trainer.model(images, training=False).numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16"])  # the loss-scaling path
def test_mixed_precision_trains_and_saves_a_float32_output(tmp_path, policy):
    model_dir = tmp_path / "run"
    run(tiny_cfg("train.epochs=1", "data.synthetic_images=160",
                 f"runtime.mixed_precision={policy}"), str(model_dir))
    assert keras.mixed_precision.dtype_policy().name == policy
    last = read_metrics(model_dir)[-1]
    assert np.isfinite(last["train_loss"]) and last["step"] == 128 // 32
    model = keras.saving.load_model(str(model_dir / "best.keras"))
    assert model.get_layer("stem_conv").compute_dtype == policy.split("_")[1]
    assert model.output.dtype == "float32"
    # Nothing leaks into the next run, even one that stops at its data.
    with pytest.raises(UserError, match="data directory not found"):
        run(tiny_cfg("data.source=folder", f"data.train_dir={tmp_path / 'nowhere'}"),
            str(tmp_path / "next"))
    assert keras.mixed_precision.dtype_policy().name == "float32"


def _train_args(model_dir, *overrides):
    args = ["--config", "configs/quickstart.yaml", "--model_dir", str(model_dir)]
    for item in overrides:
        args += ["--set", item]
    return args


@pytest.mark.slow
def test_another_architecture_on_an_existing_run_is_one_line(safety_run):
    before = sorted(os.listdir(safety_run))
    result = call_cli(cli.train, *_train_args(safety_run, *TINY, *SMALL, "model.alpha=0.5"))
    assert_one_line_error(result, "model.alpha=0.35", "new --model_dir")
    assert sorted(os.listdir(safety_run)) == before


@pytest.mark.parametrize("where, overrides, fragment", [
    ("file/run", TINY, "not writable"),  # a file stands where a directory must go
    ("empty", ["train.mode=eval"], "no checkpoint to evaluate"),
    ("x", ["data.source=folder", "data.train_dir=NOWHERE"], "data directory not found"),
])
def test_errors_in_use_are_one_line_and_write_nothing(tmp_path, where, overrides, fragment):
    (tmp_path / "file").write_text("not a directory")
    overrides = [o.replace("NOWHERE", str(tmp_path / "nowhere")) for o in overrides]
    result = call_cli(cli.train, *_train_args(tmp_path / where, *overrides))
    assert_one_line_error(result, fragment)
    assert sorted(os.listdir(tmp_path)) == ["file"]


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
    # As the paper's TF code: no decay on depthwise kernels when asked.
    pointwise = optim.decayed_weights(model, depthwise=False)
    depthwise = [v for v in kernels if "_depthwise/" in v.path]
    assert depthwise and len(pointwise) == len(kernels) - len(depthwise)
    assert not any("_depthwise/" in v.path for v in pointwise)


def _steps(optimizer, variables, gradients):
    """`optimizer`'s steps on `variables` (one per gradient list), traced as
    training traces them; returns the op types of the traced step."""
    step = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
    for grads in gradients:
        step(grads)
    return [op.type for op in step.get_concrete_function(gradients[0]).graph.get_operations()]


@pytest.mark.parametrize("settings, kernel", [
    (["train.optimizer=adamw", "train.weight_decay=0.1"], "ResourceApplyAdam"),
    (["train.optimizer=adamw", "train.weight_decay=0"], "ResourceApplyAdam"),
    (["train.optimizer=rmsprop"], "ResourceApplyRMSProp"),
    (["train.optimizer=sgd"], "ResourceApplyKerasMomentum"),
    (["train.optimizer=sgd", "train.nesterov=true"], "ResourceApplyKerasMomentum"),
])
def test_fused_steps_are_keras_steps_in_one_kernel_per_variable(settings, kernel):
    cfg = config_lib.load(None, ["train.learning_rate=0.05", "train.warmup_epochs=0",
                                 "train.clip_grad_norm=3.0", *settings]).train
    rng = np.random.default_rng(0)
    start = [rng.normal(size=shape).astype(np.float32) for shape in [(3, 4), (4,), (2, 2)]]
    gradients = [[tf.constant(rng.normal(size=w.shape).astype(np.float32)) for w in start]
                 for _ in range(6)]
    ours, theirs = ([keras.Variable(w) for w in start] for _ in range(2))
    fused = optim.make_optimizer(cfg, 10)
    # Keras' own class with the same settings: its update_step, op by op.
    keras_class = next(c for c in type(fused).__mro__ if c.__module__.startswith("keras."))
    ops = _steps(fused, ours, gradients)
    _steps(keras_class.from_config(fused.get_config()), theirs, gradients)
    assert ops.count(kernel) == len(ours), ops
    for a, b, w in zip(ours, theirs, start):
        assert abs(a.numpy() - w).max() > 0.01  # it moved
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_rmsprop_divides_by_the_root_of_mean_square_plus_epsilon_as_the_papers_code():
    # TF1's RMSProp (the paper's code): ms = rho ms + (1 - rho) g^2,
    # mom = momentum mom + lr g / sqrt(ms + epsilon), var -= mom.
    cfg = config_lib.load(None, ["train.optimizer=rmsprop", "train.learning_rate=0.1",
                                 "train.warmup_epochs=0", "train.schedule=constant",
                                 "train.epsilon=0.002"]).train
    variable = keras.Variable(np.zeros(3, np.float32))
    optimizer = optim.make_optimizer(cfg, 10)
    g = np.array([0.001, 0.1, 3.0], np.float32)
    ms, mom, var = np.zeros(3), np.zeros(3), np.zeros(3)
    lr = optim.peak_learning_rate(cfg)
    for _ in range(3):
        optimizer.apply_gradients([(tf.constant(g), variable)])
        ms = cfg.rho * ms + (1 - cfg.rho) * g.astype(np.float64) ** 2
        mom = cfg.momentum * mom + lr * g / np.sqrt(ms + 0.002)
        var -= mom
    np.testing.assert_allclose(variable.numpy(), var, rtol=1e-5)


@pytest.mark.parametrize("decay_depthwise", [True, False])
def test_adamw_decays_depthwise_kernels_only_when_asked(decay_depthwise):
    from mnv3.config import ModelConfig
    from mnv3.model import build_model

    model = build_model(ModelConfig(alpha=0.35), 32, 10)
    cfg = config_lib.load(None, ["train.optimizer=adamw", "train.weight_decay=0.5",
                                 "train.warmup_epochs=0", "train.schedule=constant",
                                 "train.learning_rate=0.1",
                                 f"train.decay_depthwise={str(decay_depthwise).lower()}"]).train
    optimizer = optim.make_optimizer(cfg, 10, model)
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    # Zero gradients: Adam's step is zero, so only the decoupled decay moves a weight.
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    moved = {v.path for v, b in zip(variables, before) if not np.array_equal(v.numpy(), b)}
    depthwise = {v.path for v in variables if "_depthwise/" in v.path}
    pointwise = {v.path for v in variables if v.path.endswith("kernel")} - depthwise
    assert depthwise and pointwise and pointwise <= moved
    assert (depthwise <= moved) if decay_depthwise else not (depthwise & moved)
    assert not any(p.endswith(("gamma", "beta", "bias")) for p in moved)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_train_one_model_on_loopback(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(train_cli(tmp_path / "run", "train.epochs=1", "data.synthetic_images=320",
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
    assert len(metrics) == 1 and metrics[0]["step"] == 256 // 32
    assert metrics[0]["train_images"] == 256


@pytest.mark.slow
def test_several_steps_per_call_keep_logs_checkpoints_and_the_non_finite_stop(tmp_path, capsys):
    # 8 steps an epoch in calls of 3: the calls are cut at step 4 (checkpoint)
    # and 5 (log line), so both fall where they would one step at a time.
    cfg = tiny_cfg("data.synthetic_images=320", "train.epochs=1", "train.steps_per_execution=3",
                   "train.checkpoint_every_steps=4", "train.log_every_steps=5")
    trainer, run_dir = _fitted_trainer(tmp_path, cfg)
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if " step " in line] == [
        "epoch 1/1 step 5/8", "epoch 1/1 step 8/8"]
    assert sorted(f for f in os.listdir(run_dir.checkpoints) if f.endswith(".index")) \
        == ["ckpt-4.index", "ckpt-8.index"]
    assert read_metrics(run_dir.path)[-1]["step"] == 8 == int(trainer.position.batches_done.numpy())

    # A call stops after the first step whose loss is not finite: no further
    # update lands on the weights, and the data position counts that one step.
    iterator = iter(distribute(trainer.strategy, trainer.pipeline.train(1)))
    kernel = trainer.model.get_layer("logits").kernel
    kernel.assign(tf.fill(kernel.shape, np.nan))
    sums, taken, loss = trainer.train_batches(iterator, tf.constant(5))
    assert int(taken) == 1 and np.isnan(float(loss)) and float(sums["count"]) == 32
    assert int(trainer.position.batches_done.numpy()) == 9


@pytest.mark.slow
def test_ema_averages_weights_and_batchnorm_statistics_and_is_what_is_saved(
        learned_run, tmp_path):
    """The weight averages cover BatchNorm's moving statistics too (Keras'
    optimiser EMA leaves them out), warm up with the step (so early averages
    are not the random start), are checkpointed, and are what best.keras holds
    and evaluation uses, while training goes on with the raw weights: at EMA
    0.999 over 300 steps the averaged model learns like the raw one (Keras' EMA
    stayed at chance, BENCHMARKS.md). The shared run trained with EMA; a
    trainer on a copy restores it (its 6 epochs are done)."""
    shutil.copytree(learned_run, tmp_path / "run")
    trainer, run_dir = _fitted_trainer(tmp_path, tiny_cfg(*LEARN))
    records = read_metrics(run_dir.path)
    assert records[-1]["eval_top1"] > 0.3  # chance is 0.1
    # best.keras changes only on a strictly better epoch: a tie keeps the earlier one.
    last_is_best = records[-1]["eval_top1"] > max(r["eval_top1"] for r in records[:-1])
    # The live model keeps the raw weights; the averages are swapped in and out.
    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    raw = trainer.model(images, training=False).numpy()
    with trainer.ema.averaged():
        averaged = trainer.model(images, training=False).numpy()
    np.testing.assert_allclose(trainer.model(images, training=False).numpy(), raw, atol=1e-6)
    assert not np.allclose(raw, averaged, atol=1e-4)
    best = keras.models.load_model(run_dir.best_model)
    if last_is_best:  # best.keras is the last epoch's: the averages
        np.testing.assert_allclose(best(images, training=False).numpy(), averaged, atol=1e-5)
    reader = tf.train.load_checkpoint(run_dir.checkpoints)
    statistics = [v for layer in best.layers
                  if isinstance(layer, keras.layers.BatchNormalization)
                  for v in (layer.moving_mean, layer.moving_variance)]
    held = [*best.trainable_weights, *statistics]
    averages = [reader.get_tensor(f"ema_averages/{i}/.ATTRIBUTES/VARIABLE_VALUE")
                for i in range(len(held))]
    assert len(statistics) > 50
    if last_is_best:  # BatchNorm statistics included
        for value, average in zip(held, averages):
            np.testing.assert_allclose(value.numpy(), average, rtol=1e-6, atol=1e-7)
    # The checkpoint's live model keeps its raw statistics: the averages differ.
    live = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith("model/") and "moving_mean" in k]
    assert live and any(not any(np.array_equal(a, v) for v in live)
                        for a in averages[-len(statistics)::2])


@pytest.mark.slow
def test_the_throughput_benchmark_times_a_configs_training_step():
    """benchmarks/train_throughput.py drives the trainer's own step: a change to
    the trainer that breaks it shows here, not when someone measures."""
    from benchmarks.train_throughput import time_config

    timing = time_config(tiny_cfg("data.image_size=32", "train.batch_size=8"),
                         steps=2, warmup=1)
    assert timing.images_per_sec > 0 and timing.first_call_seconds > 0
