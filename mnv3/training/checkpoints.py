"""Finding the checkpoint to resume from when files are missing or damaged.

tf.train.CheckpointManager trusts its state file (`checkpoints/checkpoint`):
when that is gone or unreadable it reports "no checkpoint", and a trainer that
believes it starts over and overwrites good files. Here the files on disk are
the truth: the newest checkpoint that restores (and holds finite numbers)
wins, damaged ones are set aside into `checkpoints/damaged/`, never deleted,
and the state file is rewritten to match.
"""

from __future__ import annotations

import glob
import os
import re

import tensorflow as tf

_NUMBERED = re.compile(r"ckpt-(\d+)\.index$")
DAMAGED = "damaged"


class DoesNotFit(Exception):
    """A readable checkpoint whose variables do not match this model."""


def on_disk(directory: str) -> list[str]:
    """Checkpoint prefixes with an index file, newest (highest number) first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")):
        match = _NUMBERED.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path[:-len(".index")]))
    return [prefix for _, prefix in sorted(found, reverse=True)]


def state_file_latest(directory: str) -> str | None:
    """What the state file names as the latest checkpoint; None when it is missing,
    unreadable, or names a checkpoint that is not there."""
    try:
        return tf.train.latest_checkpoint(directory)
    except (tf.errors.OpError, ValueError, UnicodeDecodeError):
        return None


def is_mismatch(error: BaseException) -> bool:
    """A restore error that means "another model", not "a damaged file"."""
    return isinstance(error, AssertionError) or \
        "incompatible tensor with shape" in str(error)


def set_aside(prefix: str) -> str:
    """Moves a checkpoint's files into `damaged/` beside it; returns where."""
    directory = os.path.join(os.path.dirname(prefix), DAMAGED)
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(glob.escape(prefix) + ".*"):
        os.replace(path, os.path.join(directory, os.path.basename(path)))
    return directory


def rewrite_state(directory: str, latest: str) -> None:
    """Makes the state file name `latest` and every older checkpoint on disk, so
    the manager rotates them as usual."""
    keep = [p for p in reversed(on_disk(directory)) if _number(p) <= _number(latest)]
    tf.compat.v1.train.update_checkpoint_state(
        directory, latest, all_model_checkpoint_paths=keep)


def _number(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[1])
