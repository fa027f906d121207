"""A BatchNormalization layer that trains through TensorFlow's fused kernel.

Keras 3 trains BatchNorm as separate ops (two reductions for the moments, then
rsqrt, multiply and add, each with its own gradient pass over the feature map).
TensorFlow's FusedBatchNormV3 does the same work in one kernel forward and one
backward (oneDNN's on x86). On 2 CPU cores that trains MobileNetV3-Small at
32 px 25% faster (BENCHMARKS.md). Inference, and the options the kernel does
not cover (masks, renorm, synchronized statistics), run Keras' own code.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# The fused kernel clamps smaller epsilons up to this, which would change the result.
_FUSED_MIN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="mnv3")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization with a faster training step; same
    weights, outputs and moving-statistics updates."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, "float32")  # as Keras: statistics in float32 under mixed precision
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32"),
            epsilon=self.epsilon, is_training=True)
        # The kernel hands back the unbiased variance; Keras averages the biased one.
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], "float32")
        variance = variance * (count - 1.0) / count
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + batch * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow"
                and mask is None and len(inputs.shape) == 4
                and self.axis in (-1, 3) and self.scale and self.center
                and not self.renorm and not self.synchronized
                and self.epsilon >= _FUSED_MIN_EPSILON)


def with_keras_batch_norm(model: keras.Model, size: tuple[int, int] | None = None
                          ) -> keras.Model:
    """A copy of `model` (same weights, every layer trainable) whose BatchNorm
    layers are Keras' own, so a saved file loads with plain Keras, without mnv3
    on the path. `size`: (height, width) of the copy's input, for a model built
    for any size (a resolution schedule); None keeps the model's."""
    def clone(layer):
        cls = type(layer)
        if isinstance(layer, FusedBatchNormalization):
            cls = keras.layers.BatchNormalization
        config = layer.get_config()
        config["trainable"] = True  # a backbone frozen for fine-tuning is not frozen in the file
        return cls.from_config(config)

    inputs = None
    if size is not None:
        inputs = keras.Input((*size, model.input.shape[-1]), name=model.input.name)
    copy = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
