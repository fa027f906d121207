"""Training: `run(cfg, model_dir)` trains, evaluates and checkpoints one run."""

from __future__ import annotations

import contextlib
import json

import keras

from mnv3 import tasks
from mnv3.config import Config
from mnv3.console import say
from mnv3.data import make_pipeline, user_errors_from_data
from mnv3.errors import UserError
from mnv3.model import pretrained
from mnv3.run_dir import RunDir
from mnv3.training import checkpoints
from mnv3.training.strategy import is_chief, make_strategy
from mnv3.training.trainer import Trainer


def run(cfg: Config, model_dir: str) -> dict | None:
    """Trains and/or evaluates as `cfg.train.mode` says. Returns eval metrics in
    `eval` mode; errors in use raise UserError before anything is written."""
    run_dir = RunDir(model_dir)
    if cfg.runtime.seed is not None:
        keras.utils.set_random_seed(cfg.runtime.seed)
    # Always set: the policy is process-global and must not leak between runs.
    keras.mixed_precision.set_dtype_policy(cfg.runtime.mixed_precision or "float32")
    strategy = make_strategy(cfg.runtime.strategy, cfg.runtime.tpu)
    training = cfg.train.mode != "eval"
    if not training and not checkpoints.on_disk(run_dir.checkpoints):
        raise _nothing_to_evaluate(model_dir)  # before the data and the model are built
    task = tasks.get(cfg)  # the one look-up: everything below is handed it
    pipeline = make_pipeline(cfg, task)  # bad data fails here, before model_dir is touched
    if training and cfg.train.epochs:
        pipeline.steps_per_epoch()  # a training set smaller than one batch fails here
    start = None
    if training and cfg.model.init_from and \
            not checkpoints.on_disk(run_dir.checkpoints):
        # Read and matched before model_dir is touched: a bad source writes nothing.
        start = pretrained.plan(cfg, task)
    with contextlib.ExitStack() as stack:
        if training and is_chief(strategy):
            run_dir.ensure_writable()
            # One trainer per run directory; held until this process ends.
            stack.enter_context(run_dir.training_lock())
        run_dir.check_compatible(cfg)
        if training and is_chief(strategy):
            run_dir.save_config(cfg)
            run_dir.save_labels(pipeline.class_names)
            if start:
                run_dir.save_init_record(start.record())
        trainer = Trainer(cfg, run_dir, strategy, pipeline, start)
        stack.callback(trainer.close)
        with user_errors_from_data(pipeline):
            if not training:
                if not trainer.keeper.restore():  # deleted since the check above
                    raise _nothing_to_evaluate(model_dir)
                metrics = trainer.evaluate()
                say(json.dumps({f"eval_{k}": v for k, v in metrics.items()}))
                return metrics
            trainer.fit()
            say(f"weights checksum {trainer.weights_checksum():.6f}")
            return None


def _nothing_to_evaluate(model_dir: str) -> UserError:
    return UserError(f"{model_dir}: no checkpoint to evaluate")
