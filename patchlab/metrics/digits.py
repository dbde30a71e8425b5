"""Recognizability of generated digits: a small MNIST classifier, trained deterministically and cached,
and the scores computed with it.

What it measures, and why. A patch model draws a 32 x 32 digit as 2 x 2 or 4 x 4 patches. Each patch
alone can look like a plausible piece of stroke; the digit is only right when the strokes *meet* across
the patch borders and all patches agree on one digit. Pixel-level metrics (seam score, SWD) see the
borders but not the digit. A classifier does: patches that agreed on one digit give an image the
classifier reads confidently as that digit, patches that disagree (half a 3 next to half a 7) give an
unsure prediction. On generated images ``[n x C x H x W]`` in [-1, 1] (white strokes on a -1 background,
as :class:`patchlab.data.DigitsDataset` gives them) :func:`recognizability` reports

- ``confident_fake`` / ``confident_real``: :func:`confident_share`, the share of images whose top class
  has probability >= 0.9 (real held-out digits: about 0.95 or more);
- ``class_entropy_fake`` / ``class_entropy_real``: :func:`class_entropy`, the entropy of the histogram of
  predicted classes: log(10) ~= 2.303 when all ten digits are equally frequent, 0 when every image is
  read as the same digit (mode coverage);
- ``digit_fid``: :func:`frechet_distance` between the classifier's penultimate features of the fake and
  the real images (the "FID" of the MNIST papers, on this classifier: values are comparable only between
  evaluations with the same classifier recipe and set sizes), and ``digit_fid_real``, the same between
  a second real set of the same size (``reference``, e.g. training digits) and the real images: what two
  real sets score at that size. The Fréchet distance is biased upward for small sets, so the reference
  must be of the fake set's size (500 train against the 500 held-out digits: about 11; two sets of 250:
  about 26), while 500 digits reassembled from 2 x 2 patches of different digits score well above 100;
- ``classifier_accuracy``: the classifier's accuracy on the 500 held-out test digits;
- the 95% intervals (``key_lo``, ``key_hi``; :mod:`patchlab.metrics.uncertainty`) of both confident shares
  (Wilson), of ``class_entropy_fake`` (bootstrap) and of ``digit_fid`` (half-samples).

The classifier (:class:`DigitClassifier`), LeNet-5 style with ReLU and max pooling, a little wider than
the original: conv 5 x 5 (1 -> 16), pool 2, conv 5 x 5 (16 -> 32), pool 2, fully connected 800 -> 128 ->
84 -> 10 (127 k weights); its features are the 84 penultimate activations (after the ReLU). Other image
sizes are resized to 32 x 32 (antialiased bilinear) and RGB is averaged to one channel.

Recipe (:data:`RECIPE`, identified by the hash :data:`RECIPE_HASH`): the 4,500 train digits of
:class:`patchlab.data.DigitsDataset` at 32 px; He-uniform weights, zero biases; the order of each epoch
and a random shift of each image by -2 .. 2 pixels in each direction (augmentation), each drawn from its
own explicit generator seeded by :func:`patchlab.runtime.derived_seed` from ``RECIPE["seed"]`` (no global
RNG); Adam, learning rate 2e-3 with a cosine decay to 0, 12 epochs of batches of 64; on one CPU thread,
so that the weights do not depend on the caller's thread count (bit-identical for the same machine and
PyTorch). About 10 s on one busy CPU core, about 98 % accuracy on the 500 held-out test digits, which
must reach :data:`MIN_ACCURACY` (0.97): a model below that raises ``RuntimeError`` and is never cached.

Cache. :func:`load_classifier` trains once and keeps the weights in
``<cache_dir>/digit_classifier-<RECIPE_HASH>.pt``, ``cache_dir`` being its argument, else the environment
variable ``PATCHLAB_CACHE``, else ``~/.cache/patchlab``. The file (the state dict, the held-out accuracy
and the recipe; read with ``torch.load(weights_only=True)``) is written atomically, under a file lock
(``<file>.lock``) so that processes asking at once train once. A file that cannot be read or does not fit
(other keys, shapes or recipe) is not trusted: a :class:`DigitCacheWarning` names it and the classifier is
retrained over it. Loaded classifiers are also kept in memory per cache file.
"""

import contextlib
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..runtime import derived_seed, make_generator
from .fid_kid import fid_from_features, fid_interval
from .images import check_images
from .uncertainty import LEVEL, Interval, Resamples, as_columns, bootstrap, share_interval

SIZE = 32  # the classifier's input: [B x 1 x 32 x 32]
FEATURES = 84  # F: penultimate activations
CLASSES = 10
MIN_ACCURACY = 0.97  # on the 500 held-out test digits
CACHE_ENV = "PATCHLAB_CACHE"
FORMAT = "patchlab-digit-classifier-1"
RANGE_TOLERANCE = 0.5  # images may leave [-1, 1] by this much (unclamped samples), not more

# Everything that decides the weights. Change "version" when the code that trains changes.
RECIPE = {
    "version": 1,
    "architecture": "lenet5-relu-maxpool c16-c32-f128-f84",
    "data": "DigitsDataset train 4500 @32 px, 1 channel",
    "init": "he-uniform (lecun-uniform output layer), zero bias",
    "augment_shift": 2,
    "epochs": 12,
    "batch_size": 64,
    "optimizer": "adam",
    "lr": 2e-3,
    "lr_schedule": "cosine to 0 over the steps",
    "seed": 0,
    "threads": 1,
}
RECIPE_HASH = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]

_INIT, _ORDER, _SHIFT = 1, 2, 3  # streams: derived_seed(RECIPE["seed"], stream[, epoch])


class DigitCacheWarning(UserWarning):
    """A cached classifier file that could not be trusted (it is retrained and overwritten), or could not
    be written."""


# --- the classifier -----------------------------------------------------------------------------


class DigitClassifier(nn.Module):
    """LeNet-5 style CNN (ReLU, max pooling; conv 16, conv 32, fc 128, fc 84) on digits [B x C x H x W] in
    [-1, 1], C = 1 or 3.

    ``forward(x)`` -> logits [B x 10]; ``features(x)`` -> penultimate activations [B x 84];
    ``logits_and_features(x)`` -> both from one pass. Inputs go through :meth:`_prepare` first.
    Built without touching the global RNG: the weights are initialised from ``generator`` (default: a
    generator seeded with 0).
    """

    def __init__(self, generator: torch.Generator | None = None):
        super().__init__()
        with torch.device("meta"):  # no default initialisation, so no global RNG draws
            self.conv1 = nn.Conv2d(1, 16, 5)  # 32 -> 28, pool -> 14
            self.conv2 = nn.Conv2d(16, 32, 5)  # 14 -> 10, pool -> 5
            self.fc1 = nn.Linear(32 * 5 * 5, 128)
            self.fc2 = nn.Linear(128, FEATURES)
            self.head = nn.Linear(FEATURES, CLASSES)
        self.to_empty(device="cpu")
        self.reset_parameters(generator if generator is not None else make_generator(0))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """He-uniform weights (LeCun-uniform for the output layer, which has no ReLU) and zero biases, drawn
        from ``generator``."""
        for layer in (self.conv1, self.conv2, self.fc1, self.fc2, self.head):
            fan_in = layer.weight[0].numel()
            bound = math.sqrt(6.0 / fan_in) if layer is not self.head else math.sqrt(3.0 / fan_in)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.zero_()

    @staticmethod
    def _prepare(x: torch.Tensor) -> torch.Tensor:
        """[B x C x H x W] (C = 1 or 3) -> [B x 1 x 32 x 32] float: RGB averaged to one channel, other
        sizes resized with antialiased bilinear interpolation."""
        x = check_images(x, "digit images", cpu=False).float()
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        return x

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B x 10], features [B x 84]) of images [B x C x H x W]."""
        x = self._prepare(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        feats = F.relu(self.fc2(x))
        return self.head(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B x 10] of images [B x C x H x W]."""
        return self.logits_and_features(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [B x 84] of images [B x C x H x W]."""
        return self.logits_and_features(x)[1]


@dataclass(frozen=True)
class TrainedClassifier:
    """A trained :class:`DigitClassifier` (eval mode, on the CPU, parameters frozen), its accuracy on the
    500 held-out test digits, and the hash of the recipe that trained it (:data:`RECIPE_HASH`)."""

    model: DigitClassifier
    accuracy: float
    recipe: str


# --- deterministic training ---------------------------------------------------------------------


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Each image of ``x`` [B x 1 x S x S] moved by its own (dy, dx) in -max_shift .. max_shift, the
    uncovered border filled with background (-1)."""
    if max_shift == 0:
        return x
    batch, _, size, _ = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator)
    grid = torch.arange(size)
    rows = (offsets[0][:, None] + grid)[:, :, None]  # [B x S x 1]
    cols = (offsets[1][:, None] + grid)[:, None, :]  # [B x 1 x S]
    return padded[torch.arange(batch)[:, None, None], 0, rows, cols][:, None]


def _train_epochs(images: torch.Tensor, labels: torch.Tensor, *, epochs: int | None = None,
                  progress: bool = False) -> DigitClassifier:
    """Train a fresh :class:`DigitClassifier` by :data:`RECIPE` on ``images`` [n x 1 x 32 x 32] and
    ``labels`` [n] for ``epochs`` (default: the recipe's) epochs; the learning-rate schedule is the
    recipe's whatever ``epochs`` is, so the first epochs of a shorter run equal a full run's."""
    r = RECIPE
    total = r["epochs"] if epochs is None else epochs
    steps_per_epoch = math.ceil(images.shape[0] / r["batch_size"])
    schedule_steps = r["epochs"] * steps_per_epoch
    with _threads(r["threads"]), torch.inference_mode(False), torch.enable_grad():
        model = DigitClassifier(make_generator(derived_seed(r["seed"], _INIT)))
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=r["lr"])
        step = 0
        for epoch in tqdm(range(total), desc="training the digit classifier", unit="epoch", disable=not progress):
            order = torch.randperm(images.shape[0], generator=make_generator(derived_seed(r["seed"], _ORDER, epoch)))
            shifts = make_generator(derived_seed(r["seed"], _SHIFT, epoch))
            for batch in order.split(r["batch_size"]):
                for group in optimizer.param_groups:
                    group["lr"] = r["lr"] * 0.5 * (1 + math.cos(math.pi * step / schedule_steps))
                x = _shift(images[batch], shifts, r["augment_shift"])
                loss = F.cross_entropy(model(x), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
    model.eval()
    return model


def _accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predicted = torch.cat([model(x).argmax(1) for x in images.split(500)])
    return float((predicted == labels).float().mean())


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import DigitsDataset

    data = DigitsDataset(image_size=SIZE, channels=1, split=split)
    return data.images, data.labels


def train_classifier(*, progress: bool = False) -> TrainedClassifier:
    """Train a :class:`DigitClassifier` by :data:`RECIPE` (no cache) and measure its held-out accuracy.
    Raises ``RuntimeError`` when that is below :data:`MIN_ACCURACY`."""
    model = _train_epochs(*_digits("train"), progress=progress)
    accuracy = _accuracy(model, *_digits("test"))
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"the digit classifier (recipe {RECIPE_HASH}) reached only {accuracy:.4f} accuracy on the "
                           f"500 held-out digits, below the required {MIN_ACCURACY}; it is not used or cached (a "
                           f"different PyTorch or data file?)")
    return _frozen(model, accuracy)


def _frozen(model: DigitClassifier, accuracy: float) -> TrainedClassifier:
    model.eval().requires_grad_(False)
    return TrainedClassifier(model=model, accuracy=float(accuracy), recipe=RECIPE_HASH)


# --- the cache ----------------------------------------------------------------------------------


_LOADED: dict[Path, TrainedClassifier] = {}  # cache file -> classifier, for repeated calls in one process


def cache_file(cache_dir=None) -> Path:
    """Where :func:`load_classifier` keeps the classifier: ``<cache_dir>/digit_classifier-<RECIPE_HASH>.pt``,
    ``cache_dir`` defaulting to ``$PATCHLAB_CACHE``, else ``~/.cache/patchlab``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "patchlab"
    return Path(cache_dir).expanduser().resolve() / f"digit_classifier-{RECIPE_HASH}.pt"


def load_classifier(cache_dir=None, *, progress: bool = False) -> TrainedClassifier:
    """The digit classifier: from memory, else from its cache file (:func:`cache_file`), else trained
    (a few seconds; ``progress`` shows a bar over the epochs) and written there.

    A cache file that cannot be read or does not fit the recipe is retrained over, with a
    :class:`DigitCacheWarning` naming it; a folder that cannot be written to gives the trained classifier
    with such a warning. Processes asking at once train once (a file lock). Raises ``RuntimeError`` when
    training reaches less than :data:`MIN_ACCURACY` on the held-out digits.
    """
    path = cache_file(cache_dir)
    if path in _LOADED:
        return _LOADED[path]
    with _locked(path):
        found = _read(path) if path.exists() else None
        if found is None:
            found = train_classifier(progress=progress)
            _write(path, found)
    _LOADED[path] = found
    return found


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive ``flock`` on ``<path>.lock`` (no lock where that is impossible: a read-only folder,
    a system without ``fcntl``)."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    handle = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a+")
    except OSError:
        pass
    try:
        if handle is not None and fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)  # blocks while another process trains
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _read(path: Path) -> TrainedClassifier | None:
    """The classifier in ``path``, or None (with a warning) when the file cannot be trusted."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        problem = _problem(state)
        if problem is None:
            model = DigitClassifier()
            model.load_state_dict(state["state_dict"], strict=True)
            return _frozen(model, state["accuracy"])
    except Exception as exc:  # unreadable, truncated, not a torch file, weights that do not fit ...
        lines = str(exc).strip().splitlines()
        problem = f"it cannot be read ({type(exc).__name__}{': ' + lines[0] if lines else ''})"
    warnings.warn(f"ignoring the cached digit classifier {path}: {problem}; retraining it and overwriting the file",
                  DigitCacheWarning, stacklevel=3)
    return None


def _problem(state) -> str | None:
    """Why a loaded cache file is not this recipe's classifier, or None."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return f"it is not a digit classifier file (format {FORMAT!r} expected)"
    missing = [k for k in ("recipe", "accuracy", "state_dict") if k not in state]
    if missing:
        return f"it lacks {missing}"
    if state["recipe"] != RECIPE_HASH:
        return f"it was trained by recipe {state['recipe']!r}, not {RECIPE_HASH!r}"
    accuracy = state["accuracy"]
    if not isinstance(accuracy, float) or not MIN_ACCURACY <= accuracy <= 1.0:
        return f"its accuracy {accuracy!r} is not a number in [{MIN_ACCURACY}, 1]"
    weights, expected = state["state_dict"], DigitClassifier().state_dict()
    if not isinstance(weights, dict) or set(weights) != set(expected):
        return "its weights are not those of this classifier (other keys)"
    for name, tensor in expected.items():
        value = weights[name]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape or not value.is_floating_point():
            return f"its weight {name!r} does not fit (shape {getattr(value, 'shape', None)}, expected {tensor.shape})"
        if not torch.isfinite(value).all():
            return f"its weight {name!r} is not finite"
    return None


def _write(path: Path, found: TrainedClassifier) -> None:
    from ..checkpoint import CheckpointError, atomic_torch_save

    state = {"format": FORMAT, "recipe": found.recipe, "recipe_spec": json.dumps(RECIPE, sort_keys=True),
             "accuracy": found.accuracy, "state_dict": found.model.state_dict()}
    try:
        atomic_torch_save(state, path)
    except CheckpointError as exc:
        warnings.warn(f"the digit classifier is not cached: {exc}", DigitCacheWarning, stacklevel=3)


# --- scores -------------------------------------------------------------------------------------


def _check_images(images: torch.Tensor, what: str = "images", minimum: int = 1) -> torch.Tensor:
    """``images`` [n x C x H x W], C = 1 or 3 (:func:`patchlab.metrics.images.check_images`), values in about
    [-1, 1], n >= minimum -> float on the CPU."""
    x = check_images(images, what)
    if x.shape[0] < minimum:
        raise ValueError(f"{what}: at least {minimum} image(s) needed, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"{what} must be in [-1, 1] (white strokes on a -1 background), got values in "
                         f"[{low:.3g}, {high:.3g}]; rescale images in [0, 1] or [0, 255] first")
    return x


def _model(classifier) -> DigitClassifier:
    if isinstance(classifier, TrainedClassifier):
        return classifier.model
    if isinstance(classifier, DigitClassifier):
        return classifier
    raise TypeError(f"classifier must be a TrainedClassifier (load_classifier()) or a DigitClassifier, "
                    f"got {type(classifier).__name__}")


def predictions(images: torch.Tensor, classifier, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities [n x 10], features [n x 84]) of ``images`` [n x C x H x W] in [-1, 1] (C = 1 or 3,
    any size: resized to 32 x 32), on the CPU, float32. ``classifier``: a :class:`TrainedClassifier` or a
    :class:`DigitClassifier`."""
    x = _check_images(images)
    model = _model(classifier)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    probs, feats = [], []
    with torch.no_grad():
        for chunk in x.split(batch_size):
            logits, f = model.logits_and_features(chunk)
            probs.append(logits.softmax(dim=1))
            feats.append(f)
    return torch.cat(probs), torch.cat(feats)


def _check_probs(probs: torch.Tensor) -> torch.Tensor:
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] != CLASSES:
        shape = list(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must be class probabilities [n x {CLASSES}] with n >= 1, got {shape}")
    return probs.detach().float().cpu()


def confident(probs: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """Which images' top class probability is >= ``threshold``: ``probs`` [n x 10] -> bool [n]."""
    p = _check_probs(probs)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return p.max(dim=1).values >= threshold


def confident_share(probs: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of images whose top class probability is >= ``threshold``; ``probs`` [n x 10] -> float in [0, 1]."""
    return float(confident(probs, threshold).float().mean())


def class_entropy(probs: torch.Tensor) -> float:
    """Entropy (natural log) of the histogram of predicted classes (argmax) of ``probs`` [n x 10]: log(10)
    ~= 2.303 when the ten digits are predicted equally often, 0 when every image is predicted the same."""
    return _entropy(_check_probs(probs).argmax(dim=1))


def _entropy(classes: torch.Tensor) -> float:
    """Entropy of the histogram of ``classes`` [n] (ints in 0 .. 9)."""
    share = torch.bincount(classes, minlength=CLASSES).double() / classes.shape[0]
    share = share[share > 0]
    return max(0.0, float(-(share * share.log()).sum()))  # 0.0, not -0.0, for a single class


def class_entropy_interval(probs: torch.Tensor, indices: torch.Tensor, *, level: float = LEVEL) -> Interval:
    """The bootstrap interval of :func:`class_entropy` over the image index sets ``indices`` [R x n]
    (:func:`patchlab.metrics.uncertainty.resample`), re-centred on the entropy of all images."""
    classes = _check_probs(probs).argmax(dim=1)
    return bootstrap(lambda idx: _entropy(classes[idx]), indices, level=level, estimate=_entropy(classes))


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features [n x F] and [m x F] (n, m >= 2), as
    :func:`patchlab.metrics.fid_from_features` computes it (symmetric; biased upward for small sets)."""
    return fid_from_features(feats_a, feats_b)


def recognizability(fake: torch.Tensor, real: torch.Tensor, classifier: TrainedClassifier | None = None,
                    *, reference: torch.Tensor | None = None, threshold: float = 0.9, batch_size: int = 256,
                    resamples: Resamples | None = None, level: float = LEVEL) -> dict[str, float]:
    """The recognizability scores of ``fake`` [n x C x H x W] against ``real`` [m x C x H x W] digits in
    [-1, 1] (n >= 2, m >= 4; sizes may differ, both are resized to 32 x 32). ``classifier`` defaults to
    :func:`load_classifier` ``()``.

    Returns ``confident_fake``, ``confident_real`` (:func:`confident_share` at ``threshold``),
    ``class_entropy_fake``, ``class_entropy_real`` (:func:`class_entropy`), ``digit_fid`` (fake against
    real features), ``digit_fid_real`` (``reference`` [k x C x H x W], other real digits, against ``real``:
    what two real sets score; without a reference the first ``m // 2`` real images against the others, two
    sets of half the size, class-balanced when ``real`` is in :class:`patchlab.data.DigitsDataset`'s
    round-robin order) and ``classifier_accuracy``.

    And their ``level`` intervals (:mod:`patchlab.metrics.uncertainty`; ``key_lo``, ``key_hi``): the Wilson
    interval of both confident shares, and over the fake images' index sets ``resamples`` (default: drawn
    from a generator seeded with 0) the bootstrap interval of ``class_entropy_fake`` and the half-sample
    interval of ``digit_fid`` (None for fewer than 4 fake images).
    """
    fake = _check_images(fake, "fake", minimum=2)
    real = _check_images(real, "real", minimum=4)
    trained = classifier if classifier is not None else load_classifier()
    if not isinstance(trained, TrainedClassifier):
        raise TypeError(f"classifier must be a TrainedClassifier (load_classifier()), got {type(trained).__name__}")
    probs_fake, feats_fake = predictions(fake, trained, batch_size)
    probs_real, feats_real = predictions(real, trained, batch_size)
    if reference is not None:
        _, feats_ref = predictions(_check_images(reference, "reference", minimum=2), trained, batch_size)
        real_vs_real = frechet_distance(feats_ref, feats_real)
    else:
        half = real.shape[0] // 2
        real_vs_real = frechet_distance(feats_real[:half], feats_real[half:])
    if resamples is None:
        resamples = Resamples.draw(len(fake), generator=make_generator(0))
    elif resamples.n != len(fake):
        raise ValueError(f"resamples index sets of {resamples.n} samples, not of the {len(fake)} fake images")
    passed_fake, passed_real = confident(probs_fake, threshold), confident(probs_real, threshold)
    fid_interval_ = fid_interval(feats_real, feats_fake, resamples.halves, level=level) \
        if resamples.halves is not None else None
    return {
        "confident_fake": float(passed_fake.float().mean()),
        **share_interval(passed_fake, level=level).as_columns("confident_fake"),
        "confident_real": float(passed_real.float().mean()),
        **share_interval(passed_real, level=level).as_columns("confident_real"),
        "class_entropy_fake": class_entropy(probs_fake),
        **class_entropy_interval(probs_fake, resamples.bootstrap, level=level).as_columns("class_entropy_fake"),
        "class_entropy_real": class_entropy(probs_real),
        "digit_fid": frechet_distance(feats_fake, feats_real),
        **as_columns("digit_fid", fid_interval_),
        "digit_fid_real": real_vs_real,
        "classifier_accuracy": trained.accuracy,
    }
