"""The report's pictures, drawn with matplotlib's headless Agg backend: the
confusion matrix, a grid of misclassified eval images, segmentation frames
(image, truth, prediction), and training curves."""

from __future__ import annotations

import numpy as np

from mnv3.results.analysis import focus_classes

# Beyond this many classes a full matrix is unreadable at any size; the picture
# shows the classes most involved in confusions (report.json has every count).
MAX_CLASSES_SHOWN = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: CI, servers, containers
    import matplotlib.pyplot as plt

    return plt


def confusion_png(counts: np.ndarray, labels: list[str], path: str, title: str) -> None:
    """Rows: true class, columns: predicted; each row shaded by its share, so a
    small class's mistakes show as clearly as a large one's. Counts are written
    in the cells while there is room for them."""
    plt = _pyplot()
    shown = focus_classes(counts, MAX_CLASSES_SHOWN)
    sub = counts[np.ix_(shown, shown)]
    names = [labels[i] for i in shown]
    n = len(shown)
    rows = np.maximum(sub.sum(axis=1, keepdims=True), 1)
    side = min(max(6.0, 0.22 * n + 2.5), 26.0)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    from matplotlib.colors import PowerNorm

    # Square-root shading: a 5% confusion still shows beside a 90% diagonal.
    ax.imshow(sub / rows, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0))
    font = 10.0 if n <= 30 else 8.0 if n <= 60 else 6.0
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(shown) < len(counts):
        title += f"\nthe {n} of {len(counts)} classes most involved in confusions"
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if sub[i, j]:
                    dark = sub[i, j] / rows[i, 0] > 0.5
                    ax.text(j, i, str(sub[i, j]), ha="center", va="center", fontsize=font,
                            color="white" if dark else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def misclassified_png(images: list[np.ndarray], captions: list[str], path: str,
                      columns: int = 4) -> None:
    """A grid of eval images (HxWx3 uint8), each captioned."""
    plt = _pyplot()
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.5 * rows), dpi=100,
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no misclassified eval images", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curves_png(records: list[dict], path: str, metric: str = "top1",
               title: str = "top-1") -> None:
    """Loss, the task's headline `metric` (train and eval) and learning rate
    against epoch, from metrics.jsonl records."""
    plt = _pyplot()

    def series(key):  # epochs that have the key (evaluation can skip epochs)
        return zip(*[(r["epoch"], r[key]) for r in records if r.get(key) is not None])

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=100)
    for ax, (title, keys) in zip(axes, [("loss", ["train_loss", "eval_loss"]),
                                        (title, [f"train_{metric}", f"eval_{metric}"]),
                                        ("learning rate (end of epoch)", ["lr"])]):
        lowest = np.inf
        for key in keys:
            points = list(series(key))
            if points:
                ax.plot(*points, marker="o", markersize=3, label=key.replace("_", " "))
                lowest = min(lowest, np.nanmin(points[1]))
        if title == "loss" and 0 < lowest < np.inf:
            # A detector's first loss is 10-100x its last: on a linear axis the
            # rest of the curve lies flat on the floor.
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def class_colours(num_classes: int) -> np.ndarray:
    """A distinct RGB colour per class (0..1), from matplotlib's qualitative maps."""
    import matplotlib

    palette = [*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["Set3"].colors,
               *matplotlib.colormaps["tab20b"].colors]
    return np.array([palette[i % len(palette)] for i in range(num_classes)])


def segmentation_png(frames: list, labels: list[str], ignore_index: int, path: str,
                     title: str) -> None:
    """One row per frame: the image, then the true and the predicted mask laid
    over it (ignored pixels left grey), and a legend of the classes."""
    plt = _pyplot()
    colours = class_colours(len(labels))
    # Each panel keeps the frame's aspect, with room for its title above.
    aspect = frames[0][0].shape[0] / frames[0][0].shape[1]
    row_height = 4.0 * aspect + 0.5
    height = row_height * len(frames) + 0.8  # and the legend below
    fig, axes = plt.subplots(len(frames), 3, squeeze=False, figsize=(12, height), dpi=100)
    for row, (image, truth, predicted) in zip(axes, frames):
        for ax, mask, name in zip(row, [None, truth, predicted],
                                  ["image", "truth", "prediction"]):
            shown = image / 255.0
            if mask is not None:
                # Class colours over the frame in grey: the scene stays visible and
                # the colours stay true to the legend.
                grey = np.repeat(shown.mean(axis=-1, keepdims=True), 3, axis=-1)
                valid = mask != ignore_index
                overlay = colours[np.where(valid, mask, 0)]
                shown = np.where(valid[..., None], 0.3 * grey + 0.7 * overlay, grey)
            ax.imshow(shown)
            ax.set_title(name, fontsize=10)
            ax.axis("off")
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(colours, labels)],
               loc="lower center", ncol=min(len(labels), 6), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.8 / height + 0.02, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)


def detections_png(frames: list, labels: list[str], path: str, title: str,
                   min_score: float) -> None:
    """Eval photos with their true boxes (dashed, white) and the detections
    scoring at least `min_score` (solid, class colours, label and score).
    `frames`: (image, true boxes, true classes, boxes, classes, scores), boxes
    [ymin, xmin, ymax, xmax] in 0..1."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    colours = class_colours(len(labels))
    columns = min(len(frames), 4)
    rows = -(-len(frames) // columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, figsize=(4 * columns, 4.6 * rows),
                             dpi=100)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, true_boxes, true_classes, boxes, classes, scores) in zip(axes.ravel(), frames):
        h, w = image.shape[:2]
        ax.imshow(image)

        def frame(box, **style):
            y0, x0, y1, x1 = box
            ax.add_patch(Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h,
                                   fill=False, **style))
        for box in true_boxes:
            frame(box, edgecolor="white", linestyle="--", linewidth=1.5)
        shown = 0
        for box, cls, score in zip(boxes, classes, scores):
            if score < min_score:
                continue
            shown += 1
            frame(box, edgecolor=colours[cls], linewidth=2)
            ax.text(box[1] * w, box[0] * h, f"{labels[cls]} {score:.2f}", fontsize=8,
                    color="black", va="bottom",
                    bbox={"facecolor": colours[cls], "pad": 1, "linewidth": 0})
        ax.set_title(f"{len(true_boxes)} true, {shown} found", fontsize=10)
    fig.suptitle(f"{title}\ndashed white: truth; coloured: detections scoring "
                 f"{min_score:g} or more")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def precision_recall_png(curves: dict, path: str, title: str) -> None:
    """Each class's precision against recall at IoU 0.5 (COCO's 101 recall
    points; `curves`: {class: precisions}, None past the highest recall)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=100)
    recall = np.linspace(0, 1, 101)
    colours = class_colours(len(curves))
    for colour, (name, precision) in zip(colours, curves.items()):
        values = np.array([np.nan if p is None else p for p in precision], float)
        ax.plot(recall, values, color=colour, linewidth=2,
                label=f"{name} (AP@.5 {np.nan_to_num(values).mean():.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def budget_png(rows: list[dict], budget_ms: float, path: str, metric: str,
               title: str) -> None:
    """The latency-budget search: left, multiply-adds against latency for every
    timed candidate with the front joined up; right, the trained candidates'
    int8 `metric` (a share) against latency, the winner and the config as
    given marked. The budget is the dashed line on both."""
    plt = _pyplot()
    fig, (cost_ax, score_ax) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    timed = [r for r in rows if r.get("latency_ms") is not None]
    cost_ax.scatter([r["latency_ms"] for r in timed], [r["madds"] / 1e6 for r in timed],
                    s=14, color="0.65", label="timed")
    front = sorted((r for r in timed if r.get("on_front")), key=lambda r: r["latency_ms"])
    cost_ax.plot([r["latency_ms"] for r in front], [r["madds"] / 1e6 for r in front],
                 marker="o", color="tab:blue", label="front (not dominated)")
    cost_ax.set_ylabel("multiply-adds (M)")
    cost_ax.set_title("every candidate: cost against latency", fontsize=10)
    trained = sorted((r for r in timed if r.get("int8") is not None),
                     key=lambda r: r["latency_ms"])
    for key, style in (("accuracy", dict(marker="o", color="tab:blue", label="float (Keras)")),
                       ("int8", dict(marker="s", color="tab:green", label="int8 (ships)"))):
        score_ax.plot([r["latency_ms"] for r in trained], [100 * r[key] for r in trained],
                      linestyle="none", **style)
    for r in trained:
        score_ax.annotate(r["name"], (r["latency_ms"], 100 * r["int8"]), fontsize=7,
                          textcoords="offset points", xytext=(4, -10))
        for mark, colour, label in (("winner", "tab:red", "winner"),
                                    ("given", "black", "config as given")):
            if r.get(mark):
                score_ax.scatter([r["latency_ms"]], [100 * r["int8"]], s=160,
                                 facecolors="none", edgecolors=colour, linewidths=2,
                                 label=label)
    score_ax.set_ylabel(f"{metric} (%)")
    score_ax.set_title("trained candidates: accuracy against latency", fontsize=10)
    for ax in (cost_ax, score_ax):
        ax.axvline(budget_ms, color="tab:red", linestyle="--",
                   label=f"budget {budget_ms:g} ms")
        ax.set_xlabel(f"int8 latency (ms, {timed[0]['runtime']})" if timed else "latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
