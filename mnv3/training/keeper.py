"""Checkpoint keeping: what is saved is finite and resumes at the same data
position, and a resume takes the newest checkpoint that restores.

- Restore falls back past damaged files (set aside into checkpoints/damaged/
  by the lock holder, never deleted) and names a checkpoint of another model.
- The finite guard refuses to save NaN or inf (in any variable, or in the
  model's outputs on a few fixed images): a diverged run keeps its last good
  checkpoint.
- The data layout (training images, batch size) is written before the first
  checkpoint: the data position in a checkpoint counts batches of that data.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from mnv3.console import say, warn
from mnv3.errors import UserError, first_line
from mnv3.metrics import no_images
from mnv3.run_dir import RunDir
from mnv3.training import checkpoints

NOT_FIT = "does not fit this model and optimiser"
RETRY_HINT = "(try a lower train.learning_rate or set train.clip_grad_norm)"


class FiniteGuard:
    """Finds NaN or inf in a model's and optimiser's variables, and in the
    model's outputs on `probe` images once those are set."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.probe = None  # a few fixed images, set before the first save

    def probe_with(self, eval_data) -> None:
        """The first batch of `eval_data` becomes the probe (weights can be
        finite yet so large that the outputs are not)."""
        first = next(iter(eval_data), None)
        if first is None:
            raise no_images("evaluation")
        self.probe = tf.cast(first[0], tf.float32)

    def _float_variables(self):
        return [v for v in [*self.model.variables, *self.optimizer.variables]
                if tf.as_dtype(v.dtype).is_floating]

    def non_finite_variable(self) -> str | None:
        """The first model or optimiser variable holding NaN or inf, else None.
        Read on the host, as the checkpoint reads them anyway: a traced check
        over every variable cost each run a second of tracing."""
        for variable in self._float_variables():
            if not np.isfinite(variable.numpy()).all():
                return variable.path
        return None

    def non_finite(self) -> str | None:
        """What holds NaN or inf (a variable, or the outputs on the probe), else None."""
        bad = self.non_finite_variable()
        if bad is None and self.probe is not None:
            # Run eagerly: on a few images that costs less than tracing and
            # optimising a graph for the handful of saves in a run.
            scores = tf.cast(self.model(self.probe, training=False), tf.float32)
            if not bool(tf.reduce_all(tf.math.is_finite(scores))):
                bad = "the model's outputs"
        return bad


class Position:
    """Where a run is, as checkpointed variables (made in the strategy's scope)."""

    def __init__(self):
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False)
        # Batches trained on: the data position. Not optimizer.iterations, which
        # stands still when mixed_float16's loss scaling skips an overflowing step.
        self.batches_done = tf.Variable(0, dtype=tf.int64, trainable=False)


class CheckpointKeeper:
    """The run's tf.train.Checkpoint on disk; `state`, the Position it carries."""

    def __init__(self, checkpoint: tf.train.Checkpoint, run_dir: RunDir, keep: int,
                 chief: bool, guard: FiniteGuard, state: Position):
        self.checkpoint, self.run_dir, self.keep = checkpoint, run_dir, keep
        self.chief, self.guard, self.state = chief, guard, state
        # Every worker takes part in saving; only the chief's copy is kept.
        self._scratch = None if chief else tempfile.mkdtemp(prefix="mnv3-worker-")
        self.manager = self._make_manager()

    def _make_manager(self) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(
            self.checkpoint, self._scratch or self.run_dir.checkpoints,
            max_to_keep=self.keep)

    def restore(self, set_aside_damaged: bool = False) -> bool:
        """Restores the newest checkpoint on disk that loads and holds finite
        numbers; False when there is none. Damaged ones are skipped with a
        warning (and set aside into checkpoints/damaged/ when
        `set_aside_damaged`: only the run's lock holder may move files)."""
        directory = self.run_dir.checkpoints
        candidates = checkpoints.on_disk(directory)
        if not candidates:
            return False
        named = checkpoints.state_file_latest(directory)
        state_ok = named is not None and \
            os.path.abspath(named) == os.path.abspath(candidates[0])
        if not state_ok:
            warn(f"{os.path.join(directory, 'checkpoint')} is missing, unreadable or "
                 "out of date; choosing from the checkpoint files themselves")
        failures = []  # (why, prefix, error), newest first
        for prefix in candidates:
            try:
                self._restore_from(prefix)
            except checkpoints.DoesNotFit as e:
                failures.append((NOT_FIT, prefix, e))
                continue
            except Exception as e:  # a damaged file raises many types
                failures.append(("is damaged", prefix, e))
                moved = ""
                if set_aside_damaged and self.chief:
                    moved = f"; moved to {checkpoints.set_aside(prefix)}"
                warn(f"{prefix}: damaged, skipped ({first_line(e)}){moved}")
                continue
            if self.chief and set_aside_damaged and (failures or not state_ok):
                checkpoints.rewrite_state(directory, prefix)
                self.manager = self._make_manager()
            say(f"resuming from {prefix}: {int(self.state.epochs_done.numpy())} epochs "
                f"done, step {int(self.state.batches_done.numpy())}")
            return True
        # A mismatch says more than damage: name it first.
        why, prefix, error = next((f for f in failures if f[0] == NOT_FIT), failures[0])
        raise UserError(f"{prefix}: checkpoint {why} ({first_line(error)}), and no older "
                        f"checkpoint in {directory} restores; move the run directory "
                        "aside to start over")

    def _restore_from(self, prefix: str) -> None:
        try:
            self.checkpoint.restore(prefix).assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError) as e:
            if checkpoints.is_mismatch(e):
                raise checkpoints.DoesNotFit(first_line(e)) from None
            raise
        if int(self.state.batches_done.numpy()) == 0:  # from before batches_done
            self.state.batches_done.assign(self.guard.optimizer.iterations)
        bad = self.guard.non_finite_variable()
        if bad:
            raise ValueError(f"holds non-finite values in {bad}")

    def refuse_non_finite(self, what: str) -> None:
        """UserError (training diverged) when anything saved as `what` would not
        be finite."""
        bad = self.guard.non_finite()
        if bad is not None:
            step = int(self.state.batches_done.numpy())
            raise UserError(f"training diverged: non-finite values in {bad} at step {step}; "
                            f"not saved as {what}. {self.last_good()} {RETRY_HINT}")

    def last_good(self) -> str:
        latest = checkpoints.on_disk(self.run_dir.checkpoints)
        if not latest or not self.chief:
            return "No checkpoint was saved before"
        return f"The last good checkpoint, {latest[0]}, is intact and resumes"

    def save(self, step: int, data_layout: dict) -> None:
        """A checkpoint of finite state only: what is saved is what resumes."""
        self.refuse_non_finite("a checkpoint")
        if self.chief and not os.path.exists(self.run_dir.data_layout):
            self.run_dir.save_data_layout(data_layout)
        self.manager.save(checkpoint_number=step)

    def check_data_layout(self, mine: dict) -> None:
        """A checkpoint's data position counts batches of this data: with other
        data or another batch size, resuming would not continue where it stopped."""
        saved = self.run_dir.read_data_layout()
        if saved is None or saved == mine:
            return
        raise UserError(
            f"{self.run_dir.path} was trained on {saved.get('train_images')} images in "
            f"batches of {saved.get('batch_size')}, but this config gives "
            f"{mine['train_images']} in batches of {mine['batch_size']}; its data "
            "position would not carry over: resume with the same data and "
            "train.batch_size, or use a new --model_dir")

    def close(self) -> None:
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
