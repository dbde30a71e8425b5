"""patchlab.metrics.digits: the cached digit classifier and the recognizability scores of digit images.

The classifier comes from the tests' shared cache (``PATCHLAB_CACHE``, set in tests/conftest.py): trained
there once (about 10 s) by whichever test process asks first, this module or the digits smoke study; the
tests of the cache's failure paths swap the training for that classifier, so they train nothing."""

import hashlib
import json
import math
import threading
import time
import warnings

import pytest
import torch

from patchlab.data import DigitsDataset
from patchlab.metrics import digits as D
from patchlab.metrics import uncertainty as U
from patchlab.metrics.seams import shuffle_patches
from patchlab.runtime import make_generator


@pytest.fixture(scope="module")
def trained():
    """(the tests' cache folder, the classifier trained into it or read from it)."""
    folder = D.cache_file().parent
    return folder, D.load_classifier(folder)


@pytest.fixture(scope="module")
def test_digits():
    data = DigitsDataset(image_size=32, channels=1, split="test")
    return data.images, data.labels


@pytest.fixture(scope="module")
def train_digits():
    """500 train digits (class-balanced): real digits that are not the held-out ones."""
    return DigitsDataset(image_size=32, channels=1, split="train", size=500).images


@pytest.fixture
def no_training(monkeypatch):
    """Training raises, and the classifiers kept in memory are forgotten: a load must read the file."""
    def refuse(**kwargs):
        raise AssertionError("the classifier was trained although a valid cache file exists")
    monkeypatch.setattr(D, "train_classifier", refuse)
    monkeypatch.setattr(D, "_LOADED", {})


@pytest.fixture
def fake_training(monkeypatch, trained):
    """Training returns the module's classifier at once; the list counts the calls."""
    calls = []

    def train(**kwargs):
        calls.append(kwargs)
        return trained[1]
    monkeypatch.setattr(D, "train_classifier", train)
    monkeypatch.setattr(D, "_LOADED", {})
    return calls


# --- the classifier and its cache -------------------------------------------------------------------


def test_classifier_is_accurate_and_cached(trained, test_digits):
    folder, classifier = trained
    assert classifier.accuracy >= D.MIN_ACCURACY
    assert D._accuracy(classifier.model, *test_digits) == classifier.accuracy
    assert classifier.recipe == D.RECIPE_HASH
    assert not classifier.model.training
    assert not any(p.requires_grad for p in classifier.model.parameters())
    path = folder / f"digit_classifier-{D.RECIPE_HASH}.pt"
    assert path.is_file() and D.cache_file(folder) == path
    assert not list(folder.glob("*.tmp"))  # the atomic write left no temporary file
    state = torch.load(path, weights_only=True)
    assert state["recipe"] == D.RECIPE_HASH and state["accuracy"] == classifier.accuracy
    # The recipe is stable: the hash is that of the recipe the file records, which is the module's.
    assert hashlib.sha256(state["recipe_spec"].encode()).hexdigest()[:12] == D.RECIPE_HASH
    assert json.loads(state["recipe_spec"]) == D.RECIPE
    assert D.load_classifier(folder) is classifier  # kept in memory


def test_second_load_reads_the_file(trained, test_digits, no_training):
    folder, classifier = trained
    loaded = D.load_classifier(folder)
    assert loaded is not classifier and loaded.accuracy == classifier.accuracy and loaded.recipe == D.RECIPE_HASH
    with torch.no_grad():
        assert torch.equal(loaded.model(test_digits[0]), classifier.model(test_digits[0]))


def test_default_cache_folder_from_environment(trained, monkeypatch, tmp_path):
    folder, classifier = trained
    monkeypatch.setenv(D.CACHE_ENV, str(folder))
    assert D.cache_file() == folder.resolve() / f"digit_classifier-{D.RECIPE_HASH}.pt"
    assert D.load_classifier() is classifier
    monkeypatch.delenv(D.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert D.cache_file() == tmp_path.resolve() / ".cache" / "patchlab" / f"digit_classifier-{D.RECIPE_HASH}.pt"


def test_training_is_deterministic_and_leaves_the_global_rng_alone(train_digits):
    # Two trainings of two epochs on 500 digits give the same weights (the full recipe runs the same code, over
    # more epochs and all 4,500 digits: a second full training, about 10 s, would repeat this check).
    labels = DigitsDataset(image_size=32, split="train", size=500).labels
    before = torch.get_rng_state()
    threads = torch.get_num_threads()
    first = D._train_epochs(train_digits, labels, epochs=2).state_dict()
    second = D._train_epochs(train_digits, labels, epochs=2).state_dict()
    assert torch.equal(torch.get_rng_state(), before)  # no global RNG draw (nor in building the model)
    assert torch.get_num_threads() == threads  # restored after training on one thread
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    with torch.inference_mode():  # a caller in inference mode does not change (or break) training
        third = D._train_epochs(train_digits, labels, epochs=2).state_dict()
    assert all(torch.equal(first[k], third[k]) for k in first)
    untrained = D.DigitClassifier(make_generator(D.derived_seed(D.RECIPE["seed"], D._INIT))).state_dict()
    assert not torch.equal(first["conv1.weight"], untrained["conv1.weight"])  # it did train


def _corrupt(path, how, good: bytes):
    if how == "garbage":
        path.write_bytes(b"this is not a torch file \x00\x01\x02" * 10)
    elif how == "truncated":
        path.write_bytes(good[:len(good) // 2])
    else:
        state = torch.load(path, weights_only=True)
        if how == "other_recipe":
            state["recipe"] = "0123456789ab"
        elif how == "wrong_shape":
            state["state_dict"]["fc1.weight"] = torch.zeros(3, 3)
        elif how == "missing_key":
            del state["state_dict"]["head.bias"]
        elif how == "low_accuracy":
            state["accuracy"] = 0.5
        torch.save(state, path)


@pytest.mark.parametrize("how", ["garbage", "truncated", "other_recipe", "wrong_shape", "missing_key", "low_accuracy"])
def test_untrusted_cache_file_warns_and_is_rebuilt(trained, test_digits, tmp_path, monkeypatch, how):
    folder, classifier = trained
    good = D.cache_file(folder).read_bytes()
    path = D.cache_file(tmp_path)
    path.write_bytes(good)
    _corrupt(path, how, good)
    calls = []
    monkeypatch.setattr(D, "train_classifier", lambda **kw: calls.append(kw) or classifier)
    monkeypatch.setattr(D, "_LOADED", {})
    with pytest.warns(D.DigitCacheWarning, match=path.name):
        rebuilt = D.load_classifier(tmp_path)
    assert len(calls) == 1 and rebuilt is classifier
    # The file was overwritten with a valid one: read back without training, and without a warning.
    monkeypatch.setattr(D, "train_classifier", lambda **kw: pytest.fail("trained again"))
    monkeypatch.setattr(D, "_LOADED", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = D.load_classifier(tmp_path)
    with torch.no_grad():
        assert torch.equal(again.model(test_digits[0][:50]), classifier.model(test_digits[0][:50]))


def test_processes_asking_at_once_train_once(trained, tmp_path, monkeypatch):
    # Two threads hold separate open files of the lock, so flock serialises them as it would two processes.
    calls = []

    def slow_train(**kwargs):
        calls.append(kwargs)
        time.sleep(0.5)
        return trained[1]
    monkeypatch.setattr(D, "train_classifier", slow_train)
    monkeypatch.setattr(D, "_LOADED", {})
    results = []

    def ask():
        results.append(D.load_classifier(tmp_path))
    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    assert (tmp_path / (D.cache_file(tmp_path).name + ".lock")).exists()


def test_a_classifier_below_the_required_accuracy_is_refused_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_train_epochs", lambda images, labels, **kw: D.DigitClassifier())  # untrained
    monkeypatch.setattr(D, "_LOADED", {})
    with pytest.raises(RuntimeError, match="below the required 0.97"):
        D.load_classifier(tmp_path)
    assert not D.cache_file(tmp_path).exists()


def test_shift_augmentation_moves_whole_digits():
    x = torch.full((3, 1, 32, 32), -1.0)
    x[:, :, 10:20, 12:18] = 1.0
    moved = D._shift(x, make_generator(0), 2)
    assert moved.shape == x.shape
    assert torch.equal((moved == 1).sum(dim=(1, 2, 3)), (x == 1).sum(dim=(1, 2, 3)))  # nothing cut off
    assert not torch.equal(moved, x)
    assert torch.equal(D._shift(x, make_generator(0), 2), moved)
    assert torch.equal(D._shift(x, make_generator(0), 0), x)


def test_inputs_of_other_sizes_and_channels(trained, test_digits):
    model = trained[1].model
    images = test_digits[0][:200]
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (200, 10) and model.features(images).shape == (200, D.FEATURES)
        assert torch.allclose(model(images.repeat(1, 3, 1, 1)), logits, atol=1e-4)  # RGB averaged
        bigger = torch.nn.functional.interpolate(images, size=64, mode="bilinear", align_corners=False)
        agree = (model(bigger).argmax(1) == logits.argmax(1)).float().mean()
    assert agree >= 0.95
    with pytest.raises(ValueError, match="C = 1 or 3"):
        model(images.repeat(1, 2, 1, 1))


# --- scores --------------------------------------------------------------------------------------


def test_real_digits_are_recognized(trained, test_digits):
    probs, feats = D.predictions(test_digits[0], trained[1], batch_size=128)
    assert probs.shape == (500, 10) and feats.shape == (500, D.FEATURES)
    assert torch.allclose(probs.sum(1), torch.ones(500), atol=1e-5)
    assert D.confident_share(probs) >= 0.85
    assert D.class_entropy(probs) > 2.2
    assert (probs.argmax(1) == test_digits[1]).float().mean() == pytest.approx(trained[1].accuracy)


def test_blank_images_are_not_confidently_a_digit(trained):
    probs, _ = D.predictions(torch.full((20, 1, 32, 32), -1.0), trained[1])
    # The same image 20 times: one predicted class, so no mode coverage; and no confident digit.
    assert D.class_entropy(probs) == 0.0
    assert D.confident_share(probs) == 0.0


@pytest.mark.parametrize("patches", [2, 4])
def test_patch_shuffled_digits_score_worse_than_real_ones(trained, test_digits, train_digits, patches):
    real = D.recognizability(train_digits, test_digits[0], trained[1])
    assert set(real) == {"confident_fake", "confident_real", "class_entropy_fake", "class_entropy_real",
                         "digit_fid", "digit_fid_real", "classifier_accuracy", "confident_fake_lo", "confident_fake_hi",
                         "confident_real_lo", "confident_real_hi", "class_entropy_fake_lo", "class_entropy_fake_hi",
                         "digit_fid_lo", "digit_fid_hi"}
    for key in ("confident_fake", "confident_real", "class_entropy_fake", "digit_fid"):
        assert real[f"{key}_lo"] <= real[key] <= real[f"{key}_hi"], key
    assert real["classifier_accuracy"] == trained[1].accuracy
    assert real["confident_fake"] >= 0.85 and real["confident_real"] >= 0.85
    assert real["class_entropy_fake"] > 2.2 and real["class_entropy_real"] > 2.2
    assert real["digit_fid"] < real["digit_fid_real"] * 1.5  # real vs real: the reference's size (250 vs 250)
    shuffled = shuffle_patches(train_digits, patches, generator=make_generator(1))  # 16 / 8 px patches
    fake = D.recognizability(shuffled, test_digits[0], trained[1])
    assert fake["confident_real"] == real["confident_real"] and fake["digit_fid_real"] == real["digit_fid_real"]
    assert fake["confident_fake"] < real["confident_fake"] - 0.25
    assert fake["digit_fid"] > 3 * real["digit_fid"] and fake["digit_fid"] > 2 * real["digit_fid_real"]
    # the differences lie beyond the 95% intervals: no tie
    assert fake["confident_fake_hi"] < real["confident_fake_lo"] and fake["digit_fid_lo"] > real["digit_fid_hi"]
    # a reference of the real set's size (other real digits) scores what two real sets of that size score
    same_size = D.recognizability(shuffled, test_digits[0], trained[1], reference=train_digits)
    assert same_size["digit_fid_real"] == pytest.approx(real["digit_fid"], rel=1e-5)
    assert same_size["digit_fid_real"] < real["digit_fid_real"]  # two halves: smaller sets, larger bias


def test_score_functions_on_known_values():
    onehot = torch.eye(10)
    assert D.class_entropy(onehot) == pytest.approx(math.log(10))
    assert D.class_entropy(onehot[[3, 3, 3]]) == 0.0
    assert D.class_entropy(onehot[[1, 2, 1, 2]]) == pytest.approx(math.log(2))
    resampled = U.resample(4, generator=make_generator(0), resamples=50)
    assert D.class_entropy_interval(onehot[[3, 3, 3, 3]], resampled) == U.Interval(0.0, 0.0)
    spread = D.class_entropy_interval(onehot[[1, 2, 1, 2]], resampled)
    assert spread.contains(math.log(2)) and spread.width > 0
    probs = torch.full((4, 10), 0.1 / 9)
    probs[torch.arange(4), 0] = torch.tensor([0.9, 0.95, 0.5, 0.89])
    assert D.confident_share(probs) == 0.5
    assert D.confident_share(probs, threshold=0.5) == 1.0


def test_frechet_distance(trained, test_digits):
    _, feats = D.predictions(test_digits[0], trained[1])
    assert D.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert D.frechet_distance(feats[:250], feats[250:]) > 0
    assert D.frechet_distance(feats + 1.0, feats) == pytest.approx(D.FEATURES, rel=1e-6)  # |mean shift|^2
    with pytest.raises(ValueError):
        D.frechet_distance(feats[:1], feats)
    with pytest.raises(ValueError):
        D.frechet_distance(feats, feats[:, :10])


def test_bad_inputs_raise(trained, test_digits):
    classifier, images = trained[1], test_digits[0][:8]
    with pytest.raises(ValueError, match="B x C x H x W"):
        D.predictions(images[:, 0], classifier)  # 3-D
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        D.predictions((images + 1) * 127.5, classifier)  # [0, 255]
    with pytest.raises(ValueError, match="NaN"):
        D.predictions(torch.full((2, 1, 32, 32), float("nan")), classifier)
    with pytest.raises(ValueError, match="at least 2"):
        D.recognizability(images[:1], images, classifier)
    with pytest.raises(ValueError, match="at least 4"):
        D.recognizability(images, images[:3], classifier)
    with pytest.raises(ValueError, match="n x 10"):
        D.confident_share(torch.rand(4, 3))
    with pytest.raises(ValueError, match="n x 10"):
        D.class_entropy(torch.rand(0, 10))
    with pytest.raises(ValueError, match="threshold"):
        D.confident_share(torch.eye(10), threshold=0)
    with pytest.raises(TypeError):
        D.predictions(images, "not a classifier")
