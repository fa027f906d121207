"""The train / eval loop: one code path for one device, several GPUs and several
machines. A plain tf.function step under `strategy.run` (Keras 3's `model.fit`
fails under MultiWorkerMirroredStrategy, keras-team/keras#20585), called one or
several steps at a time (step_calls.py), checkpoints by
tf.train.CheckpointManager (keeper.py), best.keras (best.py), logs (logs.py),
EMA by ema.py.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import tensorflow as tf

from mnv3 import metrics as metrics_lib
from mnv3.config import Config
from mnv3.console import say
from mnv3.data import Pipeline
from mnv3.data.pipeline import train_image_size
from mnv3.errors import UserError
from mnv3.model.pretrained import Start
from mnv3.model.quantize_aware import quantize_aware
from mnv3.run_dir import RunDir
from mnv3.tflite.graph import float_layers
from mnv3.training import ema as ema_lib
from mnv3.training import optim
from mnv3.training.best import BestModel
from mnv3.training.keeper import RETRY_HINT, CheckpointKeeper, FiniteGuard, Position
from mnv3.training.logs import TrainingLog
from mnv3.training.phases import Phases, backbone_variables, frozen_batch_norm
from mnv3.training.step_calls import train_calls
from mnv3.training.strategy import distribute, is_chief

SUM = tf.distribute.ReduceOp.SUM


class Trainer:
    def __init__(self, cfg: Config, run_dir: RunDir, strategy, pipeline: Pipeline,
                 start: Start | None = None):
        """`pipeline` carries the task; `start`: the weights a fresh run begins
        with (model.init_from), never used by a run that resumes its own."""
        self.cfg, self.run_dir, self.strategy, self.pipeline = cfg, run_dir, strategy, pipeline
        self.task, self.start = pipeline.task, start
        self.chief = is_chief(strategy)
        # train.epochs 0 takes no step, so even a set smaller than a batch will do.
        self.steps_per_epoch = pipeline.steps_per_epoch() if cfg.train.epochs else 1
        self.global_batch = cfg.train.batch_size
        with strategy.scope():
            # A resolution schedule trains one model at several sizes; its saved
            # copy (best.keras) takes data.image_size, as the export expects.
            self.model = self.task.build(
                cfg, image_size=None if cfg.data.train_image_sizes else -1)
            if cfg.train.qat_epochs:
                self.model = quantize_aware(
                    self.model, float_layers(self.model) if cfg.export.int8_float_stem else ())
            self.optimizer = optim.build_optimizer(
                cfg, self.model, self.steps_per_epoch,
                backbone_variables(self.model, self.task.head_layers))
            self.position = Position()
            self.ema = None if cfg.train.ema_decay is None else \
                ema_lib.Averages(self.model, self.optimizer, cfg.train.ema_decay)
            guard = FiniteGuard(self.model, self.optimizer)
            self.checkpoint = tf.train.Checkpoint(
                model=self.model, optimizer=self.optimizer,
                epochs_done=self.position.epochs_done,
                batches_done=self.position.batches_done,
                # Only EMA runs have averages: other checkpoints are as before.
                **({"ema_averages": self.ema.averages} if self.ema else {}))
            self.keeper = CheckpointKeeper(self.checkpoint, run_dir,
                                           cfg.train.keep_checkpoints, self.chief, guard,
                                           self.position)
            self.best = BestModel(run_dir.best_model, self.task.input_size, self.chief,
                                  self.keeper, self.ema)
        self.checkpoint.best_top1 = self.best.value  # its key since the first runs
        self.metrics = self.task.metrics()
        # Eval values of the whole set (a detector's mAP): outputs come off the device.
        self.keeps_outputs = self.task.whole_set_score(pipeline.class_names) is not None
        self.loss_fn = self.task.loss()
        self.phases = Phases(self.model, self.task.head_layers,
                             cfg.train.freeze_backbone_epochs,
                             frozen_batch_norm(cfg, self.model, self.task.head_layers, start,
                                               run_dir),
                             qat_from=cfg.train.epochs - cfg.train.qat_epochs
                             if cfg.train.qat_epochs else None)
        self._train_size = None  # the resolution of the epoch in progress
        self._trace_steps()

    def _trace_steps(self) -> None:
        """(Re)traces the steps for the variables that train now and the int8 rounding."""
        cfg = self.cfg
        self.kernels = (optim.decayed_weights(self.model, cfg.train.decay_depthwise)
                        if optim.uses_l2_loss(cfg.train) else [])
        step = lambda batch: self._on_all_replicas(self._replica_train_step, batch)  # noqa: E731
        # One step may be XLA-compiled; the call around it reads an iterator, which
        # XLA cannot, so the step is then a function of its own.
        self.train_batches = train_calls(
            tf.function(step, jit_compile=True) if cfg.runtime.jit_compile else step,
            self.position.batches_done, self.metrics, cfg.train.steps_per_execution)
        self.eval_batch = None  # traced by evaluate(), for its data's spec

    # --- steps -----------------------------------------------------------------

    def _replica_train_step(self, images, labels):
        """One optimiser step on this replica's share of a batch."""
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

    def _replica_eval_step(self, images, labels):
        probs = self.model(tf.cast(images, tf.float32), training=False)
        sums = metrics_lib.batch_sums(self.metrics, labels, probs, self.loss_fn(labels, probs))
        return sums, ((labels, probs) if self.keeps_outputs else ())

    def _eval_batch(self, batch):
        """The batch's metric sums over every replica, and (keeps_outputs) its
        labels and outputs gathered from them."""
        sums, kept = self.strategy.run(self._replica_eval_step, args=batch)
        return ({k: self.strategy.reduce(SUM, v, axis=None) for k, v in sums.items()},
                tuple(self.strategy.gather(v, axis=0) for v in kept))

    def _on_all_replicas(self, step_fn, batch):
        """Runs `step_fn` on every replica and sums its counts across them."""
        out = self.strategy.run(step_fn, args=batch)
        return {k: self.strategy.reduce(SUM, v, axis=None) for k, v in out.items()}

    # --- public ------------------------------------------------------------------

    def evaluate(self) -> dict:
        """The task's metrics on the eval data, with EMA weights when EMA is on."""
        score = self.task.whole_set_score(self.pipeline.class_names)
        with self.ema.averaged() if self.ema else contextlib.nullcontext():
            sums = metrics_lib.zeros(self.metrics)
            data = distribute(self.strategy, self.pipeline.eval())
            # The spec leaves the batch size open: the last batch needs no trace of its own.
            self.eval_batch = self.eval_batch or tf.function(
                self._eval_batch, input_signature=[data.element_spec], autograph=False)
            for batch in data:
                out, kept = self.eval_batch(batch)  # sums stay on the device till the end
                sums = {k: sums[k] + out[k] for k in sums}
                if score:
                    score.add(*(np.asarray(v) for v in kept))
        rates = metrics_lib.rates(self.metrics, sums)
        return {**rates, **score.result()} if score else rates

    def data_layout(self) -> dict:
        return {"train_images": self.pipeline.source.train.size,
                "batch_size": self.global_batch}

    def fit(self):
        cfg = self.cfg.train
        self.log = TrainingLog(self.run_dir, self.chief, self.metrics, cfg.epochs,
                               self.steps_per_epoch, cfg.log_every_steps)
        resumed = self.keeper.restore(set_aside_damaged=True)
        if resumed:
            self.keeper.check_data_layout(self.data_layout())
            if self.chief:
                self.run_dir.drop_metrics_after(int(self.position.epochs_done.numpy()))
            if self.cfg.model.init_from:
                say("model.init_from is not applied again: the run resumes from its checkpoint")
        elif self.start:
            self.start.apply(self.model)
            say(self.start.summary())
        # Before any save, the model must give finite scores on a few fixed images.
        self.keeper.guard.probe_with(self.pipeline.eval(batch_size=8))
        start_epoch = int(self.position.epochs_done.numpy())
        if cfg.epochs == 0 and not resumed:
            self._keep_starting_model()
            return
        if start_epoch >= cfg.epochs:
            say(f"already trained {start_epoch} of {cfg.epochs} epochs; nothing to do")
            return
        say(f"training {self.model.name}: {self.pipeline.source.train.size} train / "
            f"{self.pipeline.source.eval.size} eval images, {self.steps_per_epoch} steps "
            f"of {self.global_batch} per epoch, {self.strategy.num_replicas_in_sync} "
            "replica(s)")
        for epoch in range(start_epoch, cfg.epochs):
            self._train_epoch(epoch)

    def _keep_starting_model(self) -> None:
        """train.epochs 0: the starting weights, evaluated, become the run's model."""
        self.ema = self.best.ema = None  # no step taken: the averages hold nothing yet
        record = {"epoch": 0, "step": 0}
        if self.cfg.train.mode == "train_and_eval":
            record.update({f"eval_{k}": v for k, v in self.evaluate().items()})
        self.best.save(self.model, record.get(f"eval_{self.task.best_metric}", 0.0))
        self.keeper.save(0, self.data_layout())
        self.log.record(record)

    def enter_epoch(self, epoch: int) -> None:
        """Sets up the phase `epoch` is in (what trains, int8 rounding or not)."""
        if self.phases.enter(epoch):
            self._trace_steps()

    def _train_epoch(self, epoch: int):
        cfg, spe = self.cfg.train, self.steps_per_epoch
        self.enter_epoch(epoch)
        size = train_image_size(self.cfg, epoch)
        if self.cfg.data.train_image_sizes and size != self._train_size:
            say(f"epoch {epoch + 1} on: training at {size} px")
        self._train_size = size
        in_epoch = int(self.position.batches_done.numpy()) - epoch * spe  # > 0 on resume
        ds = self.pipeline.train(epoch).repeat().take(spe).skip(max(in_epoch, 0))
        iterator = iter(distribute(self.strategy, ds))
        self.log.start_epoch()
        sums, started = metrics_lib.zeros(self.metrics), time.perf_counter()
        while in_epoch < spe:
            count = tf.constant(self._batches_in_next_call(epoch, in_epoch))
            try:
                chunk, taken, loss = self.train_batches(iterator, count)
            except tf.errors.OutOfRangeError:  # repeat() of nothing: no image decoded
                raise metrics_lib.no_images("training") from None
            sums = {k: sums[k] + chunk[k] for k in sums}  # on the device: no wait
            in_epoch += int(taken)  # the one wait per call
            step = epoch * spe + in_epoch
            if not np.isfinite(float(loss)):
                raise UserError(
                    f"the training loss became {float(loss)} at step {step} (epoch "
                    f"{epoch + 1}); stopped. {self.keeper.last_good()} {RETRY_HINT}")
            if self.log.wants(in_epoch):
                rates = metrics_lib.rates(self.metrics, sums, "training")
                self.log.progress(epoch, in_epoch, step, rates, self._learning_rate())
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 \
                    and in_epoch < spe:
                self.keeper.save(step, self.data_layout())
        rates = metrics_lib.rates(self.metrics, sums, "training")
        self._end_epoch(epoch, rates, time.perf_counter() - started)

    def _batches_in_next_call(self, epoch: int, in_epoch: int) -> int:
        """steps_per_execution, never past the next log line, checkpoint or epoch end."""
        cfg, spe = self.cfg.train, self.steps_per_epoch
        step = epoch * spe + in_epoch
        until = [cfg.steps_per_execution, spe - in_epoch,
                 cfg.log_every_steps - in_epoch % cfg.log_every_steps]
        if cfg.checkpoint_every_steps:
            until.append(cfg.checkpoint_every_steps - step % cfg.checkpoint_every_steps)
        return min(until)

    def _end_epoch(self, epoch: int, train_rates: dict, seconds: float) -> None:
        """Evaluates, keeps the best model, checkpoints and records the epoch."""
        cfg = self.cfg.train
        record = {"epoch": epoch + 1, "step": int(self.position.batches_done.numpy()),
                  "lr": self._learning_rate(),
                  **{f"train_{k}": v for k, v in train_rates.items()},
                  "images_per_sec": round(train_rates["images"] / max(seconds, 1e-9), 1),
                  "seconds": round(seconds, 1)}
        if self.cfg.data.train_image_sizes:
            record["train_image_size"] = self._train_size
        evaluation = None
        if cfg.mode == "train_and_eval" and (
                (epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.epochs):
            evaluation = self.evaluate()
            record.update({f"eval_{k}": v for k, v in evaluation.items()})
            improved = self.best.improves(evaluation[self.task.best_metric])
        else:
            # No eval data to choose by: keep the latest. Between evaluations of a
            # train_and_eval run, best.keras stays the best evaluated epoch.
            improved = cfg.mode != "train_and_eval"
        if improved and self.phases.keeps_best(epoch):
            self.best.save(self.model, record.get(f"eval_{self.task.best_metric}", 0.0))
        self.position.epochs_done.assign(epoch + 1)
        self.keeper.save(record["step"], self.data_layout())
        self.log.end_epoch(record, evaluation)

    def _learning_rate(self) -> float:
        return float(getattr(self.optimizer, "inner_optimizer", self.optimizer).learning_rate)

    def weights_checksum(self) -> float:
        """Sum of |trainable weights|: replicas agree on it exactly (not on BatchNorm's)."""
        return float(sum(np.sum(np.abs(v.numpy())) for v in self.model.trainable_variables))

    def close(self):
        self.keeper.close()
