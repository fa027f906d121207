"""Fine-tuning: starting weights (model.init_from) from keras.applications'
published files, Keras files and earlier runs; the frozen-backbone phase; and
the backbone's own learning rate."""

import hashlib
import os
import shutil

import h5py
import keras
import numpy as np
import pytest

from mnv3 import config as config_lib
from mnv3 import published
from mnv3.config import TrainConfig
from mnv3.errors import UserError
from mnv3 import tasks
from mnv3.model.builder import HEAD_LAYERS
from mnv3.training import optim, run
from mnv3 import cli
from tests.conftest import (TINY, assert_one_line_error, call_cli, kill_at_first_checkpoint,
                            plan_start, tiny_cfg, train_cli, train_here)

APPLICATIONS = {"large": keras.applications.MobileNetV3Large,
                "small": keras.applications.MobileNetV3Small}


def save_published_layout(model, path):
    """Saves `model`'s weights the way keras.applications' published .h5 files
    hold them (Keras 2's HDF5 layout): `layer_names` on the root, and per layer
    a group whose `weight_names` attribute lists its datasets in order."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode() for layer in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = np.array([n.encode() for n in names])
            for name, value in zip(names, layer.get_weights()):
                group.create_dataset(name, data=value)


def random_application(variant, **kwargs):
    """A keras.applications model with random weights and random but plausible
    BatchNorm statistics, so inference-mode BatchNorm is exercised."""
    model = APPLICATIONS[variant](input_shape=(64, 64, 3), weights=None, **kwargs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma, rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape),
                               rng.uniform(0.5, 1.5, var.shape)])
    return model


def model_cfg(init_from, *extra):
    return config_lib.load(None, [f"model.init_from={init_from}", "data.image_size=64",
                                  *extra])


# Each variant, each kind of block and both ends of the network, in four models.
@pytest.mark.parametrize("variant, minimalistic, include_top", [
    ("large", False, True), ("small", True, True), ("large", True, False),
    ("small", False, False)])
def test_published_layout_gives_keras_applications_outputs(tmp_path, variant, minimalistic,
                                                           include_top):
    kwargs = dict(minimalistic=minimalistic, include_top=include_top)
    path = str(tmp_path / "published.h5")
    save_published_layout(random_application(variant, **kwargs), path)
    # Keras' own loader for published files reads it: the layout is theirs.
    reference = APPLICATIONS[variant](input_shape=(64, 64, 3), weights=path, **kwargs)
    cfg = model_cfg(path, f"model.variant={variant}", f"model.minimalistic={minimalistic}",
                    f"model.include_top={include_top}", "model.pooling=none",
                    "data.num_classes=1000")
    start = plan_start(cfg)
    assert start.fresh == []
    ours = tasks.get(cfg).build(cfg)
    start.apply(ours)
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(ours(images, training=False).numpy(),
                               reference(images, training=False).numpy(), atol=1e-4)


def test_classifier_is_reinitialised_only_when_the_class_count_differs(tmp_path):
    path = str(tmp_path / "published.h5")
    source = random_application("small")
    save_published_layout(source, path)
    same = plan_start(model_cfg(path, "data.num_classes=1000"))
    assert same.fresh == [] and "logits" in same.weights
    other = plan_start(model_cfg(path, "data.num_classes=5"))
    assert other.fresh == ["logits"] and "logits" not in other.weights
    # Everything else still moves, the pretrained head_fc included.
    assert set(same.weights) - set(other.weights) == {"logits"}
    ours = tasks.get(cfg5 := model_cfg(path, "data.num_classes=5")).build(cfg5)
    before = ours.get_layer("logits").get_weights()
    other.apply(ours)
    for mine, start in zip(ours.get_layer("logits").get_weights(), before):
        np.testing.assert_array_equal(mine, start)  # left at its initial values
    np.testing.assert_array_equal(ours.get_layer("head_fc").get_weights()[0],
                                  source.get_layer("conv_2").get_weights()[0])


def test_imagenet_comes_from_the_keras_cache_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cfg = model_cfg("imagenet", "data.num_classes=1000")
    cached = os.path.join(published.cache_dir(), published.file_name(cfg.model, True))
    assert cached.startswith(str(tmp_path))
    assert os.path.basename(cached) == "weights_mobilenet_v3_small_224_1.0_float.h5"
    os.makedirs(os.path.dirname(cached))
    save_published_layout(random_application("small"), cached)
    record = plan_start(cfg).record()
    with open(cached, "rb") as f:
        assert record["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert record["file"] == cached and record["layers_initialised"] == []


def test_mismatched_weights_name_the_first_layer_that_differs(tmp_path):
    path = str(tmp_path / "large.h5")
    save_published_layout(random_application("large"), path)
    with pytest.raises(UserError) as e:
        plan_start(model_cfg(path, "model.variant=small"))
    message = str(e.value)
    assert "\n" not in message and "model.variant" in message
    # The Small stem feeds a 16-channel SE-block depthwise conv; Large's first
    # block has no SE, so its 5th weighted layer is already another shape.
    assert "where our" in message and "has weights" in message


@pytest.mark.parametrize("extra, offline, fragment", [
    (["model.init_from=TMP/missing.h5"], False, "not found"),
    # alpha 0.35 has no published ImageNet weights
    (["model.init_from=imagenet"], False, "publishes no ImageNet weights"),
    # Not cached, and no way to download it: a proxy that refuses at once.
    (["model.init_from=imagenet", "model.alpha=1.0"], True,
     "weights_mobilenet_v3_small_224_1.0_float.h5"),
    (["model.init_from=TMP/small.h5"], False, "where our"),  # alpha 1.0 weights, 0.35 model
    (["train.freeze_backbone_epochs=1"], False, "needs model.init_from"),
])
def test_each_bad_source_is_one_line_and_writes_nothing(tmp_path, monkeypatch, extra,
                                                        offline, fragment):
    if any("small.h5" in e for e in extra):  # the one case that reads it
        save_published_layout(random_application("small"), str(tmp_path / "small.h5"))
    empty_home = tmp_path / "no-cache"
    if offline:
        monkeypatch.setenv("KERAS_HOME", str(empty_home))
        for proxy in ("https_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    model_dir = tmp_path / "run"
    args = ["--config", "configs/quickstart.yaml", "--model_dir", str(model_dir)]
    for item in TINY + [e.replace("TMP", str(tmp_path)) for e in extra]:
        args += ["--set", item]
    assert_one_line_error(call_cli(cli.train, *args), fragment)
    assert not model_dir.exists()
    assert not empty_home.exists() or not os.listdir(empty_home / "models")


def backbone_and_head(path):
    model = keras.saving.load_model(path, compile=False)
    layers = [layer for layer in model.layers if layer.weights]
    backbone = {layer.name: layer.get_weights() for layer in layers
                if layer.name not in HEAD_LAYERS}
    head = {layer.name: layer.get_weights() for layer in layers if layer.name in HEAD_LAYERS}
    return backbone, head


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert np.array_equal(x, y), name


@pytest.fixture(scope="session")
def pretrained_run(learned_run):
    """A tiny trained run to start from (shared: each test copies what it moves)."""
    return learned_run


@pytest.mark.slow
def test_head_only_epoch_survives_kill_9_and_leaves_the_backbone_bit_identical(
        tmp_path, pretrained_run):
    source = tmp_path / "pretrained"
    shutil.copytree(pretrained_run, source)
    model_dir = tmp_path / "finetune"
    extra = [f"model.init_from={source}", "train.epochs=1",
             "train.freeze_backbone_epochs=1", "train.checkpoint_every_steps=4"]
    proc = train_cli(model_dir, *extra)
    kill_at_first_checkpoint(proc, model_dir / "checkpoints")
    first = proc.stdout.read()
    assert "starting from" in first and "only the head" in first
    assert (model_dir / "init_from.json").exists()

    # The source is gone: a resume must not need it, nor re-apply it.
    moved = tmp_path / "moved"
    source.rename(moved)
    code, out = train_here(model_dir, *extra)
    assert code == 0, out[-2000:]
    assert "resuming from" in out and "not applied again" in out
    assert "starting from" not in out and "only the head" in out

    start_backbone, start_head = backbone_and_head(str(moved / "best.keras"))
    backbone, head = backbone_and_head(str(model_dir / "best.keras"))
    assert_identical(backbone, start_backbone)  # weights and BatchNorm statistics
    assert not np.array_equal(head["logits"][0], start_head["logits"][0])
    assert not np.array_equal(head["head_fc"][0], start_head["head_fc"][0])


@pytest.mark.slow
def test_zero_epochs_keeps_the_starting_weights_as_the_model(tmp_path, pretrained_run):
    source = pretrained_run
    model_dir = tmp_path / "as-is"
    run(tiny_cfg(f"model.init_from={source / 'best.keras'}", "train.epochs=0",
             "train.ema_decay=0.9"),
        str(model_dir))
    start_backbone, start_head = backbone_and_head(str(source / "best.keras"))
    backbone, head = backbone_and_head(str(model_dir / "best.keras"))
    assert_identical(backbone, start_backbone)
    assert_identical(head, start_head)
    assert (model_dir / "labels.txt").exists()


def _weights_and_batch_norm(path) -> tuple[dict, dict]:
    """{layer: weights} of every layer of the saved model, and of its BatchNorm layers."""
    model = keras.saving.load_model(path, compile=False)
    weights = {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
    return weights, {layer.name: weights[layer.name] for layer in model.layers
                     if isinstance(layer, keras.layers.BatchNormalization)}


@pytest.mark.slow
def test_frozen_batch_norm_keeps_every_pretrained_statistic_bit_identical(
        tmp_path, pretrained_run, capsys):
    """train.freeze_batch_norm: the whole network trains, yet every pretrained
    BatchNorm layer keeps its moving mean and variance (and scale) exactly, in
    a fresh run and after a resume (which reads what started afresh from
    init_from.json, and resumes past the head-only epoch: the whole network
    trains on)."""
    source = str(pretrained_run / "best.keras")
    model_dir = tmp_path / "frozen-bn"
    # train.mode train: best.keras is the last epoch's, the whole network's.
    settings = [f"model.init_from={source}", "data.synthetic_images=320", "train.mode=train",
                "train.freeze_backbone_epochs=1", "train.freeze_batch_norm=true"]
    before, _ = backbone_and_head(source)
    trained = before
    for epochs in (2, 3):  # trained, then resumed for one more epoch
        run(tiny_cfg(*settings, f"train.epochs={epochs}"), str(model_dir))
        assert "the whole network trains" in capsys.readouterr().out
        after, statistics = _weights_and_batch_norm(str(model_dir / "best.keras"))
        assert len(statistics) > 30
        assert_identical(statistics, {name: before[name] for name in statistics})
        # The rest of the backbone did train, in each run.
        assert not np.array_equal(after["block3_expand"][0], trained["block3_expand"][0])
        assert not np.array_equal(after["stem_conv"][0], trained["stem_conv"][0])
        trained = after


def test_keras_weights_file_must_match_the_config_exactly(tmp_path):
    cfg = tiny_cfg()
    model = tasks.get(cfg).build(cfg)
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    start = plan_start(tiny_cfg(f"model.init_from={path}"))
    assert start.fresh == []
    for layer in model.layers:
        for saved, read in zip(layer.get_weights(), start.weights.get(layer.name, [])):
            np.testing.assert_array_equal(saved, read)
    assert len(start.weights) == sum(1 for layer in model.layers if layer.weights)
    with pytest.raises(UserError, match="does not load into"):
        plan_start(tiny_cfg(f"model.init_from={path}", "model.alpha=0.5"))


def _run_like(directory, cfg, poison=None):
    """A run directory holding only best.keras, saved as training saves it
    (Keras' own BatchNorm); `poison`: a layer whose weights become NaN."""
    from mnv3.model.layers import with_keras_batch_norm

    task = tasks.get(cfg)
    model = with_keras_batch_norm(task.build(cfg), task.input_size)
    if poison:
        layer = model.get_layer(poison)
        layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
    os.makedirs(directory)
    model.save(os.path.join(directory, "best.keras"))
    return str(directory), model


def test_a_weights_file_saved_from_a_runs_best_keras_loads(tmp_path):
    """`model.save_weights` of a run's best.keras (Keras' own BatchNorm), the
    ordinary way to keep only the weights, starts a run of the same config."""
    directory, _ = _run_like(tmp_path / "run", tiny_cfg())
    best = keras.saving.load_model(os.path.join(directory, "best.keras"))
    path = str(tmp_path / "best.weights.h5")
    best.save_weights(path)
    start = plan_start(tiny_cfg(f"model.init_from={path}"))
    assert start.fresh == [] and start.weights
    for layer in best.layers:
        for saved, read in zip(layer.get_weights(), start.weights.get(layer.name, [])):
            np.testing.assert_array_equal(saved, read)


@pytest.mark.slow
def test_a_segmenter_source_says_what_it_is_and_what_loads(tmp_path):
    seg = ["task.name=segmentation", "data.num_classes=3"]
    halved, _ = _run_like(tmp_path / "halved", tiny_cfg(*seg))
    with pytest.raises(UserError) as error:
        plan_start(tiny_cfg(f"model.init_from={halved}"))
    message = str(error.value)
    assert "a segmenter whose last stage has half its channels" in message
    assert "task.reduced_tail: false" in message and "check model.variant" not in message
    # Trained without the halved tail, its backbone starts a classifier whole.
    whole, segmenter = _run_like(tmp_path / "whole", tiny_cfg(*seg, "task.reduced_tail=false"))
    start = plan_start(tiny_cfg(f"model.init_from={whole}"))
    assert set(start.fresh) == {"head_fc", "logits"}
    np.testing.assert_array_equal(start.weights["head_conv"][0],
                                  segmenter.get_layer("head_conv").get_weights()[0])


def test_a_non_finite_source_is_named_and_nothing_is_written(tmp_path):
    directory, _ = _run_like(tmp_path / "source", tiny_cfg(), poison="block2_expand")
    model_dir = tmp_path / "run"
    result = call_cli(cli.train, "--config", "configs/quickstart.yaml", "--model_dir",
                      str(model_dir), *[a for item in TINY + [f"model.init_from={directory}"]
                                        for a in ("--set", item)])
    assert_one_line_error(result, "'block2_expand' holds non-finite values", "best.keras")
    assert "diverged" not in result.stderr and not model_dir.exists()


def test_a_source_that_is_not_a_regular_file_is_refused(tmp_path):
    """A FIFO (or a device) named as weights would block the reader forever."""
    fifo = str(tmp_path / "weights.keras")
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        plan_start(tiny_cfg(f"model.init_from={fifo}"))
    run = tmp_path / "run"
    os.makedirs(run)
    os.mkfifo(run / "best.keras")
    with pytest.raises(UserError, match="best.keras: not a regular file"):
        plan_start(tiny_cfg(f"model.init_from={run}"))


def test_backbone_lr_scale_scales_the_step_and_the_decay():
    def one_step(weight_decay, grad):
        cfg = TrainConfig(optimizer="adamw", schedule="constant", warmup_epochs=0,
                          learning_rate=0.01, base_batch_size=64, batch_size=64,
                          weight_decay=weight_decay, backbone_lr_scale=0.1)
        optimizer = optim.make_optimizer(cfg, steps_per_epoch=10)
        head, backbone = keras.Variable(np.ones(4), name="kernel"), \
            keras.Variable(np.ones(4), name="kernel")
        optimizer.build([head, backbone])
        optimizer.scale_learning_rate([backbone], 0.1)
        optimizer.apply_gradients([(np.full(4, grad), head), (np.full(4, grad), backbone)])
        return 1 - head.numpy(), 1 - backbone.numpy()

    # Adam's first step is about lr whatever the gradient's size: only a scaled
    # rate, not a scaled gradient, makes the backbone move 10x less.
    head_step, backbone_step = one_step(0.0, 0.5)
    np.testing.assert_allclose(backbone_step, 0.1 * head_step, rtol=1e-4)
    head_decay, backbone_decay = one_step(0.5, 0.0)  # decay alone
    assert head_decay[0] > 0
    np.testing.assert_allclose(backbone_decay, 0.1 * head_decay, rtol=1e-4)


def test_frozen_phase_has_its_own_schedule_then_the_whole_network_warms_up():
    cfg = TrainConfig(epochs=4, freeze_backbone_epochs=2, warmup_epochs=1,
                      learning_rate=0.1, base_batch_size=64, batch_size=64)
    lr = optim.make_schedule(cfg, steps_per_epoch=10)
    values = [float(lr(step)) for step in range(40)]
    assert values[10] == pytest.approx(0.1)  # end of the head's warm-up
    assert values[19] < 0.01  # the head phase decays to about zero
    assert values[20] < 0.02  # the whole network starts a warm-up of its own
    assert values[30] == pytest.approx(0.1)
    assert values[39] < 0.01


@pytest.mark.parametrize("overrides, fragment", [
    (["train.freeze_backbone_epochs=2"], "needs model.init_from"),
    (["train.backbone_lr_scale=0.1"], "needs model.init_from"),
    (["train.epochs=0"], "needs model.init_from"),
    (["model.init_from=x", "train.epochs=2", "train.freeze_backbone_epochs=3"],
     "more than train.epochs"),
    (["model.init_from=imagenet", "model.alpha=0.5"], "it does for large alpha 0.75"),
])
def test_fine_tuning_config_errors(overrides, fragment):
    with pytest.raises(config_lib.ConfigError, match=fragment):
        config_lib.load(None, overrides)


@pytest.mark.slow
def test_published_imagenet_model_exports_with_imagenet_labels(tmp_path, monkeypatch):
    """The README's two commands for the published ImageNet model, with a file of
    the published layout in the Keras cache (no network here)."""
    from tests.test_data import make_folder

    home = tmp_path / "keras"
    cfg = config_lib.load("configs/imagenet_published.yaml")
    cached = home / "models" / published.file_name(cfg.model, True)
    cached.parent.mkdir(parents=True)
    save_published_layout(random_application("small"), str(cached))
    images = make_folder(tmp_path / "images", classes=("n01440764", "n02102040"),
                         per_class=6)
    model_dir = tmp_path / "imagenet_small"
    monkeypatch.setenv("KERAS_HOME", str(home))
    result = call_cli(cli.train, "--config", "configs/imagenet_published.yaml",
                     "--model_dir", str(model_dir), "--set", f"data.train_dir={images}",
                     "--set", "data.image_size=64")
    assert result.returncode == 0, result.stderr[-2000:]
    labels = (model_dir / "labels.txt").read_text().split("\n")
    assert len(labels) == 1001 and labels[:2] == ["tench", "goldfish"]
    assert labels[217] == "English springer"
    assert os.path.exists(model_dir / "init_from.json")
    result = call_cli(cli.export, "--model_dir", str(model_dir), "--quant", "float32",
                      "--set", "export.latency_runs=2")
    assert result.returncode == 0, result.stderr[-2000:]
    from mnv3.tflite.metadata import associated_files, read_metadata

    (tflite,) = [f for f in os.listdir(model_dir / "export") if f.endswith(".tflite")]
    data = (model_dir / "export" / tflite).read_bytes()
    assert associated_files(data)["labels.txt"].decode().split("\n")[:2] == \
        ["tench", "goldfish"]
    assert "the imagenet weights as they are" in read_metadata(data).description.decode()
