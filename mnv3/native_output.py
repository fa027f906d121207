"""Capturing what native libraries (TensorFlow's converter, MLIR, TFLite) write
straight to the process's stderr, below Python: such lines can only be caught
by pointing file descriptor 2 elsewhere for a while."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

from mnv3.errors import UserError

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
            captured.text = _restore(saved, log)
            sys.stderr.write(captured.text)
            raise
        captured.text = _restore(saved, log)


def _restore(saved: int, log) -> str:
    """Points fd 2 back at `saved`; returns what was written to `log`."""
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    log.seek(0)
    return log.read().decode("utf-8", "replace")


@contextlib.contextmanager
def libraries_quiet():
    """For a whole command: what libraries write straight to fd 2 (TensorFlow's
    start-up and C++ INFO lines, the converter's MLIR notes, MediaPipe's logs)
    goes to a temporary file, while Python's sys.stderr (our warnings and error
    lines) still reaches the terminal. The file's text is printed if the command
    fails with anything but a UserError, so a real library error is never lost;
    a step that fails with a UserError prints its own capture (see convert.py)."""
    sys.stderr.flush()
    saved = os.dup(2)
    ours = sys.stderr is sys.__stderr__  # in tests, sys.stderr is their own buffer
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8",
                         errors="replace") if ours else None
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        if terminal:
            sys.stderr = terminal
        try:
            yield
        except BaseException as e:
            text = _end_quiet(saved, log, terminal)
            if not isinstance(e, (UserError, SystemExit)) and text.strip():
                sys.stderr.write("library output before the failure:\n" + text)
            raise
        _end_quiet(saved, log, terminal)


def _end_quiet(saved: int, log, terminal) -> str:
    if terminal:
        terminal.flush()
        sys.stderr = sys.__stderr__
        terminal.close()
    return _restore(saved, log)
