"""How the trainer calls its training step: one step per call into TensorFlow,
or several (train.steps_per_execution), and the data position counted with
each step taken."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from mnv3 import metrics as metrics_lib


def train_calls(step: Callable, batches_done: tf.Variable, metrics: list,
                steps_per_call: int) -> Callable:
    """A function (iterator, count) -> (metric sums, steps taken, last loss)
    that takes up to `count` steps (`step`: a batch -> its metric sums) from
    `iterator`, counting each in `batches_done`. It stops after a step whose
    loss is not finite: no further update lands on top of it."""
    # Not converted by AutoGraph, as Keras' own steps are not: the model, loss
    # and optimiser hold no Python control flow on tensors, and converting each
    # call inside them made every trace slower (BENCHMARKS.md, test suite).
    @tf.autograph.experimental.do_not_convert
    def take_one(iterator):
        out = step(next(iterator))
        batches_done.assign_add(1)
        return out, out["loss"] / out[metrics_lib.COUNT]

    if steps_per_call == 1:
        # The step alone, without a loop, as Keras' fit does: the loop's graph
        # took seconds more to build and optimise at every trace (each run, each
        # phase; BENCHMARKS.md, test suite), for a loop that would run once.
        @tf.function
        def one(iterator):
            out, loss = take_one(iterator)
            return out, tf.constant(1), loss
        return lambda iterator, count: one(iterator)

    @tf.function
    def several(iterator, count):  # `count` a tensor: traced once
        sums = metrics_lib.zeros(metrics)
        taken, loss = tf.constant(0), tf.constant(0.0)
        for _ in tf.range(count):
            out, loss = take_one(iterator)
            sums = {k: sums[k] + out[k] for k in sums}
            taken += 1
            if not tf.math.is_finite(loss):
                break
        return sums, taken, loss
    return several
