"""Export a trained run to TFLite for Android.

    python export_tflite.py --model_dir runs/quickstart [--quant float32,int8]
"""

from absl import flags, logging

from mnv3 import config as config_lib
from mnv3 import cli

flags.DEFINE_string("model_dir", None, "A run directory written by train.py.")
flags.DEFINE_string("config", None, "Config to use instead of the run's saved "
                    "config.yaml (rarely needed).")
flags.DEFINE_multi_string("set", [], "Override a config key, KEY=VALUE, e.g. "
                          "--set export.quant=[int8] (repeatable).")
flags.DEFINE_list("quant", None, "TFLite modes: float32, fp16, dynamic, int8 "
                  "(default: export.quant from the config).")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def _main(argv):
    del argv
    import os

    logging.set_verbosity(logging.WARNING)

    config_path = FLAGS.config or os.path.join(FLAGS.model_dir, "config.yaml")
    overrides = list(FLAGS.set)
    if FLAGS.quant:
        overrides.append(f"export.quant=[{','.join(FLAGS.quant)}]")
    cfg = config_lib.load(config_path, overrides)
    from mnv3.export import run

    run(cfg, FLAGS.model_dir)


if __name__ == "__main__":
    cli.main(_main)
