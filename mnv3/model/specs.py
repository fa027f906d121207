"""MobileNetV3 block tables, as in the paper (Howard et al. 2019, tables 1 and 2).

One row per bottleneck: kernel, expanded channels, output channels, squeeze-excite,
non-linearity, stride. The expansion of a row is its expanded size over the
previous row's output, so width multipliers scale the table the way
keras.applications and the TF-Slim reference do.
"""

from __future__ import annotations

from typing import NamedTuple


class Block(NamedTuple):
    kernel: int
    expanded: int  # "exp size" column
    filters: int  # "#out" column
    se: bool
    activation: str  # "relu" or "hard_swish" ("RE" / "HS" in the paper)
    stride: int


STEM_FILTERS = 16

LARGE = (
    Block(3, 16, 16, False, "relu", 1),
    Block(3, 64, 24, False, "relu", 2),
    Block(3, 72, 24, False, "relu", 1),
    Block(5, 72, 40, True, "relu", 2),
    Block(5, 120, 40, True, "relu", 1),
    Block(5, 120, 40, True, "relu", 1),
    Block(3, 240, 80, False, "hard_swish", 2),
    Block(3, 200, 80, False, "hard_swish", 1),
    Block(3, 184, 80, False, "hard_swish", 1),
    Block(3, 184, 80, False, "hard_swish", 1),
    Block(3, 480, 112, True, "hard_swish", 1),
    Block(3, 672, 112, True, "hard_swish", 1),
    Block(5, 672, 160, True, "hard_swish", 2),
    Block(5, 960, 160, True, "hard_swish", 1),
    Block(5, 960, 160, True, "hard_swish", 1),
)

SMALL = (
    Block(3, 16, 16, True, "relu", 2),
    Block(3, 72, 24, False, "relu", 2),
    Block(3, 88, 24, False, "relu", 1),
    Block(5, 96, 40, True, "hard_swish", 2),
    Block(5, 240, 40, True, "hard_swish", 1),
    Block(5, 240, 40, True, "hard_swish", 1),
    Block(5, 120, 48, True, "hard_swish", 1),
    Block(5, 144, 48, True, "hard_swish", 1),
    Block(5, 288, 96, True, "hard_swish", 2),
    Block(5, 576, 96, True, "hard_swish", 1),
    Block(5, 576, 96, True, "hard_swish", 1),
)

# The 1x1 conv after the last block has 6x its channels; then global pooling and
# a 1x1 conv without BatchNorm of this width before the classifier.
HEAD_FILTERS = {"large": 1280, "small": 1024}
BLOCKS = {"large": LARGE, "small": SMALL}


def minimalistic(blocks):
    """The paper's "minimalistic" models: 3x3 kernels, ReLU, no squeeze-excite."""
    return tuple(b._replace(kernel=3, se=False, activation="relu") for b in blocks)


def reduced_tail(blocks):
    """The paper's segmentation backbones: the last stage (from its stride-2 block
    on) with half the channels. The first block keeps its expansion width, as
    its input is unchanged (torchvision's `reduced_tail` does the same)."""
    last_stage = last_stage_start(blocks)
    return tuple(
        b._replace(filters=b.filters // 2,
                   expanded=b.expanded if i == last_stage else b.expanded // 2)
        if i >= last_stage else b for i, b in enumerate(blocks))


def last_stage_start(blocks) -> int:
    """The index of the last stage's first (stride-2) block."""
    return max(i for i, b in enumerate(blocks) if b.stride == 2)
