"""The SSDLite detector's shape (#28): the paper's maps, one prediction per anchor."""

import numpy as np
import pytest

from mnv3 import config as config_lib
from mnv3.model.anchors import AnchorSpec
from mnv3.model.builder import build_model
from mnv3.model.ssdlite import HEAD_LAYERS, HEAD_PREFIX, build_detector, map_sizes


@pytest.mark.parametrize("variant, tap", [("small", "block8_expand_act"),
                                          ("large", "block12_expand_act")])
def test_the_detector_predicts_for_every_anchor_from_the_papers_maps(variant, tap):
    cfg = config_lib.load(None, [f"model.variant={variant}", "model.alpha=0.35"])
    model = build_detector(cfg.model, (128, 160), num_classes=3)
    sizes = map_sizes(128, 160)
    assert sizes == [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1), (1, 1)]
    anchors = AnchorSpec().anchors(sizes)
    assert model.output.shape == (None, len(anchors), 4 + 1 + 3)
    # The first map is that block's expansion, at stride 16.
    assert model.get_layer(tap).output.shape[1:3] == (8, 10)
    # The last stage at half its channels (the reduced tail; widths round to 8s).
    classifier = build_model(cfg.model, 128, 3)
    assert model.get_layer("head_conv").filters <= \
        0.6 * classifier.get_layer("head_conv").filters
    out = model(np.zeros((2, 128, 160, 3), np.float32))
    assert out.shape == (2, len(anchors), 8) and np.isfinite(out).all()
    # Every layer past the backbone is a head layer (what trains while a
    # pretrained backbone is frozen), and no backbone layer is.
    assert {layer.name for layer in model.layers if layer.name.startswith(HEAD_PREFIX)} \
        == set(HEAD_LAYERS)
