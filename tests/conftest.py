import contextlib
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

# The caller's shell must not change what the tests see: TensorFlow's C++ log
# level (TF_CPP_MIN_LOG_LEVEL=2 is common) decides which native lines a command
# prints, and tests check what reaches the user. Cleared before TensorFlow loads
# here or in any process the tests start.
for _name in ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL", "TF_CPP_VMODULE"):
    os.environ.pop(_name, None)

# Under pytest-xdist, N workers share the cores: one TensorFlow compute thread
# each (and in the processes they start) rather than N pools fighting over them.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")


# The trained runs that several tests share (fixtures built once), the largest
# group of tests first. Under pytest-xdist (--dist loadgroup,
# pyproject.toml) the tests of one run go to one worker as a group: it builds
# the run and uses it, and no other worker waits on the run's lock meanwhile.
SHARED_RUNS = ("learned_run", "detector", "segmenter", "safety_run",
               "schedule_run")  # (tests/test_training.py)


def _shared_run(item):
    return next((run for run in SHARED_RUNS if run in item.fixturenames), None)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """The groups first, then the other slow tests, then the fast ones: the
    workers take them in this order, so the last to go are short ones and
    neither worker idles at the end while the other runs a long test."""
    for item in items:
        if _shared_run(item):
            item.add_marker(pytest.mark.xdist_group(_shared_run(item)))

    def order(item):
        run = _shared_run(item)
        return SHARED_RUNS.index(run) if run else \
            len(SHARED_RUNS) + (0 if item.get_closest_marker("slow") else 1)
    items.sort(key=order)


def pytest_configure(config):
    # Keras 3.15 calls np.array() on TF tensors in a way numpy 2 deprecates; it
    # repeats thousands of times per run and hides real warnings.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def make_pipeline(cfg):
    """The config's data pipeline, with its task looked up as the engines do."""
    from mnv3 import data, tasks

    return data.make_pipeline(cfg, tasks.get(cfg))


def plan_start(cfg):
    """model.init_from's starting weights for the config's task, as training plans them."""
    from mnv3 import tasks
    from mnv3.model import pretrained

    return pretrained.plan(cfg, tasks.get(cfg))


def run_cli(*args, timeout=300, env=None):
    """Runs a project command in a real subprocess from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def call_cli(command, *args):
    """Runs a command's main(argv) in this process from the repository root: the
    same parsing and error handling as the script, without a second TensorFlow
    start-up. Returns what run_cli returns. Tests of what only a real process
    shows (exit on a signal, a lock, a crash) use run_cli."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = command(list(args)) or 0  # None: success, as sys.exit(None)
            except SystemExit as e:  # --help
                code = e.code
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_one_line_error(result, *fragments):
    """Exit status 2, no traceback, and the last stderr line names what went wrong."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)


@pytest.fixture
def write_yaml(tmp_path):
    def write(text, name="cfg.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


# Tiny and quick: MobileNetV3-Small at alpha 0.35 on 64 px synthetic shapes.
TINY = ["model.alpha=0.35", "model.dropout=0.0", "model.bn_momentum=0.9",
        "data.image_size=64", "data.synthetic_images=800", "data.crop_scale=[0.6, 1.0]",
        "data.val_fraction=0.2",
        "train.batch_size=32", "train.learning_rate=0.02", "train.warmup_epochs=0.5",
        "train.weight_decay=0.0", "train.log_every_steps=5"]
# Long enough to learn the shapes (eval top-1 well above chance): the run that
# the training and export tests share, with the paper's weight averages (EMA
# 0.999, warmed up with the step: what it saves and evaluates are the averages;
# tests/test_training.py reads them).
LEARN = ["train.epochs=6", "data.synthetic_images=2000", "train.learning_rate=0.06",
         "train.ema_decay=0.999"]


def tiny_cfg(*extra):
    from mnv3 import config as config_lib

    return config_lib.load(None, TINY + list(extra))


def read_metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_cli(model_dir, *extra, env=None, **kwargs):
    """train.py in a real process (for tests that kill it or race it)."""
    args = ["train.py", "--config", os.path.join(ROOT, "configs", "quickstart.yaml"),
            "--model_dir", str(model_dir)]
    for item in TINY + list(extra):
        args += ["--set", item]
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, **kwargs)


def kill_at_first_checkpoint(proc, checkpoints, limit=180) -> str:
    """SIGKILLs `proc` (a process that trains, its output piped, as train_cli
    starts one) once its first checkpoint in `checkpoints` is named by the
    manager's state file (written after the checkpoint: a kill between the two
    would leave none to name); returns that checkpoint's prefix."""
    import tensorflow as tf

    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(checkpoints) and tf.train.latest_checkpoint(str(checkpoints)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed: " + \
        proc.stdout.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = tf.train.latest_checkpoint(str(checkpoints))
    assert killed_at is not None
    return killed_at


def train_here(model_dir, *extra):
    """train.py's command with TINY + extra, run in this process (a real run,
    without a second TensorFlow start-up): (exit status, stdout and stderr)."""
    from mnv3 import cli

    args = ["--config", "configs/quickstart.yaml", "--model_dir", str(model_dir)]
    for item in TINY + list(extra):
        args += ["--set", item]
    result = call_cli(cli.train, *args)
    return result.returncode, result.stdout + result.stderr


def shared_directory(tmp_path_factory, name, build):
    """A directory built once per test session, also across pytest-xdist workers:
    the first to ask builds it under a lock, the others wait and reuse it. Tests
    must copy it before they change anything in it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory):
    """A run of tiny_cfg(*LEARN): 6 epochs with EMA that learn the synthetic shapes."""
    from mnv3.training import run

    return shared_directory(tmp_path_factory, "learned_run",
                            lambda path: run(tiny_cfg(*LEARN), str(path)))


# 256 training images: 8 steps of 32 per epoch, a checkpoint every 4 steps.
SMALL = ["data.synthetic_images=320", "train.checkpoint_every_steps=4",
         "train.keep_checkpoints=3"]


@pytest.fixture(scope="session")
def safety_run(tmp_path_factory):
    """tiny_cfg(*SMALL) trained 2 epochs: checkpoints ckpt-8, ckpt-12 and ckpt-16."""
    from mnv3.training import run

    return shared_directory(tmp_path_factory, "safety_run", lambda path: run(
        tiny_cfg(*SMALL, "train.epochs=2"), str(path)))


EXPORT = ["export.quant=[float32, fp16, dynamic, int8]", "export.calibration_steps=64",
          "export.latency_runs=5"]


@pytest.fixture(scope="session")
def exported(learned_run, tmp_path_factory):
    """The shared trained run, exported in all four modes (in a copy, whose
    config.yaml carries the export settings)."""
    from mnv3 import config as config_lib
    from mnv3.export.pipeline import run as export_run

    def build(path):
        shutil.copytree(learned_run, path, ignore=shutil.ignore_patterns("checkpoints", "tb"))
        cfg = tiny_cfg(*LEARN, *EXPORT)
        config_lib.save(cfg, str(path / "config.yaml"))
        report = export_run(cfg, str(path))
        # The report it returns is the report it wrote.
        assert json.loads((path / "export" / "report.json").read_text()) == report

    path = shared_directory(tmp_path_factory, "exported_run", build)
    return str(path), json.loads((path / "export" / "report.json").read_text())


# A tiny SSDLite on synthetic shapes: 64 px, 3 epochs (it finds some shapes;
# the quickstart's figures are in BENCHMARKS.md), exported in float32 and int8.
DETECTOR = ["task.name=detection", "task.max_boxes=4", "data.num_classes=6",
            "data.synthetic_images=480", "train.epochs=3", "train.learning_rate=0.02",
            "export.quant=[float32, int8]", "export.calibration_steps=32",
            "export.latency_runs=5"]


@pytest.fixture(scope="session")
def detector(tmp_path_factory):
    """(model_dir, export report) of tiny_cfg(*DETECTOR), trained and exported."""
    from mnv3 import config as config_lib
    from mnv3.export.pipeline import run as export_run
    from mnv3.training import run

    def build(path):
        cfg = tiny_cfg(*DETECTOR)
        run(cfg, str(path))
        config_lib.save(cfg, str(path / "config.yaml"))
        export_run(cfg, str(path))

    path = shared_directory(tmp_path_factory, "detector_run", build)
    return str(path), json.loads((path / "export" / "report.json").read_text())
