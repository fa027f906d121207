"""The latency-budget search (mnv3-budget): the grid, the front, the winner, a
real search on synthetic shapes killed and resumed, and Android timing through
an `adb` that speaks like the real one."""

import json
import os
import stat
import subprocess
import sys

import pytest

from mnv3 import cli
from mnv3 import config as config_lib
from mnv3.budget import android, front
from mnv3.budget.candidates import Candidate, given, grid
from mnv3.errors import UserError
from tests.conftest import (ROOT, TINY, assert_one_line_error, call_cli,
                            kill_at_first_checkpoint)


def row(name, latency, madds, int8=None):
    return {"name": name, "latency_ms": latency, "madds": madds, "int8": int8}


def test_the_front_keeps_what_no_faster_and_larger_candidate_beats():
    rows = [row("a", 1.0, 10), row("b", 2.0, 30), row("c", 2.5, 20),  # c: slower, smaller than b
            row("d", 3.0, 30),  # d: as large as b, slower
            row("e", 4.0, 50), {"name": "broken", "error": "cannot be built"}]
    assert [r["name"] for r in front.front(rows)] == ["a", "b", "e"]
    # Within 3.5 ms, the two largest on the front, fastest first.
    assert [r["name"] for r in front.to_train(rows, 3.5, 2)] == ["a", "b"]
    assert [r["name"] for r in front.to_train(rows, 4.0, 2)] == ["b", "e"]
    assert front.to_train(rows, 0.5, 2) == []


def test_the_winner_is_the_best_int8_score_within_the_budget():
    rows = [row("fast", 1.0, 10, 0.80), row("tie", 1.5, 20, 0.85),
            row("tie_slower", 1.8, 25, 0.85), row("over", 3.0, 40, 0.95),
            row("untrained", 1.2, 15)]
    assert front.winner(rows, 2.0)["name"] == "tie"  # a tie goes to the faster
    assert front.winner(rows, 3.0)["name"] == "over"
    assert front.winner(rows, 0.5) is None


def test_the_grid_is_every_combination_and_the_config_as_given():
    cfg = config_lib.load(None, ["budget.variants=[small]", "budget.alphas=[0.5, 1.0]",
                                 "budget.image_sizes=[96, 128]", "model.alpha=0.75",
                                 "data.image_size=100"])
    names = [c.name for c in grid(cfg)]
    assert len(names) == 2 * 2 * 2 + 1 and len(set(names)) == len(names)
    assert "small_0.5_min_96" in names and given(cfg).name == "small_0.75_100" in names
    candidate = Candidate("large", True, 0.5, 96)
    c_cfg = candidate.config(cfg, epochs=3)
    assert (c_cfg.model.variant, c_cfg.model.minimalistic, c_cfg.model.alpha,
            c_cfg.data.image_size, c_cfg.train.epochs) == ("large", True, 0.5, 96, 3)
    assert cfg.model.variant == "small" and cfg.train.epochs == 10  # the user's is untouched
    # A candidate is checked like a loaded config: no published weights for it.
    published = config_lib.load(None, ["model.init_from=imagenet", "model.alpha=0.75"])
    with pytest.raises(config_lib.ConfigError, match="publishes no ImageNet weights"):
        Candidate("small", False, 0.35, 96).config(published)


@pytest.mark.parametrize("override, fragment", [
    ("budget.alphas=[0.5, -1]", "budget.alphas[1]: must be > 0.0"),
    ("budget.image_sizes=[16]", "budget.image_sizes[0]: must be >= 32"),
    ("budget.variants=[medium]", "budget.variants[0]: 'medium' is not one of"),
])
def test_a_bad_grid_is_one_line(override, fragment):
    with pytest.raises(config_lib.ConfigError, match=fragment.replace("[", r"\[")
                       .replace("]", r"\]")):
        config_lib.load(None, [override])


# A search small enough for the suite: a tiny network at two sizes, both
# timed, the larger (the config as given) trained for two epochs on synthetic
# shapes (budget.max_trained 1: choosing among several trained candidates is
# front.py's, tested above); the grid's minimalistic networks cannot start
# from the given weights (their layers differ), so they are reported.
SEARCH = TINY + ["data.image_size=40", "data.synthetic_images=240",
                 "train.batch_size=16", "train.checkpoint_every_steps=4",
                 "budget.variants=[small]", "budget.alphas=[0.35]",
                 "budget.minimalistic=[false, true]", "budget.image_sizes=[32, 40]",
                 "budget.epochs=2", "budget.max_trained=1", "budget.calibration_images=4",
                 "export.calibration_steps=8", "export.latency_runs=10"]


def _search_args(out_dir, init_from, budget=("--budget_ms", "100")):
    args = ["--config", os.path.join(ROOT, "configs", "quickstart.yaml"),
            *budget, "--out_dir", str(out_dir),
            "--set", f"model.init_from={init_from}"]
    for item in SEARCH:
        args += ["--set", item]
    return args


@pytest.mark.slow
def test_a_search_killed_while_training_resumes_and_writes_the_winner(tmp_path):
    import keras

    from mnv3 import tasks

    # Starting weights that fit Small 0.35 only (saved from a freshly built model).
    cfg = config_lib.load(None, SEARCH)
    weights = tmp_path / "start.keras"
    tasks.get(cfg).build(cfg).save(weights)
    keras.backend.clear_session()
    out = tmp_path / "search"
    first = subprocess.Popen([sys.executable, "-m", "mnv3.budget",
                              *_search_args(out, weights)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Killed once the trained candidate has a checkpoint (step 4 saves one).
    kill_at_first_checkpoint(first, out / "runs" / "small_0.35_40" / "checkpoints", limit=240)
    assert not (out / "budget.md").exists()
    timings = json.loads((out / "timing" / "timings.json").read_text())

    result = call_cli(cli.budget, *_search_args(out, weights))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "timing: read 4 candidates' latencies" in result.stdout  # not timed again
    assert json.loads((out / "timing" / "timings.json").read_text()) == timings
    report = json.loads((out / "budget.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    # The two networks the weights fit were timed; the larger was trained and exported.
    for name in ("small_0.35_32", "small_0.35_40"):
        assert rows[name]["latency_ms"] > 0 and rows[name]["madds"] > 0
    trained = rows["small_0.35_40"]
    assert 0 <= trained["int8"] <= 1 and 0 <= trained["accuracy"] <= 1
    metrics = [json.loads(line) for line in
               open(out / "runs" / "small_0.35_40" / "metrics.jsonl", encoding="utf-8")]
    assert [m["epoch"] for m in metrics] == [1, 2]  # resumed, no epoch twice
    assert "int8" not in rows["small_0.35_32"] and not (out / "runs" / "small_0.35_32").exists()
    assert trained["madds"] > rows["small_0.35_32"]["madds"]
    for name in ("small_0.35_min_32", "small_0.35_min_40"):  # reported with the reason
        assert "model.init_from" in rows[name]["error"] and "latency_ms" not in rows[name]
        assert name in (out / "budget.md").read_text()
    assert trained["given"] and report["winner"] == "small_0.35_40"
    winner = rows[report["winner"]]
    assert winner["winner"] and winner["latency_ms"] <= 100
    # The winning config trains as written: the winner's network, the user's recipe.
    written = config_lib.load(str(out / "winner.yaml"))
    assert (written.model.alpha, written.data.image_size) == (0.35, winner["image_size"])
    assert written.train.epochs == 10 and written.model.init_from == str(weights)
    assert (out / "budget.png").stat().st_size > 10_000

    # Another budget, as a share of the given config's latency, reuses every
    # trained candidate: nothing is timed or trained again.
    again = call_cli(cli.budget, *_search_args(out, weights, ("--budget_ratio", "1.0")))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "epoch 1/" not in again.stdout and "converted in" not in again.stdout
    ratio_report = json.loads((out / "budget.json").read_text())
    assert ratio_report["budget_ms"] == round(rows["small_0.35_40"]["latency_ms"], 4)
    second = {r["name"]: r for r in ratio_report["rows"]}
    assert second[report["winner"]]["int8"] == winner["int8"]  # read back, not retrained

    # A changed recipe in the same folder is refused, and the folder kept.
    changed = call_cli(cli.budget, *_search_args(out, weights), "--set",
                       "train.learning_rate=0.5")
    assert_one_line_error(changed, "train.learning_rate", "another --out_dir")
    assert (out / "winner.yaml").exists()


def test_bad_budget_input_is_one_line(tmp_path):
    args = ["--config", os.path.join(ROOT, "configs", "quickstart.yaml")]
    assert_one_line_error(call_cli(cli.budget, *args, "--budget_ms", "0", "--out_dir",
                                   str(tmp_path / "a")), "--budget_ms 0", "more than 0")
    in_the_way = tmp_path / "file"
    in_the_way.write_text("mine")
    assert_one_line_error(call_cli(cli.budget, *args, "--budget_ms", "1", "--out_dir",
                                   str(in_the_way)), "not a directory")
    assert in_the_way.read_text() == "mine"
    assert_one_line_error(call_cli(cli.budget, *args, "--out_dir", str(tmp_path)),
                          "--budget_ms", "--budget_ratio")  # neither
    assert_one_line_error(call_cli(cli.budget, *args, "--budget_ms", "1", "--budget_ratio",
                                   "0.5", "--out_dir", str(tmp_path)), "not allowed with")
    assert_one_line_error(call_cli(cli.budget, *args, "--budget_ratio", "-1", "--out_dir",
                                   str(tmp_path / "b")), "--budget_ratio -1", "more than 0")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


BENCHMARK_OUTPUT = """STARTING!
Log parameter values verbosely: [0]
Graph: [/data/local/tmp/m.tflite]
The input model file size (MB): 1.066
Initialized session in 31.2ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=123 first=5210 curr=4012 min=3950 max=5210 avg=4105.3 std=140
Inference timings in us: Init: 31200, First inference: 5210, Warmup (avg): 4120.2, Inference (avg): 4105.3
"""


def _fake_adb(tmp_path, monkeypatch, says: str, status: int = 0):
    """An `adb` first on PATH that records its arguments and answers as the real
    one does: `push` quietly, `shell benchmark_model ...` with benchmark_model's
    report (the real tool needs a phone, which CI does not have)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "adb"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/adb_calls
case "$3" in
  push) exit 0 ;;
  shell) cat <<'EOF'
{says}EOF
exit {status} ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "adb_calls"


def test_android_latency_is_benchmark_models_average(tmp_path, monkeypatch):
    calls = _fake_adb(tmp_path, monkeypatch, BENCHMARK_OUTPUT)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"tflite")
    assert android.latency_ms(str(model), "emulator-5554", "/data/local/tmp/benchmark_model",
                              threads=2, runs=40) == 4.105
    push, shell = calls.read_text().splitlines()
    assert push == f"-s emulator-5554 push {model} /data/local/tmp/m.tflite"
    assert shell == ("-s emulator-5554 shell /data/local/tmp/benchmark_model "
                     "--graph=/data/local/tmp/m.tflite --num_threads=2 --num_runs=40 "
                     "--use_xnnpack=true")


def test_android_failures_are_one_line(tmp_path, monkeypatch):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"tflite")
    _fake_adb(tmp_path, monkeypatch, "/system/bin/sh: benchmark_model: not found\n", 127)
    with pytest.raises(UserError, match="shell: failed .*not found"):
        android.latency_ms(str(model), "x", "benchmark_model", 1, 10)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="adb is not on PATH"):
        android.latency_ms(str(model), "x", "benchmark_model", 1, 10)

