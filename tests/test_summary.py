import json

import pytest

from mnv3 import config as config_lib
from mnv3 import tasks
from mnv3.model.cost import summarize
from mnv3 import summary
from tests.conftest import assert_one_line_error, call_cli


@pytest.mark.parametrize("variant, low, high", [("large", 217e6, 219e6),
                                                ("small", 56e6, 57e6)])
def test_madds_match_paper_table_3(variant, low, high):
    cfg = config_lib.load(None, [f"model.variant={variant}", "data.num_classes=1000",
                                 "data.image_size=224"])
    info = summarize(tasks.get(cfg).build(cfg))
    assert low <= info["madds"] <= high
    assert info["params"] == {"large": 5_507_432, "small": 2_554_968}[variant]


def test_madds_scale_with_resolution():
    def madds(size):
        cfg = config_lib.load(None, ["model.alpha=0.35", f"data.image_size={size}"])
        return summarize(tasks.get(cfg).build(cfg))["madds"]
    # Spatial layers grow with the pixel count (4x); the pooled head does not.
    assert 3.0 < madds(128) / madds(64) < 4.0


def test_cli_json_and_table(write_yaml):
    path = write_yaml("model:\n  variant: small\n  alpha: 0.35\ndata:\n  image_size: 64\n")
    result = call_cli(summary.main, "--config", path, "--set", "model.alpha=0.5",
                     "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    cfg = config_lib.load(path, ["model.alpha=0.5"])
    assert info["params"] == tasks.get(cfg).build(cfg).count_params()
    assert info["madds"] > 0 and info["input"] == [64, 64, 3]

    table = call_cli(summary.main, "--config", path)
    assert table.returncode == 0
    assert "block10_project" in table.stdout and "total multiply-adds" in table.stdout


def test_cli_bad_config_is_one_line_exit_2(write_yaml):
    path = write_yaml("model:\n  variant: medium\n")
    assert_one_line_error(call_cli(summary.main, "--config", path, "--json"),
                          path, "model.variant")
    assert_one_line_error(call_cli(summary.main, "--set", "model.alpha=-2"),
                          "--set model.alpha")
