"""Our own lines: progress on stdout, warnings on stderr. (What libraries print
below Python is held back unless --verbose: mnv3.native_output.)"""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
