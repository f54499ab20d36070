"""ONNX export against PyTorch (STYLE habit 8: a fast path against its reference),
the ONNX-backed session against the torch session, and ``neuralworld bench``'s
output (structure only, never time).

Worlds here are the tiny preset with random weights (nothing needs training to
check arithmetic); every parameter gets a little noise so the zero-initialised
adaLN and output layers do real work."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from neuralworld.actions import ActionSpec, Axis  # noqa: E402
from neuralworld.bundle import build_networks, load_bundle, save_bundle  # noqa: E402
from neuralworld.model.config import preset  # noqa: E402
from neuralworld.onnx_export import (  # noqa: E402
    DECODER_FILE,
    META_FILE,
    STEP_FILE,
    OnnxBackend,
    export_onnx,
)
from neuralworld.session import WorldSession  # noqa: E402

SPEC = ActionSpec(buttons=("forward", "back", "left", "right", "attack"), axes=(Axis("turn", -10, 10),), fps=35)
# float32 graphs run by another engine (ONNX Runtime fuses and reorders sums): what "equal" means here
ATOL = {"velocity": 1e-4, "reward": 1e-4, "kv": 1e-4, "frame": 1e-4}


@pytest.fixture(scope="module")
def world_path(tmp_path_factory):
    torch.manual_seed(0)
    cfg = preset("tiny", spec=SPEC, resolution=(64, 64))
    ae, dyn = build_networks(cfg)
    with torch.no_grad():
        for p in list(dyn.parameters()) + list(ae.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    return save_bundle(tmp_path_factory.mktemp("world") / "tiny", cfg, ae, dyn, name="random-tiny")


@pytest.fixture(scope="module")
def world(world_path):
    return load_bundle(world_path)


def random_actions(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [SPEC.make(forward=float(rng.random() < 0.5), attack=float(rng.random() < 0.2), turn=float(rng.uniform(-10, 10)))
            for _ in range(n)]  # fmt: skip


@pytest.mark.parametrize("batch_size", [1, 2])
def test_onnx_step_and_decoder_equal_pytorch_over_ring_wraps(world, tmp_path, batch_size):
    """Step the pure graph and the module side by side for 12 frames, each writing its
    own outputs into its own cache (torch rings vs numpy rings), so the rings wrap
    (K-1 = 1 and M-1 = 7 slots in tiny) and errors would compound if anything differed."""
    folder = export_onnx(world, tmp_path / "onnx", batch_size=batch_size)
    assert {p.name for p in folder.iterdir()} >= {STEP_FILE, DECODER_FILE, META_FILE}
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["opset"] >= 17 and meta["batch_size"] == batch_size
    ort_backend = OnnxBackend(folder, threads=1)
    dyn, ae = world.dynamics, world.autoencoder
    torch_cache = dyn.new_cache(batch_size)
    ort_cache = ort_backend.new_cache(batch_size)
    g = torch.Generator().manual_seed(1)
    C, (h, w) = dyn.latent_channels, dyn.latent_size
    steps = 12
    assert steps > dyn.config.memory_frames
    for t, a in enumerate(random_actions(steps)):
        action = torch.from_numpy(SPEC.normalize(np.broadcast_to(a, (batch_size, SPEC.size)).copy()))
        latent = torch.randn(batch_size, C, h, w, generator=g)
        level = torch.rand(batch_size, generator=g)
        with torch.no_grad():
            ref = dyn.step_with_cache_tensors(latent, level, action, *torch_cache.step_inputs())
            frame_ref = ae.decode(ae.denormalize_latents(latent))
        got = ort_backend._run(latent, level, action, ort_cache, ["velocity", "reward", "termination",
                                                                  "new_full_k", "new_full_v", "new_pooled_k", "new_pooled_v"])
        np.testing.assert_allclose(got[0], ref[0].numpy(), atol=ATOL["velocity"], rtol=0, err_msg=f"velocity, step {t}")
        np.testing.assert_allclose(got[1], ref[1].numpy(), atol=ATOL["reward"], rtol=0, err_msg=f"reward, step {t}")
        np.testing.assert_allclose(got[2], ref[2].numpy(), atol=ATOL["reward"], rtol=0, err_msg=f"termination, step {t}")
        for i, name in enumerate(("k", "v", "pooled k", "pooled v"), start=3):
            np.testing.assert_allclose(got[i], ref[i].numpy(), atol=ATOL["kv"], rtol=0, err_msg=f"new {name}, step {t}")
        np.testing.assert_allclose(ort_backend.decode(latent).numpy(), frame_ref.numpy(), atol=ATOL["frame"], rtol=0,
                                   err_msg=f"decoded frame, step {t}")  # fmt: skip
        # each side remembers the frame: torch by Dynamics.append, numpy by DynamicsCache.push
        with torch.no_grad():
            dyn.append(latent, level, action, torch_cache)
        ort_backend.append(latent, level, action, ort_cache)
        for name in ("full_age", "full_valid", "pooled_age", "pooled_valid"):
            np.testing.assert_array_equal(getattr(ort_cache, name), getattr(torch_cache, name).numpy(), err_msg=name)
        assert (ort_cache.full_next, ort_cache.pooled_next) == (torch_cache.full_next, torch_cache.pooled_next)
        np.testing.assert_allclose(ort_cache.pooled_k, torch_cache.pooled_k.numpy(), atol=ATOL["kv"], rtol=0)
        np.testing.assert_allclose(ort_cache.full_v, torch_cache.full_v.numpy(), atol=ATOL["kv"], rtol=0)
        np.testing.assert_array_equal(ort_cache.prev, torch_cache.prev.numpy(), err_msg="prev latent")


def test_a_world_without_frame_stacking_exports_and_plays_the_same(tmp_path):
    """Bundles trained before ``prev_frame`` existed: no ``prev_latent`` input in the graph,
    and ONNX Runtime still plays the frames PyTorch does."""
    torch.manual_seed(0)
    cfg = preset("tiny", spec=SPEC, resolution=(64, 64))
    cfg.dynamics.prev_frame = False
    ae, dyn = build_networks(cfg)
    old = load_bundle(save_bundle(tmp_path / "old", cfg, ae, dyn))
    meta = json.loads((export_onnx(old, tmp_path / "onnx") / META_FILE).read_text())
    assert "prev_latent" not in meta["step_inputs"] and meta["prev_frame"] is False
    ref = WorldSession(old, sampler="fast", seed=3, backend="torch")
    onnx = WorldSession(old, sampler="fast", seed=3, backend="onnx")
    for a in random_actions(4, seed=5):
        np.testing.assert_allclose(onnx.step(a).astype(int), ref.step(a).astype(int), atol=1)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnx_session_plays_the_same_frames_as_torch(world, batch_size):
    """The same session, seed and actions on both backends: the same frames (uint8,
    off by at most one level where a float lands on a rounding edge), rewards and
    terminations, over more steps than the memory holds."""
    start = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    kw = dict(sampler="fast", batch_size=batch_size, seed=7)
    ref = WorldSession(world, start, backend="torch", **kw)
    onnx = WorldSession(world, start, backend="onnx", **kw)
    assert onnx.backend.name == "onnx"
    np.testing.assert_array_equal(onnx.frame, ref.frame)
    for t, a in enumerate(random_actions(10, seed=3)):
        f_ref, f_onnx = ref.step(a), onnx.step(a)
        diff = np.abs(f_ref.astype(np.int16) - f_onnx.astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f"step {t}: max diff {diff.max()}"
        torch.testing.assert_close(onnx.latent, ref.latent, atol=1e-4, rtol=0)
        np.testing.assert_allclose(onnx.last_reward, ref.last_reward, atol=1e-4)
        np.testing.assert_allclose(onnx.last_termination, ref.last_termination, atol=1e-4)
    # reset works the same on numpy rings
    np.testing.assert_array_equal(onnx.reset(start, seed=1), ref.reset(start, seed=1))
    np.testing.assert_allclose(onnx.step(SPEC.noop()).astype(int), ref.step(SPEC.noop()).astype(int), atol=1)


def test_bf16_backend_plays_close_to_fp32(world):
    """bf16 autocast is an approximation: frames stay close, never equal by design."""
    ref = WorldSession(world, sampler="fast", seed=0)
    bf16 = WorldSession(world, sampler="fast", seed=0, backend="bf16")
    for a in random_actions(3):
        diff = np.abs(ref.step(a).astype(int) - bf16.step(a).astype(int))
        assert diff.mean() < 8.0


def test_int8_backend_plays_close_to_fp32(world):
    """onnx_int8 quantises the step's matmuls: an approximation, close but not equal."""
    ref = WorldSession(world, sampler="fast", seed=0)
    q8 = WorldSession(world, sampler="fast", seed=0, backend="onnx_int8")
    assert q8.backend.name == "onnx_int8"
    for a in random_actions(3):
        f_ref, f_q8 = ref.step(a), q8.step(a)
        assert np.abs(f_ref.astype(int) - f_q8.astype(int)).mean() < 8.0
        torch.testing.assert_close(q8.latent, ref.latent, atol=0.25, rtol=0)


def test_bench_prints_a_table_and_json(world_path, capsys):
    from neuralworld.cli import main

    rc = main(["bench", str(world_path), "--batch", "1,2", "--frames", "3", "--warmup", "1", "--paths", "eager,bf16,onnx"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert "fps" in out[1] and "p95" in out[1]  # the table's header
    assert summary["fastest"] in ("eager", "bf16", "onnx") and summary["fastest_exact"] in ("eager", "onnx")
    assert set(summary["params"]) == {"dynamics", "decoder", "encoder"} and summary["params"]["dynamics"] > 0
    assert summary["threads"] == 2 and summary["resolution"] == [64, 64]
    rows = {(r["path"], r["batch"]) for r in summary["results"]}
    assert rows == {(p, b) for p in ("eager", "bf16", "onnx") for b in (1, 2)}
    for r in summary["results"]:
        assert set(r["latency_ms"]) == {"mean", "p50", "p95", "min"}
        assert set(r["breakdown_ms_per_step"]) == {"step", "append", "decode", "other"}
        assert r["calls_per_step"] == {"step": 2.0, "append": 1.0, "decode": 1.0}  # fast: 2 Euler calls
        assert r["flops_per_frame"] > 0 and r["fps"] > 0


def test_bench_rejects_an_unknown_path(world_path, capsys):
    from neuralworld.cli import main

    assert main(["bench", str(world_path), "--batch", "1", "--frames", "1", "--paths", "eager,tpu"]) == 2
    assert "unknown paths" in capsys.readouterr().err
