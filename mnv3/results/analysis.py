"""What the eval predictions say, class by class: confusion counts, per-class
precision and recall, the most-confused pairs, and where a model disagrees
with another. Plain numpy, from arrays of class indices."""

from __future__ import annotations

import numpy as np


def confusion(targets: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true class, predicted class]: for images, or for every pixel of a
    segmentation (bincount, not np.add.at, which is slow on millions)."""
    cells = np.asarray(targets, np.int64).ravel() * num_classes + \
        np.asarray(predicted, np.int64).ravel()
    return np.bincount(cells, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def sparse(counts: np.ndarray) -> list[list[int]]:
    """[true, predicted, count] for every non-zero cell: compact at 1,000 classes."""
    rows, cols = np.nonzero(counts)
    return [[int(r), int(c), int(counts[r, c])] for r, c in zip(rows, cols)]


def per_class(counts: np.ndarray, labels: list[str]) -> list[dict]:
    """Support, precision and recall (the class's own top-1) for each class.
    A class never predicted has precision None, not 0: there is nothing to score."""
    hits = np.diag(counts)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    return [{"label": label, "support": int(support[i]),
             "precision": float(hits[i] / predicted[i]) if predicted[i] else None,
             "recall": float(hits[i] / support[i]) if support[i] else None}
            for i, label in enumerate(labels)]


def most_confused(counts: np.ndarray, labels: list[str], top: int = 10) -> list[dict]:
    """The largest off-diagonal cells: images of `true` taken for `predicted`."""
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    support = counts.sum(axis=1)
    pairs = []
    for flat in order:
        t, p = np.unravel_index(flat, off.shape)
        if off[t, p] == 0:
            break
        pairs.append({"true": labels[t], "predicted": labels[p], "count": int(off[t, p]),
                      "share_of_true": float(off[t, p] / support[t])})
    return pairs


def disagreements(reference: np.ndarray, predicted: np.ndarray, targets: np.ndarray,
                  labels: list[str], top: int = 10) -> dict:
    """How often `predicted` differs from `reference` (e.g. int8 from Keras), and
    on which true classes most."""
    differs = reference != predicted
    by_class = np.bincount(targets[differs], minlength=len(labels))
    order = [i for i in np.argsort(-by_class, kind="stable")[:top] if by_class[i]]
    return {"count": int(differs.sum()), "rate": float(differs.mean()),
            "by_true_class": [{"label": labels[i], "count": int(by_class[i])}
                              for i in order]}


def focus_classes(counts: np.ndarray, limit: int) -> np.ndarray:
    """All classes when there are at most `limit`; else the `limit` classes most
    involved in confusions (as the true or the predicted class), in index order."""
    n = len(counts)
    if n <= limit:
        return np.arange(n)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    involvement = off.sum(axis=0) + off.sum(axis=1)
    return np.sort(np.argsort(-involvement, kind="stable")[:limit])
