"""Our own lines: progress on stdout, warnings on stderr. (What libraries print
below Python is held back unless --verbose: mnv3.native_output.)"""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Progress:
    """A progress bar on a terminal (Keras' Progbar); nothing when output goes to
    a file or a pipe, where the step's one summary line is enough."""

    def __init__(self, total: int | None, label: str):
        self.bar = None
        if sys.stdout.isatty():
            import keras

            print(label, flush=True)
            self.bar = keras.utils.Progbar(total, unit_name="image")
        self.total, self.count = total, 0

    def add(self, n: int) -> None:
        self.count += n
        if self.bar and (self.total is None or self.count < self.total):
            self.bar.update(self.count)  # the last update is close()'s

    def close(self) -> None:
        if self.bar:
            self.bar.update(self.count, finalize=True)
