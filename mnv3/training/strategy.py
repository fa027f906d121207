"""tf.distribute strategies from `runtime.strategy`, how data reaches their
replicas, and who writes files."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from mnv3.errors import UserError


def make_strategy(name: str, tpu: str | None = None) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise UserError("runtime.strategy multi_worker_mirrored needs TF_CONFIG "
                            "(cluster and task) in the environment of every worker")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError:
            raise UserError("TF_CONFIG is not valid JSON") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes logs, metrics and the best model; in a multi-worker run
    the other workers write their (collective) checkpoints to scratch space."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def distribute(strategy: tf.distribute.Strategy, ds: tf.data.Dataset):
    """`ds` split across the strategy's replicas."""
    options = tf.data.Options()
    # Sources read files inside map(), so sharding by file cannot work; every
    # worker builds the same seeded stream and keeps its share of elements.
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(ds.with_options(options))
