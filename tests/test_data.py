import json
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from mnv3 import config as config_lib
from mnv3.data import LABEL_RANGE_MESSAGE, preprocess
from mnv3.data.folder import list_images
from mnv3.data.sources import holdout
from mnv3.data.synthetic import generate
from mnv3.errors import UserError
from mnv3 import cli
from tests.conftest import SHARED_DATA, assert_one_line_error, call_cli, make_pipeline

# The classic 1x1 GIF: real bytes of a real format TF can decode but not encode.
TINY_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01"
            b"\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def bmp_bytes(rgb: np.ndarray) -> bytes:
    """A 24-bit uncompressed BMP (rows bottom-up, BGR, padded to 4 bytes)."""
    h, w, _ = rgb.shape
    row = w * 3 + (-w * 3) % 4
    pixels = b"".join(rgb[y, :, ::-1].tobytes().ljust(row, b"\0") for y in range(h - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


def random_rgb(rng, h=40, w=48):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_folder(root, classes=("cat", "dog"), per_class=6, seed=0):
    """Real encoded images in every supported format and colour mode."""
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            kind = i % 5
            rgb = random_rgb(rng)
            if kind == 0:
                data = tf.io.encode_jpeg(rgb).numpy(); name = f"{i}.jpg"
            elif kind == 1:
                data = tf.io.encode_png(rgb).numpy(); name = f"{i}.png"
            elif kind == 2:  # greyscale PNG
                data = tf.io.encode_png(rgb[..., :1]).numpy(); name = f"{i}.PNG"
            elif kind == 3:  # RGBA PNG
                rgba = np.concatenate([rgb, rgb[..., :1]], -1)
                data = tf.io.encode_png(rgba).numpy(); name = f"{i}.png"
            else:
                data = bmp_bytes(rgb); name = f"{i}.bmp"
            (root / c / name).write_bytes(data)
    (root / classes[0] / "tiny.gif").write_bytes(TINY_GIF)
    return root


def folder_cfg(train_dir, *extra, num_classes=2):
    return config_lib.load(None, ["data.source=folder", f"data.train_dir={train_dir}",
                                  "data.image_size=32", f"data.num_classes={num_classes}",
                                  "train.batch_size=4", "data.val_fraction=0.25", *extra])


def count_images(ds):
    return sum(int(x.shape[0]) for x, _ in ds)


def test_folder_decodes_every_format_to_rgb(tmp_path):
    root = make_folder(tmp_path / "imgs")
    files = list_images(str(root))
    assert files.class_names == ["cat", "dog"] and len(files.paths) == 13
    for path in files.paths:
        image = preprocess.decode(tf.io.read_file(path))
        assert image.shape[-1] == 3 and image.dtype == tf.uint8
    pipeline = make_pipeline(folder_cfg(root))
    assert pipeline.source.train.size + pipeline.source.eval.size == 13
    for images, labels in pipeline.eval(batch_size=32):
        assert images.shape[1:] == (32, 32, 3) and images.dtype == tf.uint8
        assert labels.shape[1:] == (2,)


def test_bad_files_are_skipped_with_one_warning(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs")
    good_jpeg = tf.io.encode_jpeg(random_rgb(np.random.default_rng(1))).numpy()
    (root / "cat" / "zero.jpg").write_bytes(b"")
    (root / "cat" / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (root / "dog" / "notes.png").write_bytes(b"this is not an image at all\n")
    (root / "dog" / "readme.txt").write_text("skipped: not an image extension")
    with caplog.at_level("WARNING"):
        files = list_images(str(root))
    assert len(files.paths) == 13
    warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    # A file in a format we skip is counted like any other skipped file.
    assert len(warnings) == 1 and "skipping 4 file(s)" in warnings[0], warnings
    assert "readme.txt (not a .jpg" in warnings[0]
    assert "zero.jpg (empty file)" in warnings[0] and "truncated JPEG" in warnings[0]

    with pytest.raises(UserError, match=r"truncated\.jpg: truncated JPEG \(data.strict"):
        list_images(str(root), strict=True)


def test_corrupt_data_behind_a_valid_header_is_dropped_at_decode(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=4)
    jpeg = bytearray(tf.io.encode_jpeg(random_rgb(np.random.default_rng(2))).numpy())
    jpeg[200:-2] = bytes(len(jpeg) - 202)  # header and EOI intact, scan data zeroed
    (root / "cat" / "garbled.jpg").write_bytes(bytes(jpeg))
    jpeg[100:-2] = b"\xff" * (len(jpeg) - 102)
    (root / "dog" / "garbled.jpg").write_bytes(bytes(jpeg))
    cfg = folder_cfg(root, "data.eval_dir=" + str(root))
    pipeline = make_pipeline(cfg)
    total = pipeline.source.eval.size
    assert total == 11
    seen = count_images(pipeline.eval(batch_size=32))
    assert total - 2 <= seen <= total  # libjpeg may recover some garbage as grey pixels


@pytest.mark.parametrize("setup, fragment", [
    (lambda r: os.makedirs(r / "cat"), "class folder has no images"),
    (lambda r: os.makedirs(r), "no class sub-folders"),
    (lambda r: None, "data directory not found"),
])
def test_unusable_folders_are_one_line_errors(tmp_path, setup, fragment):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(UserError, match=fragment):
        make_pipeline(folder_cfg(root))


def test_class_count_mismatch_and_cli_exit_status(tmp_path):
    root = make_folder(tmp_path / "imgs")
    with pytest.raises(UserError, match="data.num_classes is 5 but .* has 2 classes"):
        make_pipeline(folder_cfg(root, num_classes=5))
    empty_class = make_folder(tmp_path / "other")
    os.makedirs(empty_class / "zebra")
    from benchmarks import input_pipeline

    result = call_cli(input_pipeline.main, "--set", "data.source=folder",
                     "--set", f"data.train_dir={empty_class}", "--set", "data.num_classes=3")
    assert_one_line_error(result, "zebra", "no images")


@pytest.mark.parametrize("cache", [False, True])
def test_training_batches_mix_classes(tmp_path, cache):
    # Folders list images class by class; every batch must still mix them
    # (a partial shuffle buffer over that order once fed one class at a time).
    root = make_folder(tmp_path / "imgs", classes=("a", "b", "c", "d"), per_class=30)
    cfg = folder_cfg(root, f"data.cache={str(cache).lower()}", "data.shuffle_buffer=4",
                     num_classes=4)
    pipeline = make_pipeline(cfg)
    for epoch in range(2):
        for _, labels in pipeline.train(epoch=epoch, batch_size=16):
            assert len(set(np.argmax(labels.numpy(), axis=-1))) >= 3


def test_holdout_is_stratified_and_fixed():
    labels = np.repeat(np.arange(4), [100, 50, 20, 10])
    train, held = holdout(labels, 0.1)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == 180
    assert np.bincount(labels[held]).tolist() == [10, 5, 2, 1]
    assert (holdout(labels, 0.1)[1] == held).all()


def test_training_batches_are_reproducible_per_seed_and_epoch():
    cfg = config_lib.load(None, ["data.image_size=32", "data.synthetic_images=200",
                                 "train.batch_size=16", "data.random_flip=true"])
    pipeline = make_pipeline(cfg)
    first = next(iter(pipeline.train(epoch=3)))[0].numpy()
    again = next(iter(make_pipeline(cfg).train(epoch=3)))[0].numpy()
    other_epoch = next(iter(pipeline.train(epoch=4)))[0].numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_epoch)


def test_eval_view_is_a_central_crop():
    # Left half black, right half white; a central 50% crop of a 64x128 image
    # keeps the middle 32 columns: half black, half white.
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 64:] = 255
    cfg = config_lib.load(None, ["data.image_size=32", "data.eval_crop_fraction=0.5"]).data
    for encoded in (tf.constant(image), tf.io.encode_png(image), tf.io.encode_jpeg(image)):
        out = preprocess.eval_view(encoded, cfg).numpy()
        assert out.shape == (32, 32, 3)
        assert out[:, :14].max() < 20 and out[:, 18:].min() > 235


def test_train_views_crop_and_pad():
    rng = np.random.default_rng(0)
    image = tf.constant(random_rgb(rng, 50, 70))
    cfg = config_lib.load(None, ["data.image_size=32"]).data
    seed = tf.constant([1, 2], tf.int64)
    out = preprocess.train_view(image, seed, cfg, 32)
    assert out.shape == (32, 32, 3) and out.dtype == tf.uint8
    np.testing.assert_array_equal(out, preprocess.train_view(image, seed, cfg, 32))
    padded = config_lib.load(None, ["data.image_size=32", "data.train_crop=pad_and_crop",
                                    "data.pad_pixels=4", "data.random_flip=false"]).data
    small = tf.constant(random_rgb(rng, 32, 32))
    crops = [preprocess.train_view(small, tf.constant([s, 0], tf.int64), padded, 32).numpy()
             for s in range(20)]
    # Every crop is a shifted copy of the original with zero borders.
    assert any(not np.array_equal(c, small.numpy()) for c in crops)
    assert any((c == 0).all(axis=(1, 2)).any() or (c == 0).all(axis=(0, 2)).any()
               for c in crops)


def test_randaugment_and_mixing_change_the_batch_and_soften_labels():
    base = ["data.image_size=32", "data.synthetic_images=200", "train.batch_size=8"]
    plain_images, plain_labels = next(iter(make_pipeline(config_lib.load(None, base)).train()))
    cfg = config_lib.load(None, base + ["data.randaugment_ops=2", "data.mixup_alpha=0.2",
                                        "data.cutmix_alpha=1.0"])
    images, labels = next(iter(make_pipeline(cfg).train()))
    assert images.shape == plain_images.shape == (8, 32, 32, 3)
    assert not np.array_equal(images.numpy(), plain_images.numpy())
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert (plain_labels.numpy().max(axis=1) == 1.0).all()  # one-hot without mixing
    assert (labels.numpy().max(axis=1) < 1.0 - 1e-3).any()  # mixed images: soft labels
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0


@pytest.mark.parametrize("task", [[], ["task.name=detection", "data.num_classes=6"]])
def test_photometric_distortion_changes_colours_only_and_is_reproducible(task):
    """data.photometric recolours the same views: the crop, flip and labels
    (a detector's boxes) are those of the undistorted views, each pixel's new
    colour is a function of its old one, and a seed gives the same view again."""
    base = ["data.image_size=32", "data.synthetic_images=200", "train.batch_size=16", *task]
    plain_images, plain_labels = next(iter(make_pipeline(config_lib.load(None, base)).train(2)))
    cfg = config_lib.load(None, base + ["data.photometric=true"])
    images, labels = next(iter(make_pipeline(cfg).train(2)))
    np.testing.assert_array_equal(labels.numpy(), plain_labels.numpy())
    np.testing.assert_array_equal(images.numpy(),
                                  next(iter(make_pipeline(cfg).train(2)))[0].numpy())
    changed = 0
    for before, after in zip(plain_images.numpy(), images.numpy()):
        colours = {}
        for old, new in zip(before.reshape(-1, 3), after.reshape(-1, 3)):
            assert colours.setdefault(tuple(old), tuple(new)) == tuple(new)
        changed += not np.array_equal(before, after)
    assert 0 < changed  # each distortion applies to half the views


def test_synthetic_is_balanced_and_deterministic():
    a, la = generate(100, 32, seed=5)
    b, lb = generate(100, 32, seed=5)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(la).tolist() == [10] * 10
    assert a.dtype == np.uint8 and a.std() > 30


def test_a_small_synthetic_set_is_drawn_once_and_kept_read_only(monkeypatch):
    from mnv3.data import synthetic

    first, labels = synthetic.drawn(generate, 100, 32, seed=6)
    again, _ = synthetic.drawn(generate, 100, 32, seed=6)
    assert again is first  # kept, not drawn again
    np.testing.assert_array_equal(first, generate(100, 32, seed=6)[0])  # what it draws
    with pytest.raises(ValueError):  # shared with later sources: nobody writes to it
        first[0, 0, 0, 0] = 1
    assert synthetic.drawn(generate, 100, 32, seed=7)[0] is not first
    # A set over the limit is drawn each time, not held in memory twice.
    monkeypatch.setattr(synthetic, "KEEP_BYTES", 100)
    assert synthetic.drawn(generate, 100, 32, seed=6)[0] is not first


def test_tfrecord_converter_and_reader(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=5)
    out = tmp_path / "records"
    result = call_cli(cli.tfrecord, "--src", str(root), "--out", str(out),
                      "--shards", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["counts.json", "labels.txt"] + [
        f"train-{i:05d}-of-00004" for i in range(4)]
    counts = json.loads((out / "counts.json").read_text())
    assert counts["train"]["records"] == 11 and len(counts["train"]["shards"]) == 4

    cfg = config_lib.load(None, ["data.source=tfrecord", f"data.train_dir={out}",
                                 "data.num_classes=2", "data.image_size=32",
                                 "train.batch_size=2", "data.val_fraction=0.25"])
    pipeline = make_pipeline(cfg)
    assert pipeline.class_names == ["cat", "dog"]
    assert pipeline.source.train.size + pipeline.source.eval.size == 11
    assert count_images(pipeline.eval()) == pipeline.source.eval.size
    # 1001-class files store labels from 1: a missing offset is caught, not trained on.
    (out / "labels.txt").unlink()
    shifted = config_lib.load(None, ["data.source=tfrecord", f"data.train_dir={out}",
                                     "data.num_classes=2", "data.image_size=32",
                                     "data.label_offset=1", "data.eval_dir=" + str(out),
                                     "data.eval_pattern=train-*"])
    with pytest.raises(tf.errors.InvalidArgumentError, match=LABEL_RANGE_MESSAGE):
        count_images(make_pipeline(shifted).eval())


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    cfg = config_lib.load(None, ["data.source=tfds", "data.tfds_name=cifar10",
                                 "data.image_size=32", "data.train_crop=pad_and_crop",
                                 "train.batch_size=4", "data.eval_split=test"])
    with tfds.testing.mock_data(num_examples=12):
        pipeline = make_pipeline(cfg)
        images, labels = next(iter(pipeline.train()))
        assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 10)
        assert count_images(pipeline.eval()) == 12
    wrong = config_lib.load(None, ["data.source=tfds", "data.tfds_name=cifar10",
                                   "data.num_classes=100"])
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(UserError, match="data.num_classes is 100"):
            make_pipeline(wrong)


def test_tfds_unprepared_dataset_is_a_clear_error(tmp_path):
    cfg = config_lib.load(None, ["data.source=tfds", "data.tfds_name=cifar10",
                                 f"data.tfds_data_dir={tmp_path}", "data.tfds_download=false"])
    with pytest.raises(UserError, match="not prepared in .* data.tfds_download is off"):
        make_pipeline(cfg)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "imagenette", "train")),
                    reason="../shared/data/imagenette is not here")
def test_real_imagenette_folder():
    root = os.path.join(SHARED_DATA, "imagenette", "train")
    cfg = config_lib.load(None, ["data.source=folder", f"data.train_dir={root}",
                                 "data.image_size=64", "train.batch_size=8"])
    pipeline = make_pipeline(cfg)
    assert pipeline.source.train.size + pipeline.source.eval.size == 9469
    assert len(pipeline.class_names) == 10 and pipeline.class_names[0] == "n01440764"
    images, labels = next(iter(pipeline.train()))
    assert images.shape == (8, 64, 64, 3) and float(tf.reduce_mean(
        tf.cast(images, tf.float32))) > 20


def broken_png():
    """A PNG that passes the cheap checks (signature, IEND) but does not decode."""
    png = bytearray(tf.io.encode_png(random_rgb(np.random.default_rng(3))).numpy())
    start = png.index(b"IDAT") + 4
    png[start:start + 64] = bytes(range(64))  # compressed pixel data garbled
    return bytes(png)


def test_each_real_file_is_listed_once_whatever_links_the_folder_holds(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=3)
    os.symlink(root / "cat" / "0.jpg", root / "cat" / "again.jpg")
    os.makedirs(root / "cat" / "sub")
    os.symlink(root / "cat", root / "cat" / "sub" / "loop")  # a cycle
    files = list_images(str(root))
    real = [os.path.realpath(p) for p in files.paths]
    assert len(real) == len(set(real)) == 7  # 4 cat (with tiny.gif) + 3 dog
    assert files.labels.count(0) == 4
    # The same file under two classes would be trained with two labels.
    os.symlink(root / "dog", root / "cat" / "dogs")
    with pytest.raises(UserError, match="in two classes"):
        list_images(str(root))


@pytest.mark.parametrize("name, why", [("two\nlines", "line break"), (" cat", "space"),
                                       ("cat\u2028x", "line break")])
def test_class_names_that_would_shift_labels_are_refused(tmp_path, name, why):
    root = make_folder(tmp_path / "imgs", classes=("dog", name), per_class=2)
    with pytest.raises(UserError, match=why):
        list_images(str(root))


@pytest.mark.slow
def test_strict_decode_failure_names_the_file(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=5)
    (root / "dog" / "broken.png").write_bytes(broken_png())
    assert len(list_images(str(root), strict=True).paths) == 12  # passes the cheap checks
    args = ["--config", "configs/quickstart.yaml", "--model_dir",
            str(tmp_path / "run")]
    for item in ["data.source=folder", f"data.train_dir={root}", f"data.eval_dir={root}",
                 "data.num_classes=2", "data.image_size=32", "model.alpha=0.35",
                 "model.remove_early_strides=2", "train.batch_size=4", "train.epochs=1",
                 "data.strict=true"]:
        args += ["--set", item]
    assert_one_line_error(call_cli(cli.train, *args), "broken.png", "cannot be decoded")


def test_tfrecord_reconversion_and_wrong_counts(tmp_path):
    from mnv3.data import tfrecord

    root = make_folder(tmp_path / "imgs", per_class=5)
    out = tmp_path / "records"
    tfrecord.write_shards(str(root), str(out), 4, "train")
    tfrecord.write_shards(str(root), str(out), 2, "train")
    shards = tfrecord.shard_files(str(out), "train-*")
    assert [os.path.basename(s) for s in shards] == [f"train-{i:05d}-of-00002"
                                                      for i in range(2)]
    assert tfrecord.record_count(str(out), "train-*", shards) == 11
    # A count that does not describe these shards is not trusted.
    counts = json.loads((out / "counts.json").read_text())
    counts["train"]["records"] = 330
    with open(shards[0], "ab") as f:
        f.write(b"\0")  # the shards changed since the count was written
    (out / "counts.json").write_text(json.dumps(counts))
    assert tfrecord.record_count(str(out), "train-*", shards[1:]) < 11
    (out / "counts.json").write_text("{not json")
    assert tfrecord.record_count(str(out), "train-*", shards[1:]) < 11


def test_fixed_class_list_labels_folders_by_their_place_in_it(tmp_path):
    # Two ImageNet classes out of order on disk: labels are ImageNet's, names English.
    root = make_folder(tmp_path / "in", classes=("n01443537", "n01440764"), per_class=4)
    pipeline = make_pipeline(folder_cfg(root, "data.classes=imagenet", num_classes=1000))
    assert len(pipeline.class_names) == 1000
    assert pipeline.class_names[:2] == ["tench", "goldfish"]
    seen = set()
    for _, labels in pipeline.train(0).concatenate(pipeline.eval()):
        seen |= set(np.argmax(labels.numpy(), axis=1).tolist())
    assert seen == {0, 1}
    # A text file: its order, not the folders' sorted order.
    listing = tmp_path / "classes.txt"
    listing.write_text("n01443537\nn01440764\nunused\n")
    from mnv3.data import classes
    from mnv3.data.folder import list_images

    listed = list_images(str(root), classes=classes.load(str(listing), 3))
    assert listed.class_names == ["n01443537", "n01440764", "unused"]
    for path, label in zip(listed.paths, listed.labels):
        assert label == (0 if "n01443537" in path else 1)
    (root / "stray").mkdir()
    (root / "stray" / "0.png").write_bytes(tf.io.encode_png(random_rgb(np.random.default_rng(0))).numpy())
    with pytest.raises(UserError, match="stray: not a class of data.classes"):
        make_pipeline(folder_cfg(root, "data.classes=imagenet", num_classes=1000))


def test_fixed_class_list_only_names_tfds_labels():
    import tensorflow_datasets as tfds

    cfg = config_lib.load(None, ["data.source=tfds", "data.tfds_name=imagenet2012",
                                 "data.num_classes=1000", "data.classes=imagenet",
                                 "data.image_size=32", "train.batch_size=2",
                                 "data.eval_split=validation"])
    with tfds.testing.mock_data(num_examples=4):
        assert make_pipeline(cfg).class_names[:3] == ["tench", "goldfish",
                                                      "great white shark"]
    with pytest.raises(config_lib.ConfigError, match="imagenet has 1000 classes"):
        config_lib.load(None, ["data.classes=imagenet", "data.source=folder",
                               "data.train_dir=x"])


@pytest.mark.slow
@pytest.mark.parametrize("good_eval_dir, what", [(False, "evaluation"), (True, "training")])
def test_data_that_never_decodes_is_one_line(tmp_path, good_eval_dir, what):
    from mnv3.training import run

    for name in ("cat", "dog"):
        os.makedirs(tmp_path / "imgs" / name)
        for i in range(8):
            (tmp_path / "imgs" / name / f"{i}.png").write_bytes(broken_png())
    extra = [f"data.eval_dir={make_folder(tmp_path / 'good')}"] if good_eval_dir else []
    cfg = folder_cfg(tmp_path / "imgs", "model.alpha=0.35", "train.epochs=1", *extra)
    with pytest.raises(UserError, match=f"no {what} images could be read"):
        run(cfg, str(tmp_path / "run"))
