"""Weight averaging (train.ema_decay) that includes BatchNorm's statistics.

Keras' optimiser EMA averages the trainable variables only. BatchNorm's moving
mean and variance are not trainable, so an evaluation with the averaged
weights ran them with statistics gathered for the raw, current weights: on
CIFAR-10 at EMA 0.999 that gave 77.2% where the raw weights gave 88.3%
(BENCHMARKS.md). The paper's TensorFlow code averages the moving statistics
with the weights; so do timm's ModelEma and this module, with the optimiser's
own formula, and swaps both in together.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class _OptimizerHolder:
    """SwapEMAWeights reads `.optimizer` off its model; our loop has no compiled model."""

    def __init__(self, optimizer):
        self.optimizer = optimizer


class Averages:
    """The optimiser's weight averages plus averages of every BatchNorm layer's
    moving statistics; `swapped()` puts both in place of the live values."""

    def __init__(self, model: keras.Model, optimizer, decay: float):
        self.decay = decay
        self.optimizer = optimizer
        self._weights = keras.callbacks.SwapEMAWeights()
        self._weights.set_model(_OptimizerHolder(optimizer))
        self.statistics = [v for layer in model.layers
                           if isinstance(layer, keras.layers.BatchNormalization)
                           for v in (layer.moving_mean, layer.moving_variance)]
        # Created in the strategy's scope by the caller; MEAN keeps replicas' equal
        # updates equal. Checkpointed beside the model (`statistics_averages`).
        self.averages = [tf.Variable(v.numpy(), trainable=False, name=f"average_{i}",
                                     aggregation=tf.VariableAggregation.MEAN)
                         for i, v in enumerate(self.statistics)]

    def update(self) -> None:
        """After each step (in the step function): average = decay * average +
        (1 - decay) * value; on the first step the average takes the value, as
        Keras does for the weights (the starting weights may come from a file)."""
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        first = tf.equal(inner.iterations, 1)  # counted up by the step just applied
        momentum = tf.where(first, 0.0, self.decay)
        for value, average in zip(self.statistics, self.averages):
            average.assign(momentum * average + (1.0 - momentum) * tf.cast(value, tf.float32))

    def swap_in(self) -> None:
        self._weights.on_test_begin()
        self._exchange()

    def swap_out(self) -> None:
        self._weights.on_test_end()
        self._exchange()

    def _exchange(self) -> None:
        for value, average in zip(self.statistics, self.averages):
            live = tf.identity(value.value)
            value.assign(average)
            average.assign(live)
