"""patchlab.metrics.content: one score object per dataset, and the columns evaluation, curves and tables take."""

import torch

from patchlab.data import ShapesDataset
from patchlab.metrics import content as K
from patchlab.metrics import uncertainty as U
from patchlab.metrics.curves import fields
from patchlab.metrics.shape_coherence import coherence


def test_each_dataset_has_its_score_and_the_others_none():
    assert isinstance(K.for_dataset("shapes"), K.Coherence)
    assert isinstance(K.for_dataset("digits"), K.Recognizability)
    for name in ("faces", "celeba", "lsun_bedroom", "folder", "nosuch"):
        assert K.for_dataset(name) is K.NO_CONTENT and K.NO_CONTENT.primary is None
        assert K.NO_CONTENT.score(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), 2) == {}
    assert K.for_dataset("shapes").result_keys() == ("coherence_fake", "coherence_fake_lo", "coherence_fake_hi",
                                                     "coherence_real", "coherence_real_lo", "coherence_real_hi")
    assert K.for_dataset("digits").primary.key == "confident"
    assert K.ALL_COLUMNS == ("coherence", "confident", "class_entropy", "digit_fid")


def test_coherence_scores_as_before_and_not_on_gray_shapes():
    real = torch.stack([ShapesDataset(image_size=16, seed=0)[i] for i in range(6)])
    fake = torch.stack([ShapesDataset(image_size=16, seed=1)[i] for i in range(6)]).flip(-1).roll(5, dims=-2)
    got = K.Coherence().score(fake, real, 2)
    assert list(got) == list(K.Coherence().result_keys())
    assert got["coherence_fake"] == coherence(fake, 2) and got["coherence_real"] == coherence(real, 2) == 1.0
    # a share: the Wilson interval of the coherent images
    share = U.wilson(round(got["coherence_fake"] * 6), 6)
    assert (got["coherence_fake_lo"], got["coherence_fake_hi"]) == (share.low, share.high)
    assert got["coherence_real_hi"] == 1.0 and got["coherence_real_lo"] == U.wilson(6, 6).low
    gray = K.Coherence().score(fake[:, :1], real[:, :1], 2)
    assert gray == dict.fromkeys(K.Coherence().result_keys())


def test_recognizability_maps_the_digit_scores_to_its_columns(monkeypatch):
    import patchlab.metrics.digits as D

    seen = {}

    def fake_scores(fake, real, classifier, *, reference, resamples):
        seen["args"] = (fake.shape, real.shape, classifier, reference.shape, resamples)
        return {"confident_fake": 0.5, "confident_fake_lo": 0.4, "confident_fake_hi": 0.6, "confident_real": 0.9,
                "confident_real_lo": 0.85, "confident_real_hi": 0.95, "class_entropy_fake": 2.0,
                "class_entropy_fake_lo": 1.9, "class_entropy_fake_hi": 2.1, "class_entropy_real": 2.3,
                "digit_fid": 12.0, "digit_fid_lo": 10.0, "digit_fid_hi": 14.0, "digit_fid_real": 3.0,
                "classifier_accuracy": 0.98}

    monkeypatch.setattr(D, "load_classifier", lambda *a, **k: "the classifier")
    monkeypatch.setattr(D, "recognizability", fake_scores)
    got = K.Recognizability().score(torch.zeros(4, 1, 16, 16), torch.zeros(5, 1, 16, 16), 2, resamples="sets")
    assert list(got) == list(K.Recognizability().result_keys())
    assert got["digit_fid_fake"] == 12.0 and got["digit_classifier_accuracy"] == 0.98
    assert (got["digit_fid_fake_lo"], got["digit_fid_fake_hi"]) == (10.0, 14.0)
    assert seen["args"] == ((4, 1, 16, 16), (5, 1, 16, 16), "the classifier", (5, 1, 16, 16), "sets")
    metrics = {"dataset": "digits", **got}
    assert K.values(metrics) == {"confident": 0.5, "class_entropy": 2.0, "digit_fid": 12.0}
    assert K.values(metrics, intervals=True) == {
        "confident": 0.5, "confident_lo": 0.4, "confident_hi": 0.6, "class_entropy": 2.0, "class_entropy_lo": 1.9,
        "class_entropy_hi": 2.1, "digit_fid": 12.0, "digit_fid_lo": 10.0, "digit_fid_hi": 14.0}
    old = {k: v for k, v in metrics.items() if not k.endswith(("_lo", "_hi"))}  # written before intervals
    assert K.values(old, intervals=True) == K.values(old)
    assert K.values(metrics, references=True) == {"confident": 0.5, "confident real": 0.9, "class_entropy": 2.0,
                                                  "class_entropy real": 2.3, "digit_fid": 12.0, "digit_fid real": 3.0}
    shapes = {"dataset": "shapes", "coherence_fake": 0.25, "coherence_real": 1.0}
    assert K.values(shapes, references=True) == {"coherence": 0.25}  # real shapes are all coherent: no column
    assert K.columns(shapes)[0].key == "coherence" and K.columns({"dataset": "faces"}) == ()


def test_learning_curve_columns_follow_the_dataset():
    assert fields("shapes") == ("step", "seam", "seam_lo", "seam_hi", "seam_real", "kid", "kid_stderr", "kid_lo",
                                "kid_hi", "swd", "swd_lo", "swd_hi", "coherence", "coherence_lo", "coherence_hi",
                                "mean", "mean_real", "seconds")
    assert [f for f in fields("digits") if not f.endswith(("_lo", "_hi"))][6:9] == \
        ["confident", "class_entropy", "digit_fid"]
    assert "coherence" not in fields("faces") and "confident" not in fields("faces")
