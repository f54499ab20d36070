import numpy as np
import pytest
import torch

from neuralworld.state_io import (
    StateError, atomic_write_json, flatten_state, load_tensors, read_json, save_tensors, unflatten_state,
)


def test_optimizer_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 7, "rng": torch.get_rng_state(), "np": np.random.default_rng(1).bit_generator.state}
    state["np"] = {k: (v if not isinstance(v, dict) else {kk: int(vv) for kk, vv in v.items()}) for k, v in state["np"].items()}
    tensors, skeleton = flatten_state(state)
    sha = save_tensors(tmp_path / "s.safetensors", tensors, {"skeleton": skeleton})
    t2, meta = load_tensors(tmp_path / "s.safetensors", sha256=sha)
    back = unflatten_state(t2, meta["skeleton"])
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    assert back["step"] == 7 and torch.equal(back["rng"], state["rng"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][k], v)


def test_truncated_tampered_missing(tmp_path):
    p = tmp_path / "w.safetensors"
    sha = save_tensors(p, {"w": torch.ones(100)}, {"a": 1})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError, match="truncated"):
        load_tensors(p)
    p.write_bytes(data[:-4] + b"\x00\x00\x80\x7f")  # same size, one value changed
    with pytest.raises(StateError, match="SHA-256"):
        load_tensors(p, sha256=sha)
    with pytest.raises(StateError, match="does not exist"):
        load_tensors(tmp_path / "nope.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    with pytest.raises(StateError, match="not a safetensors file|truncated"):
        load_tensors(tmp_path / "pickle.safetensors")


def test_atomic_json_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "c.json"
    atomic_write_json(p, {"v": 1})
    import os

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StateError, match="disk full"):
        atomic_write_json(p, {"v": 2})
    monkeypatch.undo()
    assert read_json(p) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["c.json"]  # no temp file left behind
    p.write_text("{broken")
    with pytest.raises(StateError, match="damaged"):
        read_json(p, "config")
