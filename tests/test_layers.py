import keras
import numpy as np
import pytest
import tensorflow as tf

from mnv3.model.layers import FusedBatchNormalization


def train_one_batch(layer, images):
    """Output, input and weight gradients, and moving statistics after one training call."""
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.cos(y))  # a loss whose gradient depends on y
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return [y, *grads, layer.moving_mean, layer.moving_variance]


@pytest.mark.parametrize("momentum, epsilon", [(0.99, 1e-3), (0.9, 1e-5)])
def test_fused_training_matches_keras_batch_normalization(momentum, epsilon):
    rng = np.random.default_rng(0)
    images = rng.normal(3.0, 2.0, (4, 6, 5, 8)).astype("float32")
    layers = [cls(momentum=momentum, epsilon=epsilon)
              for cls in (keras.layers.BatchNormalization, FusedBatchNormalization)]
    for layer in layers:
        layer.build(images.shape)
        layer.set_weights([rng.uniform(0.5, 1.5, 8).astype("float32") for _ in range(4)]
                          if layer is layers[0] else layers[0].get_weights())
    before = layers[0].get_weights()
    expected, fused = (train_one_batch(layer, images) for layer in layers)
    for name, want, got in zip(["output", "d_input", "d_gamma", "d_beta", "moving_mean",
                                "moving_variance"], expected, fused):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4,
                                   err_msg=name)
    # Both moving statistics were updated, so the comparison above is not of untouched copies.
    for moving, initial in zip(fused[4:], before[2:]):
        assert np.abs(np.asarray(moving) - initial).min() > 1e-3


def test_fused_layer_falls_back_to_keras_where_the_kernel_does_not_apply():
    # A tiny epsilon would be clamped by the fused kernel; the layer must not fuse then.
    layer = FusedBatchNormalization(epsilon=1e-7)
    images = np.random.default_rng(1).normal(0, 1e-3, (2, 3, 3, 4)).astype("float32")
    ref = keras.layers.BatchNormalization(epsilon=1e-7)
    np.testing.assert_allclose(layer(images, training=True).numpy(),
                               ref(images, training=True).numpy(), rtol=1e-5, atol=1e-5)
