"""Optimisers and learning-rate schedules from the `train` config section."""

from __future__ import annotations

import keras
from keras import ops

from mnv3 import tf_internals
from mnv3.config import Config, TrainConfig
from mnv3.training.fused_steps import fused


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


class TwoPhases(keras.optimizers.schedules.LearningRateSchedule):
    """Fine-tuning: `first` for the head-only steps, then `second` from its own
    step 0, so training the whole network starts with its own warm-up."""

    def __init__(self, boundary, first, second):
        self.boundary = boundary
        self.first = first
        self.second = second

    def __call__(self, step):
        step = ops.cast(step, "float32")
        later = self.second(ops.maximum(step - self.boundary, 0.0))
        return ops.where(step < self.boundary, self.first(step), later)

    def get_config(self):
        return {"boundary": self.boundary,
                "first": keras.optimizers.schedules.serialize(self.first),
                "second": keras.optimizers.schedules.serialize(self.second)}


class _ScaledLearningRates:
    """Mixed into a Keras optimiser: chosen variables learn at a fraction of the
    learning rate, decoupled weight decay included (as a parameter group's lr
    does in PyTorch). Scaling their gradients instead would barely change an
    Adam or RMSprop step, which divides the scale back out."""

    def scale_learning_rate(self, variables, scale: float) -> None:
        """Call after build(): marks `variables` to learn at `scale` x the rate.
        (It overrides private optimiser hooks: see mnv3.tf_internals.)"""
        tf_internals.check_optimizer_hooks(type(self))
        self._lr_scale = {self._get_variable_index(v): scale for v in variables}

    def _scale_of(self, variable) -> float:
        scales = getattr(self, "_lr_scale", None)
        return scales.get(self._get_variable_index(variable), 1.0) if scales else 1.0

    def _use_weight_decay(self, variable):
        # Scaled variables get their decay in update_step, at their own rate.
        return self._scale_of(variable) == 1.0 and super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scale_of(variable)
        if scale != 1.0:
            learning_rate = learning_rate * scale
            if self.weight_decay is not None and super()._use_weight_decay(variable):
                rate = ops.cast(learning_rate, variable.dtype)
                variable.assign(variable - variable * ops.cast(self.weight_decay,
                                                               variable.dtype) * rate)
        return super().update_step(gradient, variable, learning_rate)


def _scalable(cls):
    return type(cls.__name__, (_ScaledLearningRates, cls), {})


def peak_learning_rate(cfg: TrainConfig) -> float:
    """Linear scaling with the global batch size (Goyal et al. 2017)."""
    return cfg.learning_rate * cfg.batch_size / cfg.base_batch_size


def make_schedule(cfg: TrainConfig, steps_per_epoch: int):
    """The configured schedule; with frozen-backbone epochs, one per phase."""
    frozen = cfg.freeze_backbone_epochs
    if not frozen or frozen == cfg.epochs:
        return _schedule(cfg, steps_per_epoch, cfg.epochs)
    return TwoPhases(frozen * steps_per_epoch,
                     _schedule(cfg, steps_per_epoch, frozen),
                     _schedule(cfg, steps_per_epoch, cfg.epochs - frozen))


def _schedule(cfg: TrainConfig, steps_per_epoch: int, epochs: int):
    peak = peak_learning_rate(cfg)
    total = epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total)
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else peak,
            decay_steps=max(total - warmup, 1), alpha=0.0,
            warmup_target=peak if warmup else None, warmup_steps=warmup)
    if cfg.schedule == "exponential":
        return WarmupExponentialDecay(peak, warmup, cfg.decay_epochs * steps_per_epoch,
                                      cfg.decay_rate)
    return WarmupConstant(peak, warmup)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, model=None):
    """The configured optimiser; with `backbone_lr_scale` one that can give some
    variables a lower rate (scale_learning_rate, after build). `model`: the one it
    will train, which `decay_depthwise: false` needs to find depthwise kernels."""
    schedule = make_schedule(cfg, steps_per_epoch)
    ema = {}  # weight averaging: mnv3.training.ema (Keras' leaves BatchNorm out)
    clip = dict(global_clipnorm=cfg.clip_grad_norm)
    def kind(cls):
        cls = fused(cls)
        return _scalable(cls) if cfg.backbone_lr_scale != 1.0 else cls
    if cfg.optimizer == "rmsprop":
        # Keras 3 divides by sqrt(ms + epsilon), as TF1's RMSProp in the paper's code.
        return kind(keras.optimizers.RMSprop)(
            schedule, rho=cfg.rho, momentum=cfg.momentum, epsilon=cfg.epsilon,
            **ema, **clip)
    if cfg.optimizer == "sgd":
        return kind(keras.optimizers.SGD)(schedule, momentum=cfg.momentum,
                                          nesterov=cfg.nesterov, **ema, **clip)
    if cfg.weight_decay == 0:
        # The same steps as AdamW at 0, without its decay pass, which evaluates
        # the learning-rate schedule once per variable (seconds of tracing).
        return kind(keras.optimizers.Adam)(schedule, **ema, **clip)
    optimizer = kind(keras.optimizers.AdamW)(schedule, weight_decay=cfg.weight_decay,
                                             **ema, **clip)
    # Decoupled decay on the weights the L2 term covers for the other optimisers.
    kept = [] if model is None or cfg.decay_depthwise else depthwise_kernels(model)
    optimizer.exclude_from_weight_decay(var_list=kept, var_names=["gamma", "beta", "bias"])
    return optimizer


def build_optimizer(cfg: Config, model, steps_per_epoch: int, backbone: list):
    """make_optimizer as a run trains with it: loss scaling under mixed_float16,
    built for `model`'s trainable variables, and the `backbone` variables at
    train.backbone_lr_scale of the rate."""
    optimizer = make_optimizer(cfg.train, steps_per_epoch, model)
    if cfg.runtime.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    if cfg.train.backbone_lr_scale != 1.0:
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        inner.scale_learning_rate(backbone, cfg.train.backbone_lr_scale)
    return optimizer


def uses_l2_loss(cfg: TrainConfig) -> bool:
    """RMSprop and SGD get weight decay as an L2 term in the loss."""
    return cfg.optimizer != "adamw" and cfg.weight_decay > 0


def depthwise_kernels(model) -> list:
    return [layer.kernel for layer in model.layers
            if isinstance(layer, keras.layers.DepthwiseConv2D)]


def decayed_weights(model, depthwise: bool = True) -> list:
    """Conv and dense kernels, depthwise ones if `depthwise`: the weights that
    weight decay applies to."""
    skipped = set() if depthwise else {id(v) for v in depthwise_kernels(model)}
    return [v for layer in model.layers for v in layer.trainable_weights
            if v.path.endswith("kernel") and id(v) not in skipped]
