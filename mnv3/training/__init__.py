"""Training: `run(cfg, model_dir)` trains, evaluates and checkpoints one run."""

from __future__ import annotations

import json

import tensorflow as tf

from mnv3.config import Config
from mnv3.data import LABEL_RANGE_MESSAGE
from mnv3.errors import UserError
from mnv3.training.run_dir import RunDir


def run(cfg: Config, model_dir: str) -> dict | None:
    """Trains and/or evaluates as `cfg.train.mode` says. Returns eval metrics in
    `eval` mode; errors in use raise UserError before anything is written."""
    import keras

    from mnv3.data import make_pipeline
    from mnv3.training.strategy import is_chief, make_strategy
    from mnv3.training.trainer import Trainer, say

    run_dir = RunDir(model_dir)
    run_dir.check_compatible(cfg)
    if cfg.runtime.seed is not None:
        keras.utils.set_random_seed(cfg.runtime.seed)
    # Always set: the policy is process-global and must not leak between runs.
    keras.mixed_precision.set_dtype_policy(cfg.runtime.mixed_precision or "float32")
    strategy = make_strategy(cfg.runtime.strategy, cfg.runtime.tpu)
    pipeline = make_pipeline(cfg)  # bad data fails here, before model_dir is touched
    if cfg.train.mode != "eval":
        run_dir.ensure_writable()
        if is_chief(strategy):
            run_dir.save_config(cfg)
            run_dir.save_labels(pipeline.class_names)
    trainer = Trainer(cfg, run_dir, strategy, pipeline)
    try:
        if cfg.train.mode == "eval":
            if not trainer.restore():
                raise UserError(f"{model_dir}: no checkpoint to evaluate")
            metrics = trainer.evaluate()
            say(json.dumps({f"eval_{k}": v for k, v in metrics.items()}))
            return metrics
        trainer.fit()
        say(f"weights checksum {trainer.weights_checksum():.6f}")
        return None
    except tf.errors.InvalidArgumentError as e:
        if LABEL_RANGE_MESSAGE in str(e):
            raise UserError(f"{LABEL_RANGE_MESSAGE} (data.num_classes is "
                            f"{cfg.data.num_classes}; for TFRecords check "
                            "data.label_offset)") from None
        raise UserError(f"an image could not be decoded: {str(e).splitlines()[0][:300]}") \
            from None
    finally:
        trainer.close()
