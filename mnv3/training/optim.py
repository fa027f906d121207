"""Optimisers and learning-rate schedules from the `train` config section."""

from __future__ import annotations

import math

import keras
from keras import ops

from mnv3.config import TrainConfig


class WarmupExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then `peak * decay_rate ** floor(steps_after / decay_steps)`:
    the paper's staircase (0.99 every 3 epochs) with a warm-up in front."""

    def __init__(self, peak, warmup_steps, decay_steps, decay_rate):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.peak * (step + 1) / max(self.warmup_steps, 1)
        decays = ops.floor(ops.maximum(step - self.warmup_steps, 0) / self.decay_steps)
        decayed = self.peak * ops.power(self.decay_rate, decays)
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate}


class WarmupConstant(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak, warmup_steps):
        self.peak = peak
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return self.peak * ops.minimum(1.0, (step + 1) / max(self.warmup_steps, 1))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def peak_learning_rate(cfg: TrainConfig) -> float:
    """Linear scaling with the global batch size (Goyal et al. 2017)."""
    return cfg.learning_rate * cfg.batch_size / cfg.base_batch_size


def make_schedule(cfg: TrainConfig, steps_per_epoch: int):
    peak = peak_learning_rate(cfg)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else peak,
            decay_steps=max(total - warmup, 1), alpha=0.0,
            warmup_target=peak if warmup else None, warmup_steps=warmup)
    if cfg.schedule == "exponential":
        return WarmupExponentialDecay(peak, warmup, cfg.decay_epochs * steps_per_epoch,
                                      cfg.decay_rate)
    return WarmupConstant(peak, warmup)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    schedule = make_schedule(cfg, steps_per_epoch)
    ema = dict(use_ema=cfg.ema_decay is not None, ema_momentum=cfg.ema_decay or 0.99)
    clip = dict(global_clipnorm=cfg.clip_grad_norm)
    if cfg.optimizer == "rmsprop":
        # TF1's RMSProp divides by sqrt(ms + eps), Keras by sqrt(ms) + eps; with
        # sqrt(eps) the two agree where it matters, when ms is small.
        return keras.optimizers.RMSprop(schedule, rho=cfg.rho, momentum=cfg.momentum,
                                        epsilon=math.sqrt(cfg.epsilon), **ema, **clip)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=cfg.momentum,
                                    nesterov=cfg.nesterov, **ema, **clip)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay,
                                       **ema, **clip)
    # Decoupled decay only on kernels, as the L2 term is for the other optimisers.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def uses_l2_loss(cfg: TrainConfig) -> bool:
    """RMSprop and SGD get weight decay as an L2 term in the loss."""
    return cfg.optimizer != "adamw" and cfg.weight_decay > 0


def decayed_weights(model) -> list:
    """Conv and dense kernels: the weights that weight decay applies to."""
    return [v for layer in model.layers for v in layer.trainable_weights
            if v.path.endswith(("kernel", "depthwise_kernel"))]
