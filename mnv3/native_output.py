"""Capturing what native libraries (TensorFlow's converter, MLIR, TFLite) write
straight to the process's stderr, below Python: such lines can only be caught
by pointing file descriptor 2 elsewhere for a while."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# MLIR diagnostics: "loc(...): error: ..." or a bare "error: ..." line.
_ERROR_LINE = re.compile(r"(^|: )error: ")


class Captured:
    text = ""

    def errors(self) -> list[str]:
        return [line.strip() for line in self.text.splitlines() if _ERROR_LINE.search(line)]


@contextlib.contextmanager
def captured_stderr():
    """Redirects fd 2 to a temporary file for the block; the text is in `.text`
    afterwards (and is printed if the block raises, so a real error is never lost)."""
    captured = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield captured
        except BaseException:
            _restore(saved, log, captured)
            sys.stderr.write(captured.text)
            raise
        _restore(saved, log, captured)


def _restore(saved: int, log, captured: Captured) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    log.seek(0)
    captured.text = log.read().decode("utf-8", "replace")
