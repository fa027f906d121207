"""Weight averaging (train.ema_decay), BatchNorm statistics included.

TensorFlow's ExponentialMovingAverage, as the paper's TensorFlow code uses it:
every trainable variable and every BatchNorm moving mean and variance, with
`num_updates` set to the step, so the decay is min(decay, (1 + step) /
(10 + step)) and early averages follow the weights instead of holding the
initial ones for thousands of steps.

Keras' optimiser EMA (use_ema) is not used: it averages trainable variables
only, so evaluation ran averaged convolutions with BatchNorm statistics
gathered for the raw weights (on CIFAR-10 at EMA 0.999: 77.2% against 88.3%
raw), and its constant decay keeps the random initial weights in the average
long after training has left them (a 0.999 average of MobileNetV3-Small on
CIFAR-10 still evaluated at chance after 4 epochs). Both are in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf


class Averages:
    """Created in the strategy's scope; `update()` after each optimiser step,
    `swap_in()` / `swap_out()` around evaluation and saving."""

    def __init__(self, model: keras.Model, optimizer, decay: float):
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        statistics = [v for layer in model.layers
                      if isinstance(layer, keras.layers.BatchNormalization)
                      for v in (layer.moving_mean, layer.moving_variance)]
        # The tf.Variables under Keras' wrappers, which TensorFlow's EMA takes.
        self.variables = [v.value for v in [*model.trainable_variables, *statistics]]
        # Counted up by each applied step: the warm-up of the decay.
        self._ema = tf.train.ExponentialMovingAverage(decay, num_updates=inner.iterations.value)
        self._ema.apply(self.variables)  # creates the averages, equal to the values now
        self.averages = [self._ema.average(v) for v in self.variables]  # checkpointed

    def update(self) -> None:
        self._ema.apply(self.variables)

    @contextlib.contextmanager
    def averaged(self):
        """The averages in the model's variables for the duration (evaluation,
        saving); the live weights are back afterwards, whatever happens."""
        self.swap_in()
        try:
            yield
        finally:
            self.swap_out()

    def swap_in(self) -> None:
        self._exchange()

    def swap_out(self) -> None:
        self._exchange()

    def _exchange(self) -> None:
        for value, average in zip(self.variables, self.averages):
            live = value.numpy()  # a copy: a read tensor may share the buffer
            value.assign(average.numpy())
            average.assign(live)
