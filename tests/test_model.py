import keras
import numpy as np
import pytest

from mnv3.config import ModelConfig
from mnv3.model import build_model, make_divisible

APPLICATIONS = {"large": keras.applications.MobileNetV3Large,
                "small": keras.applications.MobileNetV3Small}


def reference(variant, **kwargs):
    return APPLICATIONS[variant](input_shape=(224, 224, 3), weights=None, **kwargs)


def weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


@pytest.mark.parametrize("variant, alpha, minimalistic, expected", [
    ("large", 1.0, False, 5_507_432), ("small", 1.0, False, 2_554_968),
    ("large", 0.75, False, None), ("small", 0.75, False, None),
    ("large", 1.0, True, None), ("small", 1.0, True, None),
])
def test_parameter_count_matches_keras_applications(variant, alpha, minimalistic, expected):
    ours = build_model(ModelConfig(variant=variant, alpha=alpha, minimalistic=minimalistic),
                       224, 1000)
    ref = reference(variant, alpha=alpha, minimalistic=minimalistic)
    assert ours.count_params() == ref.count_params()
    if expected:
        assert ours.count_params() == expected


@pytest.mark.parametrize("variant, minimalistic", [
    ("large", False), ("small", False), ("small", True)])
def test_outputs_match_keras_applications_on_copied_weights(variant, minimalistic):
    ref = reference(variant, minimalistic=minimalistic, dropout_rate=0.2)
    ours = build_model(ModelConfig(variant=variant, minimalistic=minimalistic), 224, 1000)
    ours_layers, ref_layers = weighted_layers(ours), weighted_layers(ref)
    assert len(ours_layers) == len(ref_layers)
    rng = np.random.default_rng(0)
    for mine, theirs in zip(ours_layers, ref_layers):
        assert isinstance(mine, type(theirs)), (mine.name, theirs.name)
        weights = theirs.get_weights()
        if isinstance(theirs, keras.layers.BatchNormalization):
            # Random but plausible moving statistics, so inference-mode BN is exercised.
            gamma, beta, mean, var = weights
            weights = [gamma, beta, rng.normal(0, 0.1, mean.shape).astype("float32"),
                       rng.uniform(0.5, 1.5, var.shape).astype("float32")]
            theirs.set_weights(weights)
        mine.set_weights(weights)
    images = rng.uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    np.testing.assert_allclose(ours(images, training=False).numpy(),
                               ref(images, training=False).numpy(), atol=1e-4)


def test_make_divisible_never_rounds_down_more_than_ten_percent():
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(18) == 24  # 16 would lose 11%
    assert make_divisible(72 * 0.75) == 56
    for v in np.linspace(1, 2000, 500):
        d = make_divisible(v)
        assert d % 8 == 0 and d >= 0.9 * v


TINY = dict(variant="small", alpha=0.35)


@pytest.mark.parametrize("size", [32, 57, 100])
def test_any_resolution_with_dynamic_input(size):
    model = build_model(ModelConfig(**TINY), None, 7)
    probs = model(np.zeros((2, size, size + 3, 3), "float32")).numpy()
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("removed, final", [(0, 1), (1, 2), (2, 4)])
def test_remove_early_strides_keeps_small_images_spatial(removed, final):
    cfg = ModelConfig(**TINY, include_top=False, pooling="none",
                      remove_early_strides=removed)
    model = build_model(cfg, 32, 10)
    assert model.output.shape[1:3] == (final, final)


@pytest.mark.parametrize("variant", ["large", "small"])
def test_feature_outputs_at_strides_8_16_32(variant):
    cfg = ModelConfig(variant=variant, alpha=0.35, include_top=False, feature_outputs=True)
    model = build_model(cfg, 64, 10)
    assert [tuple(o.shape[1:3]) for o in model.outputs] == [(8, 8), (4, 4), (2, 2)]
    maps = model(np.zeros((1, 64, 64, 3), "float32"))
    assert [m.shape[1] for m in maps] == [8, 4, 2]


def test_pooling_options_and_backbone_width():
    avg = build_model(ModelConfig(**TINY, include_top=False, pooling="avg"), 64, 10)
    mx = build_model(ModelConfig(**TINY, include_top=False, pooling="max"), 64, 10)
    # The head conv has 6x the last block's width: make_divisible(96 * 0.35) = 32.
    assert avg.output.shape == mx.output.shape == (None, 6 * 32)
    assert isinstance(mx.get_layer("pool"), keras.layers.GlobalMaxPooling2D)


def test_readable_names_and_config_knobs():
    cfg = ModelConfig(variant="large", alpha=0.35, bn_momentum=0.9, bn_epsilon=1e-5,
                      dropout=0.0, classifier_activation="linear")
    model = build_model(cfg, 64, 5)
    names = {layer.name for layer in model.layers}
    for expected in ["image", "rescale", "stem_conv", "stem_conv_bn", "block0_depthwise",
                     "block1_expand", "block3_se_reduce", "block14_project_bn",
                     "block14_add", "head_conv", "head_fc", "logits", "predictions"]:
        assert expected in names, expected
    assert "dropout" not in names
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) > 30 and all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
    assert model.get_layer("predictions").activation.__name__ == "linear"
    # Minimalistic: ReLU only, 3x3 kernels, no squeeze-excite.
    mini = build_model(ModelConfig(variant="large", alpha=0.35, minimalistic=True), 64, 5)
    assert not any("_se_" in l.name for l in mini.layers)
    depthwise = [l for l in mini.layers if isinstance(l, keras.layers.DepthwiseConv2D)]
    assert len(depthwise) == 15 and all(l.kernel_size == (3, 3) for l in depthwise)
    assert not any(isinstance(l, keras.layers.Activation) and "hard_swish" in str(l.activation)
                   for l in mini.layers)


def test_model_takes_raw_pixels():
    model = build_model(ModelConfig(**TINY, include_top=False, pooling="none"), 32, 10)
    rescale = model.get_layer("rescale")
    out = rescale(np.array([[[[0.0, 127.5, 255.0]]]], "float32")).numpy()
    np.testing.assert_allclose(out.ravel(), [-1.0, 0.0, 1.0])
