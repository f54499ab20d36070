"""Evaluation: PSNR/SSIM against closed forms, window alignment, and `evaluate` /
`neuralworld eval` on a tiny real world (metrics.json with every horizon and the
copy-last baseline; a video that decodes)."""

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from neuralworld.eval import EvalError, evaluate, psnr, ssim
from neuralworld.eval.metrics import PSNR_CAP

CLI = str(Path(sys.executable).parent / "neuralworld")


# ---------------------------------------------------------------------------
# metrics: closed forms, no world needed
def test_psnr_closed_form():
    a = np.full((2, 3, 16, 16, 3), 100, np.uint8)
    assert psnr(a, a).shape == (2, 3) and np.all(psnr(a, a) == PSNR_CAP)
    # a difference of 5 everywhere: MSE 25 -> 10 log10(255^2 / 25)
    assert np.allclose(psnr(a, a + 5), 10 * np.log10(255.0**2 / 25))
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:1])


def test_ssim_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 24, 20, 3), dtype=np.uint8)
    assert np.allclose(ssim(x, x), 1.0)
    # flat frames: no variance, so SSIM is the luminance term alone
    p, q = np.full((1, 16, 16, 3), 60, np.uint8), np.full((1, 16, 16, 3), 200, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert np.allclose(ssim(p, q), (2 * 60 * 200 + c1) / (60**2 + 200**2 + c1))
    # symmetric, bounded, lower with more noise
    noisy = np.clip(x.astype(int) + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(x.astype(int) + rng.normal(0, 60, x.shape), 0, 255).astype(np.uint8)
    assert np.allclose(ssim(x, noisy), ssim(noisy, x))
    assert np.all(ssim(x, noisier) < ssim(x, noisy)) and np.all(ssim(x, noisy) < 1)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[:, :8, :8], x[:, :8, :8])


# ---------------------------------------------------------------------------
# on a tiny real world (the tiny_world_run fixture in conftest.py)
@pytest.fixture(scope="session")
def tiny(tiny_world_run):
    return tiny_world_run


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory):
    data, run = tiny
    out = tmp_path_factory.mktemp("eval")
    result = evaluate(run, data, out=out, horizons=(1, 4, 16, 128), context=4, sampler="fast")
    return result, out


def test_windows_align_actions_with_frames(tiny):
    from neuralworld.data.store import Dataset
    from neuralworld.eval.fidelity import cut_windows

    ds = Dataset(tiny[0])
    ep = ds.episode(0).load(("frames", "actions"))
    win = cut_windows(ds, [0], context=3, horizon=10, per_episode=3)
    assert win.frames.shape[:2] == (3, 13) and win.led_to.shape == (3, 13, 7)
    for b, s in enumerate(win.starts):
        assert np.array_equal(win.frames[b], ep["frames"][s : s + 13])
        for j in range(13):  # the dataset's actions[s+j-1] led to frames[s+j]
            want = ds.spec.noop() if s + j == 0 else ep["actions"][s + j - 1]
            assert np.array_equal(win.led_to[b, j], want)
    assert all(b - a >= 13 for a, b in zip(win.starts, win.starts[1:]))  # never overlapping


def test_evaluate_writes_metrics_with_every_horizon_and_baselines(evaluated, tiny):
    result, out = evaluated
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["held_out"]["source"] == "run.json" and saved["held_out"]["fraction"] == 0.1
    assert saved["context_frames"] == 4 and saved["frames_per_window"] == 16 and saved["windows"] >= 1
    tf = saved["teacher_forced"]
    for key in ("psnr", "ssim", "copy_last_psnr", "copy_last_ssim", "autoencoder_psnr", "autoencoder_ssim"):
        assert np.isfinite(tf[key]), key
    assert tf["pairs"] == saved["windows"] * 16
    horizons = saved["rollout"]["horizons"]
    assert set(horizons) == {"1", "4", "16"} and set(saved["rollout"]["skipped_horizons"]) == {"128"}
    for h in horizons.values():
        assert set(h) == {"psnr", "ssim", "copy_last_psnr", "copy_last_ssim"}
        assert 0 < h["psnr"] <= PSNR_CAP and -1 <= h["ssim"] <= 1
    assert len(saved["rollout"]["psnr_curve"]) == len(saved["rollout"]["copy_last_psnr_curve"]) == 16
    # the first open-loop frame is the first teacher-forced frame (same seed, same memory)
    assert horizons["1"]["psnr"] == pytest.approx(saved["rollout"]["psnr_curve"][0], abs=1e-3)


def test_video_decodes(evaluated):
    result, out = evaluated
    with av.open(str(out / "rollout.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == result["frames_per_window"]
    # a 16-pixel label strip over up to 4 windows, each real | teacher-forced | open-loop at 6x (32 -> 192)
    assert frames[0].shape == (16 + 192 * min(4, result["windows"]), 3 * 192 + 2 * 2, 3)
    assert frames[0].std() > 0


def test_bundle_path_finds_its_run_and_cli(tiny, tmp_path):
    data, run = tiny
    p = subprocess.run(
        [CLI, "eval", str(run / "world"), "--data", str(data), "--out", str(tmp_path / "e"), "--sampler", "fast",
         "--episodes", "1", "--context", "3", "--horizons", "1,2,200"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(summary["rollout_psnr"]) == {"1", "2"} and summary["skipped_horizons"] == ["200"]
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["held_out"]["source"] == "run.json"  # the bundle sits in its run folder
    # errors a user can fix: one line, exit 2
    p = subprocess.run([CLI, "eval", str(tmp_path / "nowhere"), "--data", str(data)], capture_output=True, text=True)
    assert p.returncode == 2 and "no such run or world" in p.stderr
    with pytest.raises(EvalError, match="too short"):
        evaluate(run, data, out=tmp_path / "x", horizons=(500,), context=3, sampler="fast", video=False)
