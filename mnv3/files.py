"""File primitives: atomic writes (a crash or kill mid-write never leaves a
half-written file, and the file a user had stays intact until the new one is
complete) and the lock that gives one process at a time a directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile

from mnv3.errors import UserError


def _umask() -> int:
    # Read without a lasting change; os.umask is the only portable way.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode open() gives a new file under the current umask."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path` to write the file at; when the block
    ends without error the file takes the umask's mode (mkstemp gives 0600) and
    replaces `path` in one step. On error it is removed and `path` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                               suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomically(path: str, data: bytes | str) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def make_staging_dir(parent: str, prefix: str) -> str:
    """A new empty folder in `parent` to build a set of files in (mode as
    os.mkdir would give it, not mkdtemp's 0700)."""
    path = tempfile.mkdtemp(dir=parent, prefix=prefix)
    os.chmod(path, 0o777 & ~_umask())
    return path


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE);
    False where the system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def publish_directory(staging: str, target: str) -> None:
    """Makes the complete folder `staging` become `target`, so that readers see
    the old set of files or the new one, never a mix. Atomic where the system
    can swap two folders; elsewhere a crash between two renames leaves
    `target + ".old"`, which recover_directory() puts back."""
    recover_directory(target)
    if not os.path.exists(target):
        os.rename(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the old files
    else:
        os.rename(target, target + ".old")
        os.rename(staging, target)
        shutil.rmtree(target + ".old")


def recover_directory(target: str) -> None:
    """Undoes a publish_directory() cut short between its two renames."""
    old = target + ".old"
    if os.path.isdir(old):
        if os.path.exists(target):
            shutil.rmtree(old)
        else:
            os.rename(old, target)


class Lock:
    """An exclusive OS lock on a file (fcntl.flock): it dies with its process, so
    a kill -9 never leaves a stale lock behind. The file holds the holder's PID."""

    def __init__(self, path: str, what: str, flag: str = "--model_dir"):
        self.path, self.what, self.flag, self._fd = path, what, flag, None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            try:
                with open(self.path, encoding="utf-8") as f:
                    holder = f.read().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise UserError(f"{os.path.dirname(self.path)}: in use by another "
                            f"{self.what} (pid {holder}); wait for it to finish, or use "
                            f"another {self.flag}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self._fd)  # closing releases the lock; the file may stay
        self._fd = None
