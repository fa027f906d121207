"""Fixed class lists (data.classes): which label each class gets, and the name
it is shown under, independent of which classes a given folder happens to hold."""

from __future__ import annotations

from mnv3 import published
from mnv3.errors import UserError


def load(spec: str | None, num_classes: int) -> tuple[list[str], list[str]] | None:
    """(ids in label order, display names), or None when labels follow the data.
    `imagenet`: ImageNet-1k's WordNet ids, shown under their English names; a
    path: a text file with one class per line, id and name alike."""
    from mnv3.run_dir import check_class_name

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
