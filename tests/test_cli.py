import glob
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_one_line_error, run_cli


def test_train_rejects_bad_config_with_one_line(write_yaml, tmp_path):
    path = write_yaml("train:\n  epohcs: 3\n")
    result = run_cli("train.py", "--config", path, "--model_dir", str(tmp_path / "run"))
    assert_one_line_error(result, path, "train.epohcs", "did you mean 'epochs'")
    assert not (tmp_path / "run").exists()


def test_export_needs_a_run_directory(tmp_path):
    result = run_cli("export_tflite.py", "--model_dir", str(tmp_path / "nothing"))
    assert_one_line_error(result, "nothing")


def test_help_documents_flags():
    for script in ["train.py", "export_tflite.py"]:
        out = run_cli(script, "--help").stdout
        for flag in ["--config", "--set", "--model_dir"]:
            assert flag in out, (script, flag)


def _library_lines(text):
    """Lines that TensorFlow, the converter or MediaPipe print below Python."""
    return [line for line in text.splitlines()
            if line.startswith(("I0000", "W0000", "E0000", "INFO:", "WARNING: All log"))]


@pytest.mark.slow
def test_library_chatter_is_held_back_unless_verbose(exported, tmp_path):
    model_dir, _ = exported
    tflite = glob.glob(os.path.join(model_dir, "export", "*_float32.tflite"))[0]
    image = tmp_path / "photo.png"
    image.write_bytes(tf.io.encode_png(np.full((50, 70, 3), 128, np.uint8)).numpy())
    # A bad image after a good one: the good one's line, then the bad one's
    # error as the last line, nothing after it at exit (MediaPipe's finaliser
    # once failed there), and no library line anywhere.
    quiet = run_cli("predict.py", "--model", tflite, str(image), str(tmp_path / "gone.png"))
    assert quiet.stdout.startswith(str(image)) and _library_lines(quiet.stderr) == []
    assert_one_line_error(quiet, "gone.png: not found")
    verbose = run_cli("predict.py", "--model", tflite, str(image), "--verbose")
    assert verbose.returncode == 0 and _library_lines(verbose.stderr)
    assert verbose.stdout == quiet.stdout


def test_a_failure_shows_what_the_libraries_printed(capfd):
    import keras

    from mnv3.errors import UserError
    from mnv3.tflite import modes
    from mnv3.tflite.convert import convert
    from mnv3.native_output import libraries_quiet

    # A conversion that fails: the converter's own lines come out with the error.
    image = keras.Input((8,), batch_size=1, name="image")
    model = keras.Model(image, keras.layers.Lambda(lambda x: tf.math.bessel_i1e(x))(image))
    capfd.readouterr()
    with pytest.raises(UserError, match="TFLite conversion"):
        convert(model, modes.get("float32"))
    err = capfd.readouterr().err
    # Its error, and its native log lines (glog's "I0000 ..." or "W0000 ...").
    assert "BesselI1e" in err and re.search(r"^[IW]\d{4} \S+ +\d+ \w+\.cc:\d+\] ", err, re.M)
    # A command that crashes shows what was held back; one that works does not.
    with pytest.raises(RuntimeError):
        with libraries_quiet():
            os.write(2, b"native note before a crash\n")
            raise RuntimeError("boom")
    assert "native note before a crash" in capfd.readouterr().err
    with libraries_quiet():
        os.write(2, b"native chatter\n")
    assert "native chatter" not in capfd.readouterr().err
