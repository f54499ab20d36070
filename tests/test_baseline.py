"""The DIAMOND-style U-Net baseline (model/unet.py): its frame-stack cache equals the
direct forward, it trains through the one loop (resume exact), and its bundle plays
through WorldSession and evaluates like a world."""

import json
import shutil

import numpy as np
import pytest
import torch

from neuralworld.bundle import BundleError, load_bundle
from neuralworld.model.unet import MODEL_KIND, FrameStackUNet, UNetConfig, baseline_loss
from neuralworld.train import TrainingError, train, train_config

SMALL = UNetConfig(context_frames=3, channels=(8, 16), blocks=1, cond_dim=16, groups=4, heads=2)


def _random_unet(seed: int = 0, resolution=(16, 16), A: int = 5) -> FrameStackUNet:
    """Zero-initialised outputs would make every comparison trivially 0 == 0: randomise."""
    torch.manual_seed(seed)
    m = FrameStackUNet(SMALL, resolution=resolution, action_size=A).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    return m


def test_step_against_the_cache_equals_the_direct_forward():
    m = _random_unet()
    n, B, A = SMALL.context_frames, 2, 5
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(B, n + 2, 3, 16, 16, generator=g)  # more frames than the stack holds: it shifts
    actions = torch.randn(B, n + 3, A, generator=g)  # actions[:, k] led to frames[:, k]; the last leads to x
    levels = torch.rand(B, n + 2, generator=g) * 0.1
    cache = m.new_cache(B)
    with torch.no_grad():
        for k in range(n + 2):
            m.append(frames[:, k], levels[:, k], actions[:, k], cache)
        x, t = torch.randn(B, 3, 16, 16, generator=g), torch.tensor([0.3, 0.9])
        before = [v.clone() for v in cache.step_inputs()]
        out = m.step(x, t, actions[:, -1], cache)
        direct = m(x, t, frames[:, -n:], actions[:, -n - 1:], levels[:, -n:])
    assert out.velocity.shape == (B, 3, 16, 16) and out.reward.shape == (B,) and not out.reward.any()
    torch.testing.assert_close(out.velocity, direct, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.step_inputs())), "step must leave the cache as it is"
    assert cache.valid.all()


def test_first_frame_after_reset_fills_the_stack_per_element():
    m = _random_unet()
    cache = m.new_cache(2)
    frame, action = torch.randn(2, 3, 16, 16), torch.randn(2, 5)
    m.append(frame, 0.02, action, cache)
    m.append(frame + 1, 0.02, action, cache)
    cache.reset(0)  # element 0 starts over, element 1 keeps its past
    m.append(frame * 0 + 7, 0.02, action, cache)
    assert torch.all(cache.frames[0] == 7)  # a world that stood still
    assert cache.valid[0].tolist() == [False, False, True]  # only one was really appended
    torch.testing.assert_close(cache.frames[1, -2], frame[1] + 1)
    torch.testing.assert_close(cache.frames[1, 0], frame[1])  # filled by its first frame


def test_loss_trains_down_on_a_fixed_batch():
    m = _random_unet()
    torch.manual_seed(0)
    m = FrameStackUNet(SMALL, resolution=(16, 16), action_size=5)  # as initialised for training
    frames, actions = torch.rand(4, SMALL.context_frames + 1, 3, 16, 16) * 2 - 1, torch.randn(4, SMALL.context_frames + 1, 5)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same noise every step: the loss must fall
        loss, metrics = baseline_loss(m, frames, actions)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(metrics["loss"])
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------------------
# trained for real on the tiny dataset (tests/conftest.py)
# ---------------------------------------------------------------------------
def _cfg(steps: int = 6, **kw):
    return train_config("tiny", model=MODEL_KIND, precision="fp32", device="cpu", log_every=2,
                        **{"dynamics.steps": steps, "dynamics.batch_size": 4, **kw})


@pytest.fixture(scope="module")
def baseline_run(tiny_world_run, tmp_path_factory):
    data, _ = tiny_world_run
    run = tmp_path_factory.mktemp("baseline") / "run"
    summary = train(data, run, _cfg(validate_every=3), progress=False)
    return data, run, summary


def test_trains_and_plays_through_world_session(baseline_run):
    data, run, summary = baseline_run
    assert summary["bundle"] == str(run / "world") and summary["model"] == MODEL_KIND
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "held_out" and "next_frame_psnr" in r for r in rows)
    assert (run / "baseline.safetensors").exists() and not (run / "autoencoder.safetensors").exists()

    world = load_bundle(run / "world")
    assert world.model == MODEL_KIND and world.resolution == (32, 32)
    session = world.start(sampler="fast")  # the bundle's start frames
    frame = session.step(world.spec.make(forward=1))
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    frames = session.rollout(np.stack([world.spec.noop()] * 3))
    assert frames.shape == (3, 32, 32, 3)
    # batched, from one image, reset with a seed: the same rollout twice
    image = np.full((48, 40, 3), 90, np.uint8)
    batched = world.start(image, batch_size=2, sampler="fast", seed=3)
    a = batched.rollout(np.stack([world.spec.noop()] * 2))
    batched.reset(image, seed=3)
    b = batched.rollout(np.stack([world.spec.noop()] * 2))
    assert a.shape == (2, 2, 32, 32, 3) and np.array_equal(a, b)


def test_eval_runs_on_the_baseline_bundle(baseline_run, tmp_path):
    from neuralworld.eval.fidelity import evaluate
    from neuralworld.model.sampler import SamplerPreset

    data, run, _ = baseline_run
    result = evaluate(run, data, out=tmp_path / "eval", horizons=(1, 4), episodes=1, windows_per_episode=1,
                      sampler=SamplerPreset("euler", 2), video=False)
    assert result["context_frames"] == 4  # the U-Net's stack
    assert np.isfinite(result["rollout"]["horizons"]["4"]["psnr"])
    assert np.isfinite(result["teacher_forced"]["psnr"])


def test_resume_is_exact(baseline_run, tmp_path, monkeypatch):
    import neuralworld.train.baseline as unet  # where the baseline's stage finds its loss

    data, _, _ = baseline_run
    straight = tmp_path / "straight"
    train(data, straight, _cfg(8, checkpoint_every=3, validate_every=100), progress=False)

    class Killed(Exception):
        pass

    real_loss, calls = unet.baseline_loss, [0]

    def dies_at_step_5(*args, **kw):
        calls[0] += 1
        if calls[0] == 6:
            raise Killed
        return real_loss(*args, **kw)

    run = tmp_path / "killed"
    monkeypatch.setattr(unet, "baseline_loss", dies_at_step_5)
    with pytest.raises(Killed):
        train(data, run, _cfg(8, checkpoint_every=3, validate_every=100), progress=False)
    monkeypatch.setattr(unet, "baseline_loss", real_loss)
    assert not (run / "world").exists()
    train(data, run, _cfg(8, checkpoint_every=3, validate_every=100), resume=True, progress=False)

    a, b = load_bundle(straight / "world"), load_bundle(run / "world")
    sa, sb = a.dynamics.state_dict(), b.dynamics.state_dict()
    worst = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    assert worst < 1e-6, f"resumed run differs from the uninterrupted one by {worst}"


def test_bad_inputs_are_refused_clearly(baseline_run, tiny_world_run, tmp_path):
    data, run, _ = baseline_run
    # a world bundle without "model" is still our transformer world
    assert load_bundle(tiny_world_run[1] / "world").model == "world"
    bad = tmp_path / "bad"
    shutil.copytree(run / "world", bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["model"] = "gan"
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unknown model 'gan'"):
        load_bundle(bad)
    with pytest.raises(TrainingError, match="unknown model"):
        train(data, tmp_path / "x", train_config("tiny", model="gan"), progress=False)
    # resuming a baseline run as a world (or the reverse) is refused
    with pytest.raises(TrainingError, match="model config differs"):
        train(data, run, train_config("tiny", precision="fp32", device="cpu"), resume=True, progress=False)
    # no ONNX path for the baseline, and the error says so
    world = load_bundle(run / "world")
    with pytest.raises(ValueError, match="transformer worlds only"):
        world.start(backend="onnx")
