"""Fixed class lists (data.classes): which label each class gets, and the name
it is shown under, independent of which classes a given folder happens to hold."""

from __future__ import annotations

from mnv3 import published
from mnv3.errors import UserError

# Characters that end a line for str.splitlines(): a class name holding one would
# become two lines of labels.txt and shift every later label.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def check_class_name(name: str, where: str) -> None:
    """Refuses a class name that would not survive labels.txt and the TFLite
    metadata (one UTF-8 line per class) exactly as it is."""
    problem = None
    if not name.strip():
        problem = "is empty or only spaces"
    elif any(c in LINE_BREAKS for c in name):
        problem = "contains a line break"
    elif name != name.strip():
        problem = "starts or ends with a space"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not valid UTF-8"
    if problem:
        raise UserError(f"{where}: class name {name!r} {problem}; rename it (class names "
                        "go one per line into labels.txt and the model's metadata)")


def load(spec: str | None, num_classes: int) -> tuple[list[str], list[str]] | None:
    """(ids in label order, display names), or None when labels follow the data.
    `imagenet`: ImageNet-1k's WordNet ids, shown under their English names; a
    path: a text file with one class per line, id and name alike."""
    if spec is None:
        return None
    if spec == "imagenet":
        ids, names = published.imagenet_synsets(), published.imagenet_class_names()
    else:
        try:
            with open(spec, encoding="utf-8") as f:
                ids = f.read().split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"data.classes: {spec}: cannot be read "
                            f"({getattr(e, 'strerror', None) or e})") from None
        if ids and ids[-1] == "":
            ids.pop()
        for name in ids:
            check_class_name(name, spec)
        if len(set(ids)) != len(ids):
            raise UserError(f"data.classes: {spec}: lists a class twice")
        names = ids
    if len(ids) != num_classes:
        raise UserError(f"data.classes: {spec} lists {len(ids)} classes but "
                        f"data.num_classes is {num_classes}")
    return ids, names
