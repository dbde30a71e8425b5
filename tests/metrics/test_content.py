"""patchlab.metrics.content: one score object per dataset, and the columns evaluation, curves and tables take."""

import torch

from patchlab.data import ShapesDataset
from patchlab.metrics import content as K
from patchlab.metrics.curves import fields
from patchlab.metrics.shape_coherence import coherence


def test_each_dataset_has_its_score_and_the_others_none():
    assert isinstance(K.for_dataset("shapes"), K.Coherence)
    assert isinstance(K.for_dataset("digits"), K.Recognizability)
    for name in ("faces", "celeba", "lsun_bedroom", "folder", "nosuch"):
        assert K.for_dataset(name) is K.NO_CONTENT and K.NO_CONTENT.primary is None
        assert K.NO_CONTENT.score(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), 2) == {}
    assert K.for_dataset("shapes").result_keys() == ("coherence_fake", "coherence_real")
    assert K.for_dataset("digits").primary.key == "confident"
    assert K.ALL_COLUMNS == ("coherence", "confident", "class_entropy", "digit_fid")


def test_coherence_scores_as_before_and_not_on_gray_shapes():
    real = torch.stack([ShapesDataset(image_size=16, seed=0)[i] for i in range(6)])
    fake = torch.stack([ShapesDataset(image_size=16, seed=1)[i] for i in range(6)]).flip(-1).roll(5, dims=-2)
    got = K.Coherence().score(fake, real, 2)
    assert got == {"coherence_fake": coherence(fake, 2), "coherence_real": coherence(real, 2)}
    assert got["coherence_real"] == 1.0
    gray = K.Coherence().score(fake[:, :1], real[:, :1], 2)
    assert gray == {"coherence_fake": None, "coherence_real": None}


def test_recognizability_maps_the_digit_scores_to_its_columns(monkeypatch):
    import patchlab.metrics.digits as D

    seen = {}

    def fake_scores(fake, real, classifier, *, reference):
        seen["args"] = (fake.shape, real.shape, classifier, reference.shape)
        return {"confident_fake": 0.5, "confident_real": 0.9, "class_entropy_fake": 2.0, "class_entropy_real": 2.3,
                "digit_fid": 12.0, "digit_fid_real": 3.0, "classifier_accuracy": 0.98}

    monkeypatch.setattr(D, "load_classifier", lambda *a, **k: "the classifier")
    monkeypatch.setattr(D, "recognizability", fake_scores)
    got = K.Recognizability().score(torch.zeros(4, 1, 16, 16), torch.zeros(5, 1, 16, 16), 2)
    assert list(got) == list(K.Recognizability().result_keys())
    assert got["digit_fid_fake"] == 12.0 and got["digit_classifier_accuracy"] == 0.98
    assert seen["args"] == ((4, 1, 16, 16), (5, 1, 16, 16), "the classifier", (5, 1, 16, 16))  # training digits
    metrics = {"dataset": "digits", **got}
    assert K.values(metrics) == {"confident": 0.5, "class_entropy": 2.0, "digit_fid": 12.0}
    assert K.values(metrics, references=True) == {"confident": 0.5, "confident real": 0.9, "class_entropy": 2.0,
                                                  "class_entropy real": 2.3, "digit_fid": 12.0, "digit_fid real": 3.0}
    shapes = {"dataset": "shapes", "coherence_fake": 0.25, "coherence_real": 1.0}
    assert K.values(shapes, references=True) == {"coherence": 0.25}  # real shapes are all coherent: no column
    assert K.columns(shapes)[0].key == "coherence" and K.columns({"dataset": "faces"}) == ()


def test_learning_curve_columns_follow_the_dataset():
    assert fields("shapes") == ("step", "seam", "seam_real", "kid", "kid_stderr", "swd", "coherence", "mean",
                                "mean_real", "seconds")  # the columns of every committed shapes curve
    assert fields("digits")[6:9] == ("confident", "class_entropy", "digit_fid")
    assert "coherence" not in fields("faces") and "confident" not in fields("faces")
