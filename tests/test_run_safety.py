"""A run directory never loses work: damaged checkpoints, diverged weights and
a second trainer on the same directory (issue #11), with real files and
processes."""

import os
import shutil
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from mnv3.errors import UserError
from mnv3.run_dir import RunDir
from mnv3.training import checkpoints
from mnv3.training import run as train_run
from tests.conftest import SMALL, read_metrics, tiny_cfg, train_cli, train_here

pytestmark = pytest.mark.slow  # every test here trains

@pytest.fixture
def run_copy(safety_run, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(safety_run, model_dir)
    return model_dir


def resume_cli(model_dir, *extra, epochs=3):
    return train_here(model_dir, *SMALL, f"train.epochs={epochs}", *extra)


def on_disk(model_dir):
    return checkpoints.on_disk(str(model_dir / "checkpoints"))


def test_unreadable_checkpoint_index_resumes_from_the_files(run_copy):
    newest = on_disk(run_copy)[0]
    assert newest.endswith("ckpt-16")
    (run_copy / "checkpoints" / "checkpoint").write_text("garbage {{{ not a state file")
    code, out = resume_cli(run_copy)
    assert code == 0, out[-3000:]
    assert "choosing from the checkpoint files themselves" in out
    assert f"resuming from {newest}: 2 epochs done, step 16" in out
    # It continued; it did not start over (epochs 1, 2, 1, 2, 3 before).
    assert [r["epoch"] for r in read_metrics(run_copy)] == [1, 2, 3]
    assert tf.train.latest_checkpoint(str(run_copy / "checkpoints")).endswith("ckpt-24")


def test_damaged_newest_checkpoint_falls_back_and_is_set_aside(run_copy):
    newest, older = on_disk(run_copy)[:2]
    (run_copy / "checkpoints" / "checkpoint").unlink()
    data = [f for f in os.listdir(run_copy / "checkpoints")
            if f.startswith("ckpt-16.data")][0]
    path = run_copy / "checkpoints" / data
    path.write_bytes(path.read_bytes()[:100])  # truncated
    train_run(tiny_cfg(*SMALL, "train.epochs=3"), str(run_copy))
    metrics = read_metrics(run_copy)
    assert [r["epoch"] for r in metrics] == [1, 2, 3] and metrics[-1]["step"] == 24
    # Nothing the user had is lost: the damaged files are kept aside.
    damaged = run_copy / "checkpoints" / "damaged"
    assert data in os.listdir(damaged) and "ckpt-16.index" in os.listdir(damaged)
    assert older.endswith("ckpt-12")


def test_every_checkpoint_damaged_is_one_line_and_nothing_is_overwritten(run_copy):
    for prefix in on_disk(run_copy):
        with open(prefix + ".index", "wb") as f:
            f.write(b"garbage")
    before = {p: p.read_bytes() for p in [run_copy / "best.keras", run_copy / "metrics.jsonl"]}
    code, out = resume_cli(run_copy)
    assert code == 2, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: ") and "damaged" in last and "start over" in last
    assert "Traceback" not in out
    assert all(p.read_bytes() == data for p, data in before.items())


def test_non_finite_weights_are_never_saved(run_copy):
    """An update that leaves the loss finite but the weights broken: the step
    after it is never taken, yet nothing may be saved (checkpoint or best.keras)."""
    from tests.conftest import make_pipeline
    from mnv3.training.trainer import Trainer

    cfg = tiny_cfg(*SMALL, "train.epochs=3")
    best = (run_copy / "best.keras").read_bytes()
    saved_before = on_disk(run_copy)
    trainer = Trainer(cfg, RunDir(str(run_copy)), tf.distribute.get_strategy(),
                      make_pipeline(cfg))
    real_steps = trainer.train_batches
    # The stem: every later activation overflows from it, in inference mode too.
    # (Blowing up the classifier alone was flaky: a barely trained model's
    # inference-mode features can all be zero on the probe images.)
    kernel = trainer.model.get_layer("stem_conv").kernel

    def steps_that_blow_up_the_weights(iterator, steps):
        out = real_steps(iterator, steps)  # the loss was computed before this update
        if int(trainer.position.batches_done.numpy()) == 20:  # the step before a save
            kernel.assign(tf.fill(kernel.shape, 3e38))
        return out

    trainer.train_batches = steps_that_blow_up_the_weights
    with pytest.raises(UserError) as err:
        trainer.fit()
    message = str(err.value)
    assert "non-finite values in the model's outputs at step 20" in message
    assert f"last good checkpoint, {saved_before[0]}, is intact" in message
    assert on_disk(run_copy) == saved_before
    assert (run_copy / "best.keras").read_bytes() == best
    # The checkpoint the message names really restores to finite weights.
    reader = tf.train.load_checkpoint(saved_before[0])
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


def test_a_poisoned_checkpoint_is_skipped_on_resume(run_copy):
    """Checkpoints saved by older versions may hold NaN: never resume from one."""
    newest = on_disk(run_copy)[0]
    from tests.conftest import make_pipeline
    from mnv3.training.trainer import Trainer

    cfg = tiny_cfg(*SMALL, "train.epochs=2")
    trainer = Trainer(cfg, RunDir(str(run_copy)), tf.distribute.get_strategy(),
                      make_pipeline(cfg))
    trainer.checkpoint.restore(newest)
    # The stem: every later activation overflows from it, in inference mode too.
    # (Blowing up the classifier alone was flaky: a barely trained model's
    # inference-mode features can all be zero on the probe images.)
    kernel = trainer.model.get_layer("stem_conv").kernel
    kernel.assign(tf.fill(kernel.shape, np.nan))
    trainer.checkpoint.write(newest)  # overwrite in place
    assert trainer.keeper.restore(set_aside_damaged=True)
    assert int(trainer.position.batches_done.numpy()) == 12
    assert np.isfinite(kernel.numpy()).all()
    assert not os.path.exists(newest + ".index")


def test_a_second_trainer_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    model_dir = tmp_path / "run"
    first = train_cli(model_dir, *SMALL, "train.epochs=50")
    lock = model_dir / ".train.lock"
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if (model_dir / "config.yaml").exists() and lock.exists() and lock.read_text():
            break
        time.sleep(0.2)
    assert first.poll() is None, "the first trainer ended too soon"
    try:
        code, out = resume_cli(model_dir, epochs=50)
        assert code == 2, out[-3000:]
        last = out.strip().splitlines()[-1]
        assert last.startswith("error: ") and str(model_dir) in last
        assert f"pid {first.pid}" in last
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 leaves no stale lock: the next trainer takes it at once.
    with RunDir(str(model_dir)).training_lock():
        assert lock.read_text().strip() == str(os.getpid())


def test_resuming_with_another_batch_size_or_data_is_refused_clearly(run_copy):
    with pytest.raises(UserError, match="train.batch_size=32.*16.*new --model_dir"):
        train_run(tiny_cfg(*SMALL, "train.epochs=3", "train.batch_size=16"), str(run_copy))
    with pytest.raises(UserError, match=r"trained on 260 images in batches of 32.*gives 320"):
        train_run(tiny_cfg(*SMALL, "train.epochs=3", "data.synthetic_images=400"),
                  str(run_copy))


def test_a_training_set_smaller_than_a_batch_says_so(tmp_path):
    with pytest.raises(UserError, match="fewer than one batch.*train.batch_size=512"):
        train_run(tiny_cfg("data.synthetic_images=320", "train.batch_size=512"),
                  str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_diverged_run_takes_a_corrected_config_and_keeps_its_last_good_checkpoint(tmp_path):
    model_dir = tmp_path / "run"
    diverges = ["train.optimizer=sgd", "train.learning_rate=10", "train.base_batch_size=1",
                "train.warmup_epochs=0", "train.schedule=constant",
                "train.checkpoint_every_steps=0"]
    with pytest.raises(UserError, match="training loss became"):
        train_run(tiny_cfg(*SMALL, *diverges), str(model_dir))
    assert (model_dir / "config.yaml").exists() and not on_disk(model_dir)
    # Only a real checkpoint holds a run directory to its config.
    train_run(tiny_cfg(*SMALL, "train.epochs=1", "train.optimizer=sgd"), str(model_dir))
    assert [r["epoch"] for r in read_metrics(model_dir)] == [1]
    good = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))

    # Resumed with the diverging settings: it stops in one line, and the last
    # good checkpoint stays the newest, every number in it finite.
    code, out = resume_cli(model_dir, *diverges, epochs=2)
    assert code == 2 and "Traceback" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert "training loss became" in last and "checkpoint" in last
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")) == good
    reader = tf.train.load_checkpoint(good)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name
