"""Train a MobileNetV3 classifier.

    python train.py --config configs/quickstart.yaml --model_dir runs/quickstart
"""

from absl import flags, logging

from mnv3 import config as config_lib
from mnv3 import cli

flags.DEFINE_string("config", None, "YAML experiment config (see configs/).")
flags.DEFINE_multi_string("set", [], "Override a config key, KEY=VALUE, e.g. "
                          "--set train.epochs=5 (repeatable).")
flags.DEFINE_string("model_dir", None, "Where checkpoints, best.keras, logs and the "
                    "resolved config go; rerun the same command to resume.")
flags.mark_flags_as_required(["config", "model_dir"])
FLAGS = flags.FLAGS


def _main(argv):
    del argv
    # TensorFlow's own INFO lines (checkpoint sharding, ...) drown the progress.
    logging.set_verbosity(logging.WARNING)
    cfg = config_lib.load(FLAGS.config, FLAGS.set)
    from mnv3.training import run

    run(cfg, FLAGS.model_dir)


if __name__ == "__main__":
    cli.main(_main)
