"""Shared plumbing for the command-line entry points: every way a user can get
the input wrong ends in one `error: ...` line on stderr and exit status 2."""

from __future__ import annotations

import sys

from absl import app, flags

from mnv3.errors import UserError


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv):
    """absl's parser, but a usage error (missing or unknown flag) exits 2, not 1."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{' '.join(str(e).split())} (see --help)")


def exit_on_user_error(fn, *args, **kwargs):
    """Runs fn; bad input becomes one line on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        _fail(str(e))
    except OSError as e:
        if e.filename is None:  # not about a path: a real fault, keep the trace
            raise
        _fail(f"{e.filename}: {e.strerror or e}")


def main(fn):
    """Runs `fn(argv)` as a command: absl flags, user errors as one line."""
    app.run(lambda argv: exit_on_user_error(fn, argv), flags_parser=parse_flags)
