"""Semantic segmentation, the second task: the LR-ASPP model, masks moving with
their images, the loss and metrics, bad data, pretrained backbones, and the
exported files run through LiteRT and MediaPipe's ImageSegmenter."""

import glob
import json
import shutil
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import SHARED_DATA, assert_one_line_error, call_cli, shared_directory
from mnv3 import cli, config as config_lib, metrics, tasks
from mnv3.data import masks as masks_lib

CAMVID = os.path.join(SHARED_DATA, "camvid")
QUICKSTART = "configs/segmentation_quickstart.yaml"
TINY_SEG = ["model.alpha=0.35", "task.head_channels=32", "data.synthetic_images=400",
            "train.batch_size=16", "train.log_every_steps=5"]


def seg_cfg(*extra, path=QUICKSTART):
    from conftest import ROOT
    return config_lib.load(os.path.join(ROOT, path), TINY_SEG + list(extra))


# --- the model ------------------------------------------------------------------------

def test_lraspp_large_has_torchvisions_parameters():
    """Without the halved tail, LR-ASPP on MobileNetV3-Large for 21 classes is
    torchvision's lraspp_mobilenet_v3_large layer for layer: the same 3,221,538
    trainable parameters (BatchNorm statistics are not parameters there)."""
    cfg = config_lib.load(None, ["task.name=segmentation", "task.reduced_tail=false",
                                 "model.variant=large", "data.num_classes=21",
                                 "data.image_size=64"])
    model = tasks.get(cfg).build(cfg)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 3_221_538


@pytest.mark.parametrize("stride", [16, 8])
def test_dilated_tail_keeps_the_output_stride_and_halves_channels(stride):
    cfg = config_lib.load(None, ["task.name=segmentation", f"task.output_stride={stride}",
                                 "model.variant=small", "data.num_classes=5",
                                 "data.image_size=64", "data.image_width=96"])
    model = tasks.get(cfg).build(cfg)
    assert model.output.shape[1:] == (64, 96, 5)
    # Small's last stage: 96 -> 48 channels, so the head conv has 6 x 48.
    assert model.get_layer("head_conv").output.shape[1:] == (64 // stride, 96 // stride, 288)
    rates = [model.get_layer(f"block{i}_depthwise").dilation_rate for i in range(11)]
    strides = [model.get_layer(f"block{i}_depthwise").strides for i in range(11)]
    if stride == 16:  # block8 loses its stride and keeps rate 1; later blocks see 2
        assert rates[8:] == [(1, 1), (2, 2), (2, 2)] and strides[8] == (1, 1)
    else:  # block3 too: rate 2 from block4 on, 4 after block8
        assert rates[3:] == [(1, 1)] + [(2, 2)] * 5 + [(4, 4)] * 2
    # The same weights as the undilated network: only the sampling changes.
    plain = config_lib.load(None, ["task.name=segmentation", "task.output_stride=32",
                                   "model.variant=small", "data.num_classes=5",
                                   "data.image_size=64", "data.image_width=96"])
    assert [w.shape for w in tasks.get(plain).build(plain).weights] == \
        [w.shape for w in model.weights]


# --- data -----------------------------------------------------------------------------

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def test_train_view_moves_image_and_mask_together():
    """Blocks of class colour: after any rescale, crop and flip, each mask pixel's
    class is the colour under it (but at blended block edges), and padding is
    black and ignored."""
    cfg = seg_cfg("data.scale_range=[0.5, 2.0]")
    rng = np.random.default_rng(0)
    mask = np.kron(rng.integers(0, 4, (6, 8)), np.ones((8, 8), int)).astype(np.uint8)
    image = COLOURS[mask]
    for seed in range(12):
        view, labels = masks_lib.train_view(tf.constant(image), tf.constant(mask[..., None]),
                                            tf.constant([seed, 7]), cfg.data, (40, 56))
        view, labels = view.numpy().astype(int), labels.numpy()
        assert view.shape == (40, 56, 3) and labels.shape == (40, 56)
        ignored = labels == cfg.data.ignore_index
        assert np.all(view[ignored] == 0)
        nearest = np.argmin(((view[~ignored][:, None] - COLOURS[None]) ** 2).sum(-1), axis=1)
        assert np.mean(nearest == labels[~ignored]) > 0.9, seed


def test_eval_view_keeps_the_whole_frame():
    mask = np.kron(np.arange(12).reshape(3, 4) % 4, np.ones((10, 10), int)).astype(np.uint8)
    view, labels = masks_lib.eval_view(tf.constant(COLOURS[mask]),
                                       tf.constant(mask[..., None]), (30, 40))
    assert np.array_equal(labels.numpy(), mask)
    assert np.array_equal(view.numpy(), COLOURS[mask])


def test_synthetic_masks_mark_the_drawn_shapes():
    from mnv3.data import synthetic

    images, masks = synthetic.generate_masks(20, 48, seed=3)
    assert images.shape == (20, 48, 48, 3) and masks.shape == (20, 48, 48)
    assert set(np.unique(masks)) <= set(range(len(synthetic.SEGMENTATION_CLASS_NAMES)))
    for image, mask in zip(images, masks):
        shape = mask > 0
        assert shape.any() and (~shape).any()
        # a shape's colour stands out from the background by > 120 (noise sd 12)
        gap = np.linalg.norm(image[shape].mean(0) - image[~shape].mean(0))
        assert gap > 60


# --- loss and metrics -----------------------------------------------------------------

def test_loss_skips_the_ignore_index():
    cfg = seg_cfg()
    loss = tasks.get(cfg).loss()
    ignore = cfg.data.ignore_index
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, (2, 8, 8))
    labels[0, :4] = ignore
    labels[1] = ignore  # an image with nothing to learn from adds 0
    logits = rng.normal(size=(2, 8, 8, 7)).astype(np.float32)
    changed = logits.copy()
    changed[0, :4] += 100 * rng.normal(size=(4, 8, 7))
    first = loss(tf.constant(labels), tf.constant(logits)).numpy()
    assert np.allclose(first, loss(tf.constant(labels), tf.constant(changed)).numpy())
    assert first[1] == 0
    keep = labels[0] != ignore
    log_p = logits[0] - np.log(np.exp(logits[0]).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(log_p, labels[0][..., None] % 7, -1)[keep])
    assert np.isclose(first[0], expected, rtol=1e-5)


def test_pixel_confusion_and_iou():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (3, 16, 16))
    truth[0, :5] = 255
    logits = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    got = metrics.pixel_confusion(tf.constant(truth), tf.constant(logits), 3, 255).numpy()
    keep = truth != 255
    expected = np.zeros((3, 3))
    np.add.at(expected, (truth[keep], logits.argmax(-1)[keep]), 1)
    assert np.array_equal(got, expected) and got.sum() == keep.sum()
    figures = metrics.iou_figures(np.array([[8, 2, 0], [2, 6, 0], [0, 0, 0]]))
    assert figures["iou"] == [8 / 12, 6 / 10, None]  # a class in neither: no IoU
    assert np.isclose(figures["miou"], (8 / 12 + 6 / 10) / 2)
    assert np.isclose(figures["pixel_accuracy"], 14 / 18)


# --- bad data and configs: one line, exit status 2 -------------------------------------

def write_pairs(root, count=6, size=(24, 32), mask_mode="L", broken=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    for i in range(count):
        mask = rng.integers(0, 3, size).astype(np.uint8)
        Image.fromarray(COLOURS[mask]).save(root / "images" / f"f{i}.png")
        Image.fromarray(mask).convert(mask_mode).save(root / "masks" / f"f{i}.png")
    return root


def train_seg(model_dir, data_dir, *extra):
    args = ["--config", QUICKSTART, "--model_dir", str(model_dir)]
    for item in TINY_SEG + ["data.source=folder", f"data.train_dir={data_dir}",
                            "data.num_classes=3", "data.image_size=32", "train.epochs=1",
                            "train.batch_size=2", *extra]:
        args += ["--set", item]
    return call_cli(cli.train, *args)


def test_a_missing_mask_is_named(tmp_path):
    data = write_pairs(tmp_path / "data")
    os.remove(data / "masks" / "f3.png")
    result = train_seg(tmp_path / "run", data)
    assert_one_line_error(result, "f3.png: no mask", "masks")
    assert not os.path.exists(tmp_path / "run")


def test_a_colour_mask_is_refused(tmp_path):
    data = write_pairs(tmp_path / "data", mask_mode="RGB")
    assert_one_line_error(train_seg(tmp_path / "run", data), "a RGB PNG",
                          "one class index per pixel")


def _palette_masks(data):
    """Rewrites each mask as a palette PNG whose colours are not its indices (as
    Pascal VOC's are): index i is drawn in grey level 40 * i + 3."""
    from PIL import Image

    for path in sorted((data / "masks").iterdir()):
        indices = np.asarray(Image.open(path))
        palette = Image.fromarray(indices, mode="P")
        palette.putpalette([(40 * i + 3) % 256 for i in range(256) for _ in range(3)])
        palette.save(path)
        assert Image.open(path).mode == "P"


def test_palette_masks_give_their_indices_not_their_colours(tmp_path):
    from PIL import Image

    data = write_pairs(tmp_path / "data")
    wanted = [np.asarray(Image.open(p)) for p in sorted((data / "masks").iterdir())]
    _palette_masks(data)
    cfg = config_lib.load(QUICKSTART, [*TINY_SEG, "data.source=folder",
                                       f"data.train_dir={data}", "data.num_classes=3",
                                       "data.image_size=32", "data.val_fraction=0.5"])
    source = tasks.get(cfg).load_source(seed=0)
    got = {}
    for split in (source.train, source.eval):
        assert len(split.label_files) == split.size
        for name, (_, mask) in zip(split.label_files, split.make(None)):
            got[os.path.basename(name)] = mask.numpy()[..., 0]
    assert len(got) == 6
    for i, mask in enumerate(wanted):
        np.testing.assert_array_equal(got[f"f{i}.png"], mask)


def test_a_jpeg_named_png_is_not_a_mask(tmp_path):
    from PIL import Image

    data = write_pairs(tmp_path / "data")
    Image.open(data / "masks" / "f1.png").convert("L").save(data / "masks" / "f1.png",
                                                            format="JPEG")
    assert_one_line_error(train_seg(tmp_path / "run", data), "f1.png: a JPEG file",
                          "lossless PNG")
    assert not os.path.exists(tmp_path / "run")


def test_two_images_sharing_a_mask_are_refused(tmp_path):
    import shutil

    data = write_pairs(tmp_path / "data")
    shutil.copy(data / "images" / "f0.png", data / "images" / "f0.jpg")
    assert_one_line_error(train_seg(tmp_path / "run", data), "f0.jpg", "f0.png",
                          "share the name 'f0'")


def test_a_mask_of_another_size_is_refused(tmp_path):
    from PIL import Image

    data = write_pairs(tmp_path / "data")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "masks" / "f2.png")
    assert_one_line_error(train_seg(tmp_path / "run", data), "f2.png: 10x10", "32x24")


@pytest.mark.slow
def test_a_mask_value_beyond_the_classes_stops_training(tmp_path):
    from PIL import Image

    data = write_pairs(tmp_path / "data")
    # 7 is neither a class (0..2) nor ignore_index (255); one mask holds it.
    mask = np.zeros((24, 32), np.uint8)
    mask[5, 6] = 7
    Image.fromarray(mask).save(data / "masks" / "f4.png")
    result = train_seg(tmp_path / "run", data)
    assert_one_line_error(result, "mask value", "data.num_classes is 3",
                          "data.ignore_index 255", "masks/f", ".png: holds 7")


@pytest.mark.parametrize("override, fragments", [
    (["data.source=tfds", "data.tfds_name=voc"], ["data.source: tfds has no masks"]),
    (["data.mixup_alpha=0.2"], ["data.mixup_alpha: not for task.name: segmentation"]),
    (["data.ignore_index=3"], ["data.ignore_index: 3 is a class"]),
    (["task.name=classification", "data.image_width=480", "data.num_classes=10"],
     ["data.image_width: not for task.name: classification"]),
    (["task.output_stride=12"], ["task.output_stride", "one of 8, 16, 32"]),
])
def test_segmentation_configs_are_checked(override, fragments, tmp_path):
    args = ["--config", QUICKSTART, "--model_dir", str(tmp_path / "run")]
    for item in override:
        args += ["--set", item]
    assert_one_line_error(call_cli(cli.train, *args), *fragments)


# --- trained, exported, and run as an app would ---------------------------------------

def segmenter_cfg(*extra):
    """A tiny LR-ASPP on real CamVid road frames at 48x64 when ../shared/data has
    them, else on the synthetic shapes."""
    if os.path.isdir(CAMVID):
        data = ["data.source=folder", f"data.train_dir={CAMVID}/train",
                f"data.eval_dir={CAMVID}/val", "data.classes=configs/camvid_classes.txt",
                "data.image_size=48", "data.image_width=64", "data.num_classes=11",
                "data.ignore_index=11", "data.cache=true",
                "train.epochs=3", "train.learning_rate=0.08"]
    else:
        # Shapes need more and faster steps than road frames to rise clearly
        # above chance (3 epochs of 540 gave mIoU 0.13, chance 0.14).
        data = ["data.synthetic_images=800", "train.epochs=6", "train.learning_rate=0.2"]
    return seg_cfg(*data,
                   "export.quant=[float32, int8]", "export.calibration_steps=32",
                   "export.latency_runs=3", *extra)


@pytest.fixture(scope="session")
def segmenter(tmp_path_factory):
    """The tiny segmenter, trained and exported once for the tests below: its
    last epoch in a second run, which resumes the first."""
    from mnv3.export.pipeline import run as export_run
    from mnv3.training import run as train_run

    def build(path):
        cfg = segmenter_cfg()
        train_run(segmenter_cfg(f"train.epochs={cfg.train.epochs - 1}"), str(path))
        train_run(cfg, str(path))
        export_run(cfg, str(path))

    path = shared_directory(tmp_path_factory, "segmenter_run", build)
    return str(path), json.loads((path / "export" / "report.json").read_text())


def eval_frames(count=6):
    """Eval frames at the model's input size, as the pipeline gives them."""
    from tests.conftest import make_pipeline

    pipeline = make_pipeline(segmenter_cfg())
    images, masks = next(iter(pipeline.eval(batch_size=count)))
    return images.numpy(), masks.numpy()


@pytest.mark.slow
def test_trained_segmenter_learns_and_reports_by_miou(segmenter):
    model_dir, report = segmenter
    records = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
    # mIoU picks best.keras, and the export's Keras row is that model on the eval set.
    best = max(r["eval_miou"] for r in records)
    keras, float32, int8 = report["rows"]
    assert keras["mode"] == "keras" and np.isclose(keras["miou"], best, atol=1e-6)
    chance = 1 / len(report["labels"])
    assert keras["miou"] > chance and keras["pixel_accuracy"] > 0.5
    assert len(records[-1]["eval_iou"]) == len(report["labels"])
    # Float32 is the Keras model; int8 stays close, pixel by pixel.
    assert float32["agreement"] > 0.999 and abs(float32["miou"] - keras["miou"]) < 1e-3
    assert int8["agreement"] > 0.9 and abs(int8["miou"] - keras["miou"]) < 0.05
    files = sorted(os.listdir(os.path.join(model_dir, "export")))
    assert {"frames.png", "curves.png", "report.md", "report.json", "labels.txt"} <= set(files)
    assert "## IoU per class" in open(os.path.join(model_dir, "export", "report.md")).read()


@pytest.mark.slow
def test_exported_segmenter_carries_mediapipe_metadata(segmenter):
    from mnv3.tflite.metadata import associated_files, read_metadata
    from mediapipe.tasks.metadata import image_segmenter_metadata_schema_py_generated as seg

    model_dir, report = segmenter
    files = glob.glob(os.path.join(model_dir, "export", "*.tflite"))
    assert len(files) == 2  # float32 and int8
    for path in files:
        data = open(path, "rb").read()
        graph = read_metadata(data).subgraphMetadata[0]
        output, = graph.outputTensorMetadata
        assert output.name.decode() == "segmentation_logits"
        assert output.associatedFiles[0].name.decode() == "labels.txt"
        custom, = graph.customMetadata
        assert custom.name.decode() == "SEGMENTER_METADATA"
        options = seg.ImageSegmenterOptions.GetRootAs(bytes(custom.data), 0)
        assert options.Activation() == seg.Activation.SOFTMAX
        assert associated_files(data)["labels.txt"].decode().split() == report["labels"]


@pytest.mark.slow
def test_mediapipe_image_segmenter_agrees_with_our_interpreter(segmenter):
    """What an Android app gets: MediaPipe's ImageSegmenter's category mask is
    our interpreter's per-pixel argmax, on real frames."""
    import mediapipe as mp
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    from mnv3.tflite.evaluate import TFLiteModel

    model_dir, _ = segmenter
    images, _ = eval_frames()
    for mode in ["float32", "int8"]:
        path = glob.glob(os.path.join(model_dir, "export", f"*_{mode}.tflite"))[0]
        ours = TFLiteModel(open(path, "rb").read())
        options = vision.ImageSegmenterOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=path),
            output_category_mask=True, output_confidence_masks=False)
        with vision.ImageSegmenter.create_from_options(options) as segmenter_app:
            for image in images:
                frame = mp.Image(image_format=mp.ImageFormat.SRGB,
                                 data=np.ascontiguousarray(image.astype(np.uint8)))
                got = segmenter_app.segment(frame).category_mask.numpy_view()[..., 0]
                expected = np.argmax(ours(image.astype(np.float32)), axis=-1)
                assert got.shape == expected.shape
                assert np.mean(got == expected) > 0.999, mode


@pytest.mark.slow
def test_a_classification_run_starts_the_backbone(learned_run):
    """model.init_from with a classifier: the backbone loads (weights equal), the
    halved last stage and the head start afresh."""
    from tests.conftest import plan_start

    cfg = seg_cfg("model.alpha=0.35", f"model.init_from={learned_run}")
    start = plan_start(cfg)
    source = dict(start.source.layers)
    assert start.weights and all(np.array_equal(a, b) for name, arrays in start.weights.items()
                                 for a, b in zip(arrays, source[name]))
    assert "block0_depthwise" in start.weights and "block7_project" in start.weights
    assert {"block8_project", "block10_expand", "head_conv", "seg_branch_conv",
            "seg_low_classifier"} <= set(start.fresh)
    assert "logits" not in start.weights
    # Without the halved tail, everything but the head comes from the classifier.
    start = plan_start(seg_cfg(f"model.init_from={learned_run}",
                                    "task.reduced_tail=false"))
    assert set(start.fresh) == {"seg_branch_conv", "seg_branch_conv_bn", "seg_gate_conv",
                                "seg_high_classifier", "seg_low_classifier"}


@pytest.mark.slow
def test_predict_refuses_a_segmenter_in_one_line(segmenter):
    model_dir, _ = segmenter
    frame = glob.glob(os.path.join(CAMVID, "val", "images", "*.jpg"))[:1] or \
        [os.path.join(model_dir, "export", "frames.png")]
    int8 = glob.glob(os.path.join(model_dir, "export", "*_int8.tflite"))
    assert int8
    for model in [model_dir, *int8]:
        result = call_cli(cli.predict, "--model", model, frame[0])
        assert_one_line_error(result, "a segmentation model")


def test_every_task_name_has_a_task():
    import typing

    from mnv3.config import TaskConfig

    assert set(typing.get_args(typing.get_type_hints(TaskConfig)["name"])) == set(tasks.TASKS)


@pytest.mark.slow
def test_a_segmentation_run_resumes_and_keeps_its_best_miou(segmenter, tmp_path):
    """The classifier's trainer, unchanged: the segmenter's second run resumed
    where the first stopped (no epoch twice), and best.keras followed eval mIoU
    across the restart."""
    records = [json.loads(line) for line in open(os.path.join(segmenter[0], "metrics.jsonl"))]
    epochs = segmenter_cfg().train.epochs
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert records[-1]["step"] == epochs * records[0]["step"]
    reader = tf.train.load_checkpoint(os.path.join(segmenter[0], "checkpoints"))
    best = reader.get_tensor("best_top1/.ATTRIBUTES/VARIABLE_VALUE")
    assert np.isclose(best, max(r["eval_miou"] for r in records))
    # The run holds a segmenter: a classifier's config is refused, not trained on it.
    model_dir = tmp_path / "run"
    shutil.copytree(segmenter[0], model_dir, ignore=shutil.ignore_patterns("export", "tb"))
    args = ["--config", QUICKSTART, "--model_dir", str(model_dir)]
    for item in TINY_SEG + ["task.name=classification", "data.num_classes=10",
                            f"train.epochs={epochs + 1}"]:
        args += ["--set", item]
    assert_one_line_error(call_cli(cli.train, *args), "task.name='segmentation'")


@pytest.mark.slow
def test_int8_segmenter_is_integer_but_its_stem_and_upsampling(segmenter):
    """Only the input's uint8 -> float step, the stem (export.int8_float_stem) and
    the bilinear upsampling (float is faster there, BENCHMARKS.md) touch float;
    built-in ops only."""
    from tests.test_export import FLOAT_STEM, float_ops, tflite_ops

    model_dir, _ = segmenter
    path = glob.glob(os.path.join(model_dir, "export", "*_int8.tflite"))[0]
    assert float_ops(path) == ["DEQUANTIZE", *FLOAT_STEM, "QUANTIZE", "DEQUANTIZE",
                               "RESIZE_BILINEAR", "QUANTIZE", "DEQUANTIZE", "RESIZE_BILINEAR"]
    from mediapipe.tasks.metadata import schema_py_generated as schema

    builtin = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
    files = glob.glob(os.path.join(model_dir, "export", "*.tflite"))
    assert files
    for name in files:
        assert set(tflite_ops(name)) <= builtin - {"CUSTOM"}, name
