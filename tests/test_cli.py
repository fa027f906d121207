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
