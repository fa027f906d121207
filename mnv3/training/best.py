"""best.keras: the model of the best evaluated epoch (the task's best_metric),
with EMA weights when EMA is on and Keras' own BatchNorm layers, written
atomically by the chief and never with non-finite weights. (A
quantization-aware model keeps its QAT layers, which load where mnv3 is
imported.)"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from mnv3.files import atomic_path
from mnv3.model.layers import with_keras_batch_norm


class BestModel:
    """Made in the strategy's scope: `value` is a checkpointed variable (saved
    under the key `best_top1`, its name before there were other tasks, so old
    checkpoints resume)."""

    def __init__(self, path: str, input_size: tuple[int, int], chief: bool, keeper,
                 ema=None):
        self.path, self.input_size, self.chief = path, input_size, chief
        self.keeper, self.ema = keeper, ema
        self.value = tf.Variable(-1.0, dtype=tf.float32, trainable=False)
        self._copy = None  # the saved model, cloned once (see save)

    def improves(self, value: float) -> bool:
        return value > float(self.value.numpy())

    def save(self, model, value: float) -> None:
        """Writes `model` as best.keras and records `value` as the best so far."""
        with self.ema.averaged() if self.ema else contextlib.nullcontext():
            self.keeper.refuse_non_finite("best.keras")
            if self.chief:
                # Cloning costs more than the save; later saves refill one copy.
                if self._copy is None:
                    self._copy = with_keras_batch_norm(model, self.input_size)
                else:
                    self._copy.set_weights(model.get_weights())
                with atomic_path(self.path) as tmp:
                    self._copy.save(tmp)
        self.value.assign(value)
