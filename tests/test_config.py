import os

import pytest

from mnv3 import config as config_lib
from mnv3.config import ConfigError
from tests.conftest import ROOT


def test_defaults_and_required_key_names():
    # Changing one of these changes what every existing config trains.
    cfg = config_lib.load(None)
    expected = {"model.variant": "small", "model.alpha": 1.0, "model.minimalistic": False,
                "data.source": "synthetic", "data.train_dir": None, "data.eval_dir": None,
                "data.image_size": 224, "data.num_classes": 10, "train.epochs": 10,
                "train.batch_size": 64}
    got = {dotted: getattr(getattr(cfg, dotted.split(".")[0]), dotted.split(".")[1])
           for dotted in expected}
    assert got == expected


def test_yaml_values_are_applied(write_yaml):
    path = write_yaml("model:\n  variant: large\n  alpha: 0.75\ndata:\n  image_size: 96\n")
    cfg = config_lib.load(path)
    assert (cfg.model.variant, cfg.model.alpha, cfg.data.image_size) == ("large", 0.75, 96)
    assert cfg.train.epochs == config_lib.TrainConfig().epochs  # untouched default


@pytest.mark.parametrize("text, fragments", [
    ("model:\n  alpah: 0.5\n", ["model.alpah", "did you mean 'alpha'"]),
    ("modle:\n  alpha: 0.5\n", ["modle", "did you mean 'model'"]),
    ("model:\n  alpha: wide\n", ["model.alpha", "expected a number"]),
    ("model:\n  alpha: true\n", ["model.alpha", "expected a number"]),
    ("train:\n  epochs: 2.5\n", ["train.epochs", "expected an integer"]),
    ("model:\n  variant: medium\n", ["model.variant", "'large', 'small'"]),
    ("model:\n  variant: larg\n", ["model.variant", "did you mean 'large'"]),
    ("model:\n  alpha: -1\n", ["model.alpha", "must be > 0.0"]),
    ("data:\n  image_size: 16\n", ["data.image_size", "must be >= 32"]),
    ("export:\n  quant: [int4]\n", ["export.quant[0]", "'int8'"]),
    ("model: 3\n", ["model", "mapping"]),
    ("model:\n  include_top: true\n  feature_outputs: true\n", ["model.feature_outputs"]),
    ("data:\n  train_image_sizes: [16, 32]\n", ["data.train_image_sizes", "32-1024 px"]),
    ("data:\n  train_image_sizes: [96, 112, 128]\ntrain:\n  epochs: 2\n",
     ["data.train_image_sizes", "3 stages for 2 epochs"]),
    ("task:\n  name: segmentation\ndata:\n  train_image_sizes: [64]\n",
     ["data.train_image_sizes", "not for task.name: segmentation"]),
])
def test_bad_values_name_file_and_dotted_key(write_yaml, text, fragments):
    path = write_yaml(text)
    with pytest.raises(ConfigError) as info:
        config_lib.load(path)
    message = str(info.value)
    assert message.startswith(path + ": "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_exponent_floats_that_yaml_1_1_reads_as_strings(write_yaml):
    cfg = config_lib.load(write_yaml("train:\n  learning_rate: 1e-3\n"), ["train.weight_decay=4E-5"])
    assert cfg.train.learning_rate == 0.001 and cfg.train.weight_decay == 4e-5
    with pytest.raises(ConfigError, match="train.learning_rate"):
        config_lib.load(write_yaml("train:\n  learning_rate: 1e-3x\n"))


def test_bad_files(tmp_path, write_yaml):
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        config_lib.load(write_yaml("model:\n  alpha: [1\n"))
    with pytest.raises(ConfigError, match="is a directory"):
        config_lib.load(str(tmp_path))


def test_yaml_cannot_execute_code(write_yaml, tmp_path):
    marker = tmp_path / "pwned"
    path = write_yaml(
        f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        config_lib.load(path)
    assert not marker.exists()


def test_overrides_are_typed_and_validated(write_yaml):
    path = write_yaml("model:\n  alpha: 0.75\n")
    cfg = config_lib.load(path, ["model.alpha=0.5", "model.minimalistic=true",
                                 "data.train_dir=/tmp/x", "export.quant=[fp16, int8]",
                                 "runtime.seed=null"])
    assert cfg.model.alpha == 0.5 and cfg.model.minimalistic is True
    assert cfg.data.train_dir == "/tmp/x" and cfg.export.quant == ["fp16", "int8"]
    assert cfg.runtime.seed is None
    for bad, fragment in [("model.alpha=big", "--set model.alpha: expected a number"),
                          ("model.alpah=1", "did you mean 'alpha'"),
                          ("modle.alpha=1", "did you mean 'model'"),
                          ("alpha=1", "section.key"), ("model.alpha", "KEY=VALUE"),
                          ("train.epochs=-1", "--set train.epochs: must be >= 0")]:
        with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
            config_lib.load(path, [bad])


def test_saved_config_reloads_identically(tmp_path):
    cfg = config_lib.load(None, ["model.variant=large", "export.quant=[dynamic]",
                                 "data.image_size=64"])
    path = tmp_path / "run" / "config.yaml"
    config_lib.save(cfg, str(path))
    assert config_lib.load(str(path)) == cfg
    assert os.listdir(path.parent) == ["config.yaml"]  # no temp files left behind


def test_renamed_key_still_loads_from_older_run_configs(write_yaml):
    # Runs saved before the rename say export.calibration_images.
    old = write_yaml("export:\n  calibration_images: 32\n")
    assert config_lib.load(old).export.calibration_steps == 32
    assert config_lib.load(old, ["export.calibration_steps=8"]).export.calibration_steps == 8
    assert config_lib.load(None, ["export.calibration_images=9"]).export.calibration_steps == 9
    both = write_yaml("export:\n  calibration_images: 32\n  calibration_steps: 16\n")
    with pytest.raises(config_lib.ConfigError, match="calibration_steps: given twice"):
        config_lib.load(both)


def test_a_later_config_file_overrides_an_earlier_one_key_by_key(write_yaml):
    base = write_yaml("model:\n  alpha: 0.5\ntrain:\n  epochs: 20\n  learning_rate: 0.1\n",
                      "base.yaml")
    phase = write_yaml("train:\n  epochs: 5\n  qat_epochs: 5\n", "phase.yaml")
    cfg = config_lib.load([base, phase])
    assert (cfg.model.alpha, cfg.train.epochs, cfg.train.learning_rate,
            cfg.train.qat_epochs) == (0.5, 5, 0.1, 5)
    assert config_lib.load([base, phase], ["train.epochs=6"]).train.epochs == 6  # --set last
    # A key under its old name and its new one: the later file wins either way.
    old_name = write_yaml("export:\n  calibration_images: 9\n", "old.yaml")
    new_name = write_yaml("export:\n  calibration_steps: 16\n", "new.yaml")
    assert config_lib.load([old_name, new_name]).export.calibration_steps == 16
    assert config_lib.load([new_name, old_name]).export.calibration_steps == 9
    # An error names the file it is in; a rule across keys sees them merged.
    bad = write_yaml("train:\n  epochz: 5\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.epochz"):
        config_lib.load([base, bad])
    too_many = write_yaml("train:\n  qat_epochs: 8\n", "qat.yaml")
    config_lib.load(too_many)  # 8 of the default 10 epochs
    with pytest.raises(ConfigError, match="qat_epochs"):
        config_lib.load([phase, too_many])


def test_a_bad_second_config_is_one_line_and_writes_nothing(write_yaml, tmp_path):
    from mnv3 import cli
    from tests.conftest import assert_one_line_error, call_cli

    bad = write_yaml("train:\n  epochz: 5\n", "bad.yaml")
    model_dir = tmp_path / "run"
    result = call_cli(cli.train, "--config", os.path.join(ROOT, "configs", "quickstart.yaml"),
                      "--config", bad, "--model_dir", str(model_dir))
    assert_one_line_error(result, "bad.yaml", "train.epochz")
    assert not model_dir.exists()


def test_each_phase_config_loads_on_top_of_its_base():
    """configs/X_qat.yaml is a quantization-aware phase after configs/X.yaml:
    every epoch of it rounds as int8 does, and the whole network trains."""
    config_dir = os.path.join(ROOT, "configs")
    phases = sorted(f for f in os.listdir(config_dir) if f.endswith("_qat.yaml"))
    assert phases
    for name in phases:
        base = os.path.join(config_dir, name.replace("_qat.yaml", ".yaml"))
        cfg = config_lib.load([base, os.path.join(config_dir, name)])
        alone = config_lib.load(base)
        assert cfg.train.qat_epochs == cfg.train.epochs < alone.train.epochs, name
        assert cfg.train.freeze_backbone_epochs == 0, name
        assert (cfg.data, cfg.model) == (alone.data, alone.model), name


def test_shipped_configs_load():
    config_dir = os.path.join(ROOT, "configs")
    # A phase (X_qat.yaml) loads on top of its base: the test below.
    names = sorted(f for f in os.listdir(config_dir)
                   if f.endswith(".yaml") and not f.endswith("_qat.yaml"))
    assert names
    for name in names:
        config_lib.load(os.path.join(config_dir, name))


def test_the_config_reference_documents_every_key():
    reference = open(os.path.join(ROOT, "docs", "config.md"), encoding="utf-8").read()
    assert config_lib.reference_markdown() in reference, \
        "docs/config.md is stale: paste `python -m mnv3.config`"


def _numeric_keys():
    import dataclasses
    import typing
    for section in dataclasses.fields(config_lib.Config):
        cls = section.default_factory
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            if typing.get_origin(tp) is list:
                inner = list(typing.get_args(tp))
            if inner[0] in (int, float):
                yield f"{section.name}.{f.name}", inner[0], f.metadata


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e40"])
def test_every_number_refuses_non_finite_and_huge_values(value):
    keys = list(_numeric_keys())
    assert len(keys) > 30
    for dotted, tp, meta in keys:
        # A number far past any sensible value is refused at load time, not later.
        assert meta.get("max") is not None or dotted in ("data.crop_scale", "data.crop_ratio",
                                                     "data.scale_range"), \
            f"{dotted} has no upper bound"
        if tp is int and value != "1e40":
            continue  # YAML reads .nan as a float; an int key refuses it by type
        with pytest.raises(ConfigError) as err:
            config_lib.load(None, [f"{dotted}={value}" if "crop" not in dotted
                                   else f"{dotted}=[{value}, 1.0]"])
        assert dotted.split(".")[1] in str(err.value)


def test_nan_in_a_file_names_the_file_and_key(write_yaml):
    path = write_yaml("model:\n  alpha: .nan\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: model.alpha: expected a finite number"):
        config_lib.load(path)
