"""Shared plumbing for the command-line entry points."""

from __future__ import annotations

import sys

from mnv3.errors import UserError


def exit_on_user_error(fn, *args, **kwargs):
    """Runs fn; bad input becomes one line on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
