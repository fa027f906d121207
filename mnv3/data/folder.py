"""Class-per-folder image datasets (the layout of Keras' image_dataset_from_directory
and TFDS ImageFolder): `root/<class name>/<image>`; class names are the sorted
folder names, or a fixed list (data.classes) that the folders are named from.

Files are checked cheaply before training (signature and end-of-file marker, a
few bytes each) so that zero-byte, truncated and non-image files are skipped
with one warning instead of crashing the input pipeline mid-epoch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from absl import logging

from mnv3.data.classes import check_class_name
from mnv3.errors import UserError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class FileList(NamedTuple):
    paths: list[str]
    labels: list[int]
    class_names: list[str]


def _problem(path: str) -> str | None:
    """Why `path` cannot be a complete JPEG/PNG/BMP/GIF, or None if it looks whole."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 32))
            tail = f.read()
    except OSError as e:
        return e.strerror or "cannot be read"
    if head.startswith(b"\xff\xd8\xff"):
        # A JPEG ends with the EOI marker; some writers pad a few bytes after it.
        return None if b"\xff\xd9" in tail else "truncated JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "truncated PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return None if tail.rstrip(b"\x00").endswith(b"\x3b") else "truncated GIF"
    if head.startswith(b"BM") and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        return None if declared <= size else "truncated BMP"
    return "not a JPEG, PNG, BMP or GIF image"


def check_images(paths: list[str], strict: bool, what: str,
                 skipped: list[tuple[str, str]] = ()) -> list[bool]:
    """Flags which paths look readable; warns once about the rest, and about the
    files already `skipped` while listing (or fails if strict)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(pool.map(_problem, paths))
    unreadable = [(p, why) for p, why in zip(paths, problems) if why]
    if unreadable and strict:
        path, why = unreadable[0]
        raise UserError(f"{path}: {why} (data.strict is on)")
    bad = [*skipped, *unreadable]
    if bad:
        first = "; ".join(f"{p} ({why})" for p, why in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        logging.warning("%s: skipping %d file(s): %s%s",
                        what, len(bad), first, more)
    return [why is None for why in problems]


def first_undecodable(paths: list[str]) -> tuple[str, str] | None:
    """The first file that does not decode as an image, with the decoder's reason.
    A full decode of every file: only for naming the culprit after a failure."""
    import tensorflow as tf

    def problem(path):
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            return None
        except (tf.errors.OpError, OSError) as e:
            return first_line(e)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for path, why in zip(paths, pool.map(problem, paths)):
            if why:
                return path, why
    return None


def _walk_files(class_dir: str) -> list[str]:
    """Every file under class_dir, following links into folders but visiting each
    real folder once (a link back up would loop forever)."""
    seen, files = set(), []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    return files


def _real_file(path: str):
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        return None  # a dangling link: _problem() reports it


def list_images(root: str, strict: bool = False,
                classes: tuple[list[str], list[str]] | None = None) -> FileList:
    """All images under root/<class>/, checked; errors in use raise UserError.
    Each real file is listed once, whatever links lead to it.

    `classes`: (folder names in label order, their display names), when labels
    follow a fixed list such as ImageNet's; the folders may be any subset of it.
    Otherwise the sorted folder names are the classes."""
    if not os.path.exists(root):
        raise UserError(f"{root}: data directory not found")
    if not os.path.isdir(root):
        raise UserError(f"{root}: not a directory")
    try:
        entries = os.listdir(root)
    except OSError as e:
        raise UserError(f"{root}: cannot be read ({e.strerror or e})") from None
    folders = sorted(d for d in entries
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not folders:
        raise UserError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    if classes is None:
        for name in folders:
            check_class_name(name, os.path.join(root, name))
        class_names, label_of = folders, {name: i for i, name in enumerate(folders)}
    else:
        ids, class_names = classes
        label_of = {name: i for i, name in enumerate(ids)}
        unknown = [name for name in folders if name not in label_of]
        if unknown:
            raise UserError(f"{os.path.join(root, unknown[0])}: not a class of data.classes "
                            f"(expected folders named like {ids[0]})")
    paths, labels, skipped, listed = [], [], [], {}
    for name in folders:
        label = label_of[name]
        class_dir = os.path.join(root, name)
        count = 0
        for path in _walk_files(class_dir):
            if not path.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append((path, "not a .jpg, .jpeg, .png, .bmp or .gif file"))
                continue
            real = _real_file(path)
            if real is not None and real in listed:
                first, first_label = listed[real]
                if first_label != label:
                    raise UserError(f"{path}: the same file as {first}, in two classes "
                                    f"({class_names[first_label]}, {name}); an image has "
                                    "one label")
                skipped.append((path, f"the same file as {first}"))
                continue
            if real is not None:
                listed[real] = (path, label)
            paths.append(path)
            labels.append(label)
            count += 1
        if not count:
            raise UserError(f"{class_dir}: class folder has no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
    readable = check_images(paths, strict, root, skipped)
    kept = [(p, y) for p, y, ok in zip(paths, labels, readable) if ok]
    if not kept:
        raise UserError(f"{root}: none of the {len(paths)} image files can be read")
    found = {y for _, y in kept}
    empty = [name for name in folders if label_of[name] not in found]
    if empty:
        raise UserError(f"{os.path.join(root, empty[0])}: class folder has no readable images")
    paths, labels = (list(t) for t in zip(*kept))
    return FileList(paths, labels, class_names)
