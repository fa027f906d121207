import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    # Keras 3.15 calls np.array() on TF tensors in a way numpy 2 deprecates; it
    # repeats thousands of times per run and hides real warnings.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def run_cli(*args, timeout=300, env=None):
    """Runs a project command in a real subprocess from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


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
