"""The train / eval loop: one code path for one device, several GPUs and several
machines. A plain tf.function step under `strategy.run` (Keras 3's `model.fit`
fails under MultiWorkerMirroredStrategy, keras-team/keras#20585), checkpoints by
tf.train.CheckpointManager, EMA by the optimiser.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from mnv3.config import Config
from mnv3.console import say, warn
from mnv3.data import Pipeline
from mnv3.data.pipeline import train_image_size
from mnv3.errors import UserError, first_line
from mnv3.model.pretrained import Start
from mnv3.model.layers import with_keras_batch_norm
from mnv3.files import atomic_path
from mnv3.training import checkpoints, optim
from mnv3.training import ema as ema_lib
from mnv3.training import metrics as metrics_lib
from mnv3.training.strategy import is_chief
from mnv3.run_dir import RunDir

SUM = tf.distribute.ReduceOp.SUM
NOT_FIT = "does not fit this model and optimiser"


class Trainer:
    def __init__(self, cfg: Config, run_dir: RunDir, strategy, pipeline: Pipeline,
                 start: Start | None = None):
        """`start`: the weights a fresh run begins with (model.init_from); a run
        that resumes from its own checkpoint never uses them."""
        self.cfg, self.run_dir, self.strategy, self.pipeline = cfg, run_dir, strategy, pipeline
        self.task = pipeline.task
        self.start = start
        self.chief = is_chief(strategy)
        # train.epochs 0 takes no step, so even a set smaller than a batch will do.
        self.steps_per_epoch = pipeline.steps_per_epoch() if cfg.train.epochs else 1
        self.global_batch = cfg.train.batch_size
        with strategy.scope():
            # A resolution schedule trains one model at several sizes; its saved
            # copy (save_best) takes data.image_size, as the export expects.
            self.model = self.task.build(
                cfg, image_size=None if cfg.data.train_image_sizes else -1)
            self.optimizer = optim.make_optimizer(cfg.train, self.steps_per_epoch, self.model)
            if cfg.runtime.mixed_precision == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
            if cfg.train.backbone_lr_scale != 1.0:
                inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
                inner.scale_learning_rate(self._backbone_variables(),
                                          cfg.train.backbone_lr_scale)
            self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False)
            # Batches trained on: the data position. Not optimizer.iterations, which
            # stands still when mixed_float16's loss scaling skips an overflowing step.
            self.batches_done = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.best_top1 = tf.Variable(-1.0, dtype=tf.float32, trainable=False)
            self.ema = None if cfg.train.ema_decay is None else \
                ema_lib.Averages(self.model, self.optimizer, cfg.train.ema_decay)
        saved = {}
        if self.ema:  # only EMA runs have them: other checkpoints are as before
            saved["ema_averages"] = self.ema.averages
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              epochs_done=self.epochs_done,
                                              batches_done=self.batches_done,
                                              best_top1=self.best_top1, **saved)
        # Every worker takes part in saving; only the chief's copy is kept.
        self._scratch = None if self.chief else tempfile.mkdtemp(prefix="mnv3-worker-")
        self.manager = self._make_manager()
        self.metrics = self.task.metrics()
        # Picks best.keras. Its best value is kept in the checkpoint variable
        # `best_top1`, named before there were other tasks (old checkpoints resume).
        self.best_metric = self.task.best_metric
        self.loss_fn = self.task.loss()
        self._backbone_frozen = None  # set by _set_phase when fine-tuning freezes it
        self._train_size = None  # the resolution of the epoch in progress
        self._make_train_step()
        self.eval_step = tf.function(lambda batch: self._on_all_replicas(self._eval_step, batch),
                                     reduce_retracing=True)
        self._probe = None
        self._probe_scores = tf.function(lambda images: self.model(images, training=False))
        self._saved_copy = None  # best.keras's model, cloned once (see save_best)
        self._finite_flags = tf.function(lambda: tf.stack(
            [tf.reduce_all(tf.math.is_finite(v)) for v in self._float_variables()]))
        self.writer = None  # made by fit(): an eval run writes nothing

    def _make_train_step(self) -> None:
        """(Re)traces the step for the variables that train now."""
        cfg = self.cfg
        self.kernels = (optim.decayed_weights(self.model, cfg.train.decay_depthwise)
                        if optim.uses_l2_loss(cfg.train) else [])
        # One step may be XLA-compiled; the loop around it reads an iterator, which
        # XLA cannot, so it is a function of its own.
        self._one_step = tf.function(
            lambda batch: self._on_all_replicas(self._train_step, batch),
            jit_compile=cfg.runtime.jit_compile or None)
        self.train_steps = tf.function(self._train_steps)

    def _backbone_variables(self) -> list:
        return [v for layer in self.model.layers if layer.name not in self.task.head_layers
                for v in layer.trainable_weights]

    def _set_phase(self, epoch: int) -> None:
        """Fine-tuning: the backbone is frozen for the first freeze_backbone_epochs.
        A frozen Keras BatchNorm runs in inference mode, so small batches of new
        data leave its pretrained statistics alone."""
        if not self.cfg.train.freeze_backbone_epochs:
            return
        frozen = epoch < self.cfg.train.freeze_backbone_epochs
        if frozen == self._backbone_frozen:
            return
        for layer in self.model.layers:
            if layer.name not in self.task.head_layers:
                layer.trainable = not frozen
        self._backbone_frozen = frozen
        self._make_train_step()
        if frozen:
            say(f"epochs {epoch + 1}-{self.cfg.train.freeze_backbone_epochs}: only the "
                f"head ({', '.join(self.task.head_layers)}) trains; the backbone is frozen")
        else:
            say(f"epoch {epoch + 1} on: the whole network trains")

    def _make_manager(self) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(
            self.checkpoint, self._scratch or self.run_dir.checkpoints,
            max_to_keep=self.cfg.train.keep_checkpoints)

    # --- steps (run on every replica) -------------------------------------------

    def _train_step(self, images, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            probs = self.model(tf.cast(images, tf.float32), training=True)
            per_example = self.loss_fn(labels, probs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
            if self.kernels:
                l2 = tf.add_n([tf.nn.l2_loss(tf.cast(k, tf.float32)) for k in self.kernels])
                loss += tf.nn.scale_regularization_loss(self.cfg.train.weight_decay * l2)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        if self.ema:
            self.ema.update()
        return metrics_lib.batch_sums(self.metrics, labels, probs, per_example)

    def _eval_step(self, images, labels):
        probs = self.model(tf.cast(images, tf.float32), training=False)
        return metrics_lib.batch_sums(self.metrics, labels, probs, self.loss_fn(labels, probs))

    def _train_steps(self, iterator, steps):
        """Up to `steps` training steps in one call (traced once; `steps` is a
        tensor). It stops after a step whose loss is not finite: no further
        update lands on top of it. Returns the metric sums over the steps taken,
        how many were taken, and the last loss."""
        sums = metrics_lib.zeros(self.metrics)
        taken, loss = tf.constant(0), tf.constant(0.0)
        for _ in tf.range(steps):
            out = self._one_step(next(iterator))
            sums = {k: sums[k] + out[k] for k in sums}
            taken += 1
            loss = out["loss"] / out[metrics_lib.COUNT]
            self.batches_done.assign_add(1)
            if not tf.math.is_finite(loss):
                break
        return sums, taken, loss

    def _on_all_replicas(self, step_fn, batch):
        """Runs `step_fn` on every replica and sums its counts across them."""
        out = self.strategy.run(step_fn, args=batch)
        return {k: self.strategy.reduce(SUM, v, axis=None) for k, v in out.items()}

    # --- data -------------------------------------------------------------------

    def distribute(self, ds: tf.data.Dataset):
        options = tf.data.Options()
        # Sources read files inside map(), so sharding by file cannot work; every
        # worker builds the same seeded stream and keeps its share of elements.
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(ds.with_options(options))

    # --- public -------------------------------------------------------------------

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
            say(f"resuming from {prefix}: {int(self.epochs_done.numpy())} epochs done, "
                f"step {int(self.batches_done.numpy())}")
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
        if int(self.batches_done.numpy()) == 0:  # a checkpoint from before batches_done
            self.batches_done.assign(self.optimizer.iterations)
        bad = self._non_finite_variable()
        if bad:
            raise ValueError(f"holds non-finite values in {bad}")

    def evaluate(self) -> dict:
        """The task's metrics on the eval data, with EMA weights when EMA is on."""
        if self.ema:
            self.ema.swap_in()
        try:
            sums = metrics_lib.zeros(self.metrics)
            for batch in self.distribute(self.pipeline.eval()):
                out = self.eval_step(batch)  # stays on the device until the end
                sums = {k: sums[k] + out[k] for k in sums}
        finally:
            if self.ema:
                self.ema.swap_out()
        return self._rates(sums)

    def save_best(self):
        """best.keras (EMA weights when on, Keras' own BatchNorm layers), written
        atomically by the chief; never with non-finite weights."""
        if self.ema:
            self.ema.swap_in()
        try:
            self._refuse_non_finite("best.keras")
            if self.chief:
                # Cloning costs more than the save; later saves refill one copy.
                if self._saved_copy is None:
                    self._saved_copy = with_keras_batch_norm(self.model, self.task.input_size)
                else:
                    self._saved_copy.set_weights(self.model.get_weights())
                with atomic_path(self.run_dir.best_model) as tmp:
                    self._saved_copy.save(tmp)
        finally:
            if self.ema:
                self.ema.swap_out()

    def save_checkpoint(self, step: int) -> None:
        """A checkpoint of finite state only: what is saved is what resumes."""
        self._refuse_non_finite("a checkpoint")
        if self.chief and not os.path.exists(self.run_dir.data_layout):
            self.run_dir.save_data_layout(self._data_layout())
        self.manager.save(checkpoint_number=step)

    def _data_layout(self) -> dict:
        return {"train_images": self.pipeline.source.train.size,
                "batch_size": self.global_batch}

    def _check_data_layout(self) -> None:
        """A checkpoint's data position counts batches of this data: with other
        data or another batch size, resuming would not continue where it stopped."""
        saved = self.run_dir.read_data_layout()
        mine = self._data_layout()
        if saved is None or saved == mine:
            return
        raise UserError(
            f"{self.run_dir.path} was trained on {saved.get('train_images')} images in "
            f"batches of {saved.get('batch_size')}, but this config gives "
            f"{mine['train_images']} in batches of {mine['batch_size']}; its data "
            "position would not carry over: resume with the same data and "
            "train.batch_size, or use a new --model_dir")

    def _non_finite_variable(self) -> str | None:
        """The first model or optimiser variable holding NaN or inf, else None."""
        flags = self._finite_flags()
        for variable, finite in zip(self._float_variables(), flags):
            if not bool(finite):
                return variable.path
        return None

    def _float_variables(self):
        return [v for v in [*self.model.variables, *self.optimizer.variables]
                if tf.as_dtype(v.dtype).is_floating]

    def _refuse_non_finite(self, what: str) -> None:
        bad = self._non_finite_variable()
        if bad is None and self._probe is not None:
            scores = self._probe_scores(self._probe)
            if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(scores, tf.float32)))):
                bad = "the model's outputs"
        if bad is not None:
            step = int(self.batches_done.numpy())
            raise UserError(f"training diverged: non-finite values in {bad} at step {step}; "
                            f"not saved as {what}. {self._last_good()} (try a lower "
                            "train.learning_rate or set train.clip_grad_norm)")

    def _last_good(self) -> str:
        latest = checkpoints.on_disk(self.run_dir.checkpoints)
        if not latest or not self.chief:
            return "No checkpoint was saved before"
        return f"The last good checkpoint, {latest[0]}, is intact and resumes"

    def fit(self):
        cfg = self.cfg.train
        self.writer = tf.summary.create_file_writer(self.run_dir.tensorboard) \
            if self.chief else tf.summary.create_noop_writer()
        resumed = self.restore(set_aside_damaged=True)
        if resumed:
            self._check_data_layout()
            if self.chief:
                self.run_dir.drop_metrics_after(int(self.epochs_done.numpy()))
            if self.cfg.model.init_from:
                say("model.init_from is not applied again: the run resumes from its "
                    "own checkpoint")
        elif self.start:
            self.start.apply(self.model)
            say(self.start.summary())
        # A few fixed images: before any save, the model must give finite scores
        # on them (weights can be finite yet so large that outputs are not).
        first = next(iter(self.pipeline.eval(batch_size=8)), None)
        if first is None:
            raise UserError("no evaluation images could be read (did every one fail to "
                            "decode?)")
        self._probe = tf.cast(first[0], tf.float32)
        spe = self.steps_per_epoch
        start_epoch = int(self.epochs_done.numpy())
        if cfg.epochs == 0 and not resumed:
            self._keep_starting_model()
            return
        if start_epoch >= cfg.epochs:
            say(f"already trained {start_epoch} of {cfg.epochs} epochs; nothing to do")
            return
        say(f"training {self.model.name}: {self.pipeline.source.train.size} train / "
            f"{self.pipeline.source.eval.size} eval images, {spe} steps of "
            f"{self.global_batch} per epoch, {self.strategy.num_replicas_in_sync} replica(s)")
        for epoch in range(start_epoch, cfg.epochs):
            self._train_epoch(epoch)

    def _keep_starting_model(self) -> None:
        """train.epochs 0: the starting weights, evaluated, become the run's model."""
        self.ema = None  # no step taken: the weight averages hold nothing yet
        record = {"epoch": 0, "step": 0}
        if self.cfg.train.mode == "train_and_eval":
            record.update({f"eval_{k}": v for k, v in self.evaluate().items()})
        self.save_best()
        self.best_top1.assign(record.get(f"eval_{self.best_metric}", 0.0))
        self.save_checkpoint(0)
        if self.chief:
            self.run_dir.append_metrics(record)
        say(json.dumps(record))

    def _train_epoch(self, epoch: int):
        cfg, spe = self.cfg.train, self.steps_per_epoch
        self._set_phase(epoch)
        size = train_image_size(self.cfg, epoch)
        if self.cfg.data.train_image_sizes and size != self._train_size:
            say(f"epoch {epoch + 1} on: training at {size} px")
        self._train_size = size
        in_epoch = int(self.batches_done.numpy()) - epoch * spe  # > 0 after a resume
        ds = self.pipeline.train(epoch).repeat().take(spe).skip(max(in_epoch, 0))
        iterator = iter(self.distribute(ds))
        progress = keras.utils.Progbar(spe, stateful_metrics=self._progress_names()) \
            if sys.stdout.isatty() and self.chief else None
        sums, started = metrics_lib.zeros(self.metrics), time.perf_counter()
        while in_epoch < spe:
            steps = tf.constant(self._steps_now(epoch, in_epoch))
            try:
                chunk, taken, loss = self.train_steps(iterator, steps)
            except tf.errors.OutOfRangeError:  # repeat() of nothing: no image decoded
                raise UserError("no training images could be read (did every one fail "
                                "to decode?)") from None
            sums = {k: sums[k] + chunk[k] for k in sums}  # on the device: no wait
            in_epoch += int(taken)  # the one wait per call
            step = epoch * spe + in_epoch
            if not np.isfinite(float(loss)):
                raise UserError(
                    f"the training loss became {float(loss)} at step {step} (epoch "
                    f"{epoch + 1}); stopped. {self._last_good()} (try a lower "
                    "train.learning_rate or set train.clip_grad_norm)")
            if progress or in_epoch % cfg.log_every_steps == 0 or in_epoch == spe:
                self._log_progress(epoch, in_epoch, step, self._rates(sums, "training"),
                                   progress)
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 \
                    and in_epoch < spe:
                self.save_checkpoint(step)
        self._end_epoch(epoch, self._rates(sums, "training"), time.perf_counter() - started,
                        progress)

    def _steps_now(self, epoch: int, in_epoch: int) -> int:
        """Steps for the next call: steps_per_execution, but never past the next
        log line, in-epoch checkpoint or the epoch's end."""
        cfg, spe = self.cfg.train, self.steps_per_epoch
        step = epoch * spe + in_epoch
        until = [cfg.steps_per_execution, spe - in_epoch,
                 cfg.log_every_steps - in_epoch % cfg.log_every_steps]
        if cfg.checkpoint_every_steps:
            until.append(cfg.checkpoint_every_steps - step % cfg.checkpoint_every_steps)
        return min(until)

    def _progress_names(self) -> list[str]:
        return [name for m in self.metrics for name in m.shown] + ["lr"]

    def _log_progress(self, epoch: int, in_epoch: int, step: int, rates: dict,
                      progress) -> None:
        cfg = self.cfg.train
        lr = float(self._learning_rate())
        shown = [(name, rates[name]) for m in self.metrics for name in m.shown]
        if progress:
            progress.update(in_epoch, shown + [("lr", lr)])
        elif self.chief:
            say(f"epoch {epoch + 1}/{cfg.epochs} step {in_epoch}/{self.steps_per_epoch}: "
                + " ".join(f"{name} {value:.4f}" for name, value in shown) + f" lr {lr:.3g}")
        if in_epoch % cfg.log_every_steps == 0:
            with self.writer.as_default(step=step):
                for name, value in metrics_lib.numbers(rates).items():
                    tf.summary.scalar(f"train/{name}", value)
                tf.summary.scalar("train/learning_rate", lr)

    def _end_epoch(self, epoch: int, train_rates: dict, seconds: float, progress) -> None:
        """Evaluates, keeps the best model, checkpoints and records the epoch."""
        cfg = self.cfg.train
        record = {"epoch": epoch + 1, "step": int(self.batches_done.numpy()),
                  "lr": float(self._learning_rate()),
                  **{f"train_{k}": v for k, v in train_rates.items()},
                  "images_per_sec": round(train_rates["images"] / max(seconds, 1e-9), 1),
                  "seconds": round(seconds, 1)}
        if self.cfg.data.train_image_sizes:
            record["train_image_size"] = self._train_size
        evaluated = cfg.mode == "train_and_eval" and (
            (epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.epochs)
        if evaluated:
            metrics = self.evaluate()
            record.update({f"eval_{k}": v for k, v in metrics.items()})
            improved = metrics[self.best_metric] > float(self.best_top1.numpy())
        else:
            # No eval data to choose by: keep the latest. Between evaluations of a
            # train_and_eval run, best.keras stays the best evaluated epoch.
            improved = cfg.mode != "train_and_eval"
        if improved:
            self.save_best()
            self.best_top1.assign(record.get(f"eval_{self.best_metric}", 0.0))
        self.epochs_done.assign(epoch + 1)
        self.save_checkpoint(record["step"])
        if self.chief:
            self.run_dir.append_metrics(record)
            if evaluated:
                with self.writer.as_default(step=record["step"]):
                    for name, value in metrics_lib.numbers(metrics).items():
                        tf.summary.scalar(f"eval/{name}", value)
            self.writer.flush()
            if progress:
                print()
            say(json.dumps(record))

    def _learning_rate(self):
        opt = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        return opt.learning_rate

    def weights_checksum(self) -> float:
        """Sum of |trainable weights|: replicas of one model agree on it exactly.
        (BatchNorm moving statistics are per-replica averages and may differ.)"""
        return float(sum(np.sum(np.abs(v.numpy())) for v in self.model.trainable_variables))

    def _rates(self, sums: dict, what: str = "evaluation") -> dict:
        rates = metrics_lib.rates(self.metrics, sums)
        if rates["images"] == 0:
            raise UserError(f"no {what} images could be read (did every one fail to "
                            "decode?)")
        return rates

    def close(self):
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
