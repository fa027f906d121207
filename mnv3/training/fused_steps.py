"""Optimiser steps as TensorFlow's fused training kernels: one op per variable
(ResourceApplyAdam, ResourceApplyRMSProp, ResourceApplyKerasMomentum) where
Keras' own update_step builds about twenty.

The arithmetic is Keras': these kernels are the ones TensorFlow's optimisers
ran, and Keras 3 kept their formulas (Adam's bias-corrected rate, RMSprop's
epsilon inside the square root, SGD's `m = momentum * m - lr * g`); results
agree to float rounding (tests/test_training.py). The step runs at the same
speed; tracing it, at each training start and each phase change, takes less
time (BENCHMARKS.md, "Training start-up"). Keras' schedule, weight
decay, clipping and loss scaling run as before: only update_step changes.
Cases without a kernel here (sparse gradients, AMSGrad, centered RMSprop,
RMSprop or SGD without momentum) take Keras' own step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mnv3 import tf_internals


def _handle(variable):
    """The resource handle a kernel updates in place (under tf.distribute, this
    device's copy: update_step runs inside the strategy's update())."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


def _adam(opt, grad, variable, lr, slots):
    m, v = slots
    dtype = variable.dtype
    step = tf.cast(opt.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(opt.beta_1, dtype), tf.cast(opt.beta_2, dtype)
    return tf.raw_ops.ResourceApplyAdam(
        var=_handle(variable), m=_handle(m), v=_handle(v),
        beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=lr,
        beta1=beta_1, beta2=beta_2, epsilon=tf.cast(opt.epsilon, dtype), grad=grad)


def _rmsprop(opt, grad, variable, lr, slots):
    mean_square, momentum = slots
    dtype = variable.dtype
    return tf.raw_ops.ResourceApplyRMSProp(
        var=_handle(variable), ms=_handle(mean_square), mom=_handle(momentum), lr=lr,
        rho=tf.cast(opt.rho, dtype), momentum=tf.cast(opt.momentum, dtype),
        epsilon=tf.cast(opt.epsilon, dtype), grad=grad)


def _sgd(opt, grad, variable, lr, slots):
    (momentum,) = slots
    return tf.raw_ops.ResourceApplyKerasMomentum(
        var=_handle(variable), accum=_handle(momentum), lr=lr, grad=grad,
        momentum=tf.cast(opt.momentum, variable.dtype), use_nesterov=opt.nesterov)


# Keras class -> (whether this optimiser's settings have a kernel, the kernel).
KERNELS = {
    keras.optimizers.Adam: (lambda opt: not opt.amsgrad, _adam),  # AdamW too
    keras.optimizers.RMSprop: (lambda opt: opt.momentum > 0 and not opt.centered,
                               _rmsprop),
    keras.optimizers.SGD: (lambda opt: opt.momentum > 0, _sgd),
}


def _kernel_of(optimizer):
    for cls, (applies, kernel) in KERNELS.items():
        if isinstance(optimizer, cls):
            return (cls, kernel) if applies(optimizer) else None
    return None


class FusedSteps:
    """Mixed into a Keras optimiser class (in front of it): its update_step
    becomes one fused kernel per variable."""

    def update_step(self, gradient, variable, learning_rate):
        found = _kernel_of(self)
        if found is None or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        cls, kernel = found
        dtype = variable.dtype
        slots = tf_internals.optimizer_slots(self, cls.__name__, variable)
        return kernel(self, tf.cast(gradient, dtype), variable,
                      tf.cast(learning_rate, dtype), slots)


def fused(cls):
    """`cls` (a Keras optimiser class) with fused steps, under its own name."""
    return type(cls.__name__, (FusedSteps, cls), {})
