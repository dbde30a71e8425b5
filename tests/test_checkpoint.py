import os

import pytest
import torch

import patchlab
from patchlab import checkpoint as ckpt
from patchlab.config import from_params
from patchlab.training import EMA, train
from tiny import tiny_params


def _parts(cfg):
    model, _ = patchlab.build(cfg)
    return model, EMA(model, 0.9), torch.optim.Adam(model.parameters())


def test_save_load_round_trip(tmp_path):
    cfg = from_params(**tiny_params())
    model, ema, opt = _parts(cfg)
    path = ckpt.save(tmp_path / "c.pt", step=7, config=cfg, model=model, ema=ema.model, optimizer=opt)
    state = ckpt.load(path)
    assert state["step"] == 7 and state["config"] == cfg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state["model"].items())
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed away


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    cfg = from_params(**tiny_params())
    model, ema, opt = _parts(cfg)
    path = ckpt.save(tmp_path / "c.pt", step=1, config=cfg, model=model, ema=ema.model, optimizer=opt)
    state = torch.load(path, weights_only=True)  # raises if anything else were inside

    def leaves(x):
        if isinstance(x, dict):
            for k, v in x.items():
                assert isinstance(k, (str, int)), k
                yield from leaves(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from leaves(v)
        else:
            yield x

    kinds = {type(v) for v in leaves(state)}
    assert kinds <= {torch.Tensor, str, int, float, bool, type(None)}, kinds
    assert set(state) == set(ckpt.KEYS) and state["format"] == ckpt.FORMAT


def test_interrupted_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    cfg = from_params(**tiny_params())
    model, ema, opt = _parts(cfg)
    path = ckpt.save(tmp_path / "c.pt", step=1, config=cfg, model=model, ema=ema.model, optimizer=opt)
    before = path.read_bytes()

    def crash(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(path, step=2, config=cfg, model=model, ema=ema.model, optimizer=opt)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_checkpoint_mode_follows_the_umask(tmp_path):
    cfg = from_params(**tiny_params())
    model, ema, opt = _parts(cfg)
    mask = os.umask(0o022)
    try:
        path = ckpt.save(tmp_path / "c.pt", step=1, config=cfg, model=model, ema=ema.model, optimizer=opt)
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


@pytest.mark.parametrize("content,match", [(b"", "not a readable"), (b"garbage" * 10, "not a readable")])
def test_corrupt_files_give_clear_errors(tmp_path, content, match):
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load(path)


def test_truncated_checkpoint(tmp_path):
    cfg = from_params(**tiny_params())
    model, ema, opt = _parts(cfg)
    path = ckpt.save(tmp_path / "c.pt", step=1, config=cfg, model=model, ema=ema.model, optimizer=opt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load(path)


def test_foreign_and_incomplete_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "a.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a patchlab checkpoint"):
        ckpt.load(tmp_path / "a.pt")
    torch.save({"format": ckpt.FORMAT, "step": 1}, tmp_path / "b.pt")
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.load(tmp_path / "b.pt")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load(tmp_path / "missing.pt")


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": ckpt.FORMAT, "evil": Evil()}, tmp_path / "e.pt")
    with pytest.raises(ckpt.CheckpointError, match="could run arbitrary code") as info:
        ckpt.load(tmp_path / "e.pt")
    message = str(info.value)
    assert "weights_only" not in message and "trust" not in message  # no advice to turn the protection off
    with pytest.raises(ckpt.CheckpointError):
        ckpt.read_step(tmp_path / "e.pt")


def test_mismatched_weights_name_the_file(tmp_path):
    cfg = from_params(**tiny_params())
    other, _ = patchlab.build(from_params(**tiny_params(dim=32)))
    with pytest.raises(ckpt.CheckpointError, match="do not fit"):
        ckpt.load_weights(other, patchlab.build(cfg)[0].state_dict(), what="model", path="x.pt")


def test_resume_from_checkpoint_with_foreign_weights_is_refused(tmp_path):
    cfg = from_params(**tiny_params(steps=2))
    train(cfg, tmp_path / "r", progress=False)
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    state["model"] = {k: v[..., :1] for k, v in state["model"].items()}
    torch.save(state, tmp_path / "r" / "checkpoint.pt")
    with pytest.raises(ckpt.CheckpointError, match="do not fit"):
        train(cfg.replace(steps=3), tmp_path / "r", progress=False)


def test_invalid_config_inside_checkpoint(tmp_path):
    cfg = from_params(**tiny_params())
    model, ema, opt = _parts(cfg)
    path = ckpt.save(tmp_path / "c.pt", step=1, config=cfg, model=model, ema=ema.model, optimizer=opt)
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["patchez"] = 3
    torch.save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="invalid configuration"):
        ckpt.load(path)
