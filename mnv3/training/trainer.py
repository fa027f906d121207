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
from mnv3.data import Pipeline
from mnv3.errors import UserError
from mnv3.model import build_from_config
from mnv3.model.layers import with_keras_batch_norm
from mnv3.training import optim
from mnv3.training.strategy import is_chief
from mnv3.training.run_dir import RunDir

SUM = tf.distribute.ReduceOp.SUM


def say(message: str) -> None:
    print(message, flush=True)


class _OptimizerHolder:
    """SwapEMAWeights reads `.optimizer` off its model; our loop has no compiled model."""

    def __init__(self, optimizer):
        self.optimizer = optimizer


class Trainer:
    def __init__(self, cfg: Config, run_dir: RunDir, strategy, pipeline: Pipeline):
        self.cfg, self.run_dir, self.strategy, self.pipeline = cfg, run_dir, strategy, pipeline
        self.chief = is_chief(strategy)
        self.steps_per_epoch = pipeline.steps_per_epoch()
        self.global_batch = cfg.train.batch_size
        with strategy.scope():
            self.model = build_from_config(cfg)
            self.optimizer = optim.make_optimizer(cfg.train, self.steps_per_epoch)
            if cfg.runtime.mixed_precision == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.optimizer.build(self.model.trainable_variables)
            self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False)
            # Batches trained on: the data position. Not optimizer.iterations, which
            # stands still when mixed_float16's loss scaling skips an overflowing step.
            self.batches_done = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.best_top1 = tf.Variable(-1.0, dtype=tf.float32, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              epochs_done=self.epochs_done,
                                              batches_done=self.batches_done,
                                              best_top1=self.best_top1)
        # Every worker takes part in saving; only the chief's copy is kept.
        self._scratch = None if self.chief else tempfile.mkdtemp(prefix="mnv3-worker-")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._scratch or run_dir.checkpoints,
            max_to_keep=cfg.train.keep_checkpoints)
        self.ema = None
        if cfg.train.ema_decay is not None:
            self.ema = keras.callbacks.SwapEMAWeights()
            self.ema.set_model(_OptimizerHolder(self.optimizer))
        self.loss_fn = keras.losses.CategoricalCrossentropy(
            from_logits=cfg.model.classifier_activation == "linear",
            label_smoothing=cfg.train.label_smoothing, reduction=None)
        self.kernels = optim.decayed_weights(self.model) if optim.uses_l2_loss(cfg.train) else []
        self.train_step = tf.function(
            lambda batch: self._on_all_replicas(self._train_step, batch),
            jit_compile=cfg.runtime.jit_compile or None)
        self.eval_step = tf.function(lambda batch: self._on_all_replicas(self._eval_step, batch),
                                     reduce_retracing=True)
        self.writer = tf.summary.create_file_writer(run_dir.tensorboard) if self.chief \
            else tf.summary.create_noop_writer()

    # --- steps (run on every replica) -------------------------------------------

    def _counts(self, labels, probs, per_example_loss):
        targets = tf.argmax(labels, axis=-1, output_type=tf.int32)
        probs = tf.cast(probs, tf.float32)
        top_k = min(5, self.cfg.data.num_classes)
        return {
            "loss": tf.reduce_sum(per_example_loss),
            "top1": tf.reduce_sum(tf.cast(tf.math.in_top_k(targets, probs, 1), tf.float32)),
            "top5": tf.reduce_sum(tf.cast(tf.math.in_top_k(targets, probs, top_k), tf.float32)),
            "count": tf.cast(tf.shape(labels)[0], tf.float32),
        }

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
        return self._counts(labels, probs, per_example)

    def _eval_step(self, images, labels):
        probs = self.model(tf.cast(images, tf.float32), training=False)
        return self._counts(labels, probs, self.loss_fn(labels, probs))

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

    def restore(self) -> bool:
        latest = self.manager.latest_checkpoint
        if self._scratch is not None:  # workers resume from the chief's checkpoint
            latest = tf.train.latest_checkpoint(self.run_dir.checkpoints)
        if not latest:
            return False
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched().expect_partial()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            raise UserError(f"{latest}: checkpoint does not fit this model and optimiser "
                            f"({str(e).splitlines()[0][:200]})") from None
        if int(self.batches_done.numpy()) == 0:  # a checkpoint from before batches_done
            self.batches_done.assign(self.optimizer.iterations)
        step = int(self.batches_done.numpy())
        say(f"resuming from {latest}: {int(self.epochs_done.numpy())} epochs done, "
            f"step {step}")
        return True

    def evaluate(self) -> dict:
        """Top-1 / top-5 / loss on the eval data, with EMA weights when EMA is on."""
        if self.ema:
            self.ema.on_test_begin()
        try:
            totals = None
            for batch in self.distribute(self.pipeline.eval()):
                out = self.eval_step(batch)
                totals = _add(totals, out)
        finally:
            if self.ema:
                self.ema.on_test_end()
        return _rates(totals)

    def save_best(self):
        """best.keras (EMA weights when on, Keras' own BatchNorm layers), written
        atomically by the chief."""
        if self.ema:
            self.ema.on_test_begin()
        try:
            if self.chief:
                tmp = os.path.join(self.run_dir.path, ".best.tmp.keras")
                with_keras_batch_norm(self.model).save(tmp)
                os.replace(tmp, self.run_dir.best_model)
        finally:
            if self.ema:
                self.ema.on_test_end()

    def fit(self):
        cfg = self.cfg.train
        self.restore()
        spe = self.steps_per_epoch
        start_epoch = int(self.epochs_done.numpy())
        if start_epoch >= cfg.epochs:
            say(f"already trained {start_epoch} of {cfg.epochs} epochs; nothing to do")
            return
        say(f"training {self.model.name}: {self.pipeline.source.train.size} train / "
            f"{self.pipeline.source.eval.size} eval images, {spe} steps of "
            f"{self.global_batch} per epoch, {self.strategy.num_replicas_in_sync} replica(s)")
        for epoch in range(start_epoch, cfg.epochs):
            self._train_epoch(epoch)

    def _train_epoch(self, epoch: int):
        cfg, spe = self.cfg.train, self.steps_per_epoch
        done_in_epoch = int(self.batches_done.numpy()) - epoch * spe
        ds = self.pipeline.train(epoch).repeat().take(spe).skip(max(done_in_epoch, 0))
        progress = keras.utils.Progbar(spe, stateful_metrics=["loss", "top1", "lr"]) \
            if sys.stdout.isatty() and self.chief else None
        totals, started, images = None, time.perf_counter(), 0
        for batch in self.distribute(ds):
            out = {k: float(v) for k, v in self.train_step(batch).items()}
            step = int(self.batches_done.assign_add(1).numpy())
            if not np.isfinite(out["loss"]):
                raise UserError(
                    f"the training loss became {out['loss']} at step {step} (epoch "
                    f"{epoch + 1}); stopped, the last good checkpoint in "
                    f"{self.run_dir.checkpoints} is intact (try a lower "
                    "train.learning_rate or set train.clip_grad_norm)")
            totals = _add(totals, out)
            images += out["count"]
            rates = _rates(totals)
            lr = float(self._learning_rate())
            in_epoch = step - epoch * spe
            if progress:
                progress.update(in_epoch, [("loss", rates["loss"]), ("top1", rates["top1"]),
                                           ("lr", lr)])
            elif self.chief and (in_epoch % cfg.log_every_steps == 0 or in_epoch == spe):
                say(f"epoch {epoch + 1}/{cfg.epochs} step {in_epoch}/{spe}: loss "
                    f"{rates['loss']:.4f} top1 {rates['top1']:.4f} lr {lr:.3g}")
            if in_epoch % cfg.log_every_steps == 0:
                with self.writer.as_default(step=step):
                    tf.summary.scalar("train/loss", rates["loss"])
                    tf.summary.scalar("train/top1", rates["top1"])
                    tf.summary.scalar("train/learning_rate", lr)
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 \
                    and in_epoch < spe:
                self.manager.save(checkpoint_number=step)
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "step": int(self.batches_done.numpy()),
                  "lr": float(self._learning_rate()),
                  **{f"train_{k}": v for k, v in _rates(totals).items()},
                  "images_per_sec": round(images / max(seconds, 1e-9), 1),
                  "seconds": round(seconds, 1)}
        if cfg.mode == "train_and_eval":
            metrics = self.evaluate()
            record.update({f"eval_{k}": v for k, v in metrics.items()})
            improved = metrics["top1"] > float(self.best_top1.numpy())
        else:
            improved = True  # no eval data to choose by: keep the latest
        if improved:
            self.save_best()
            self.best_top1.assign(record.get("eval_top1", 0.0))
        self.epochs_done.assign(epoch + 1)
        self.manager.save(checkpoint_number=record["step"])
        if self.chief:
            self.run_dir.append_metrics(record)
            with self.writer.as_default(step=record["step"]):
                for key in ("eval_loss", "eval_top1", "eval_top5"):
                    if key in record:
                        tf.summary.scalar(key.replace("_", "/", 1), record[key])
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

    def close(self):
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _add(totals, out):
    if totals is None:
        return {k: float(v) for k, v in out.items()}
    return {k: totals[k] + float(v) for k, v in out.items()}


def _rates(totals) -> dict:
    if not totals or totals["count"] == 0:
        raise UserError("no evaluation images could be read")
    n = totals["count"]
    return {"loss": totals["loss"] / n, "top1": totals["top1"] / n,
            "top5": totals["top5"] / n, "images": int(n)}
