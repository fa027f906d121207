"""Atomic file writes: a crash or kill mid-write never leaves a half-written file,
and the file a user had stays intact until the new one is complete."""

from __future__ import annotations

import os
import tempfile


def write_atomically(path: str, data: bytes | str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
