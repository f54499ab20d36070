"""The warp-and-paint world (model/warp.py) on both ONNX paths: ONNX Runtime against eager
PyTorch, and ``neuralworld export --web`` in headless Chromium against the Python session.

Worlds here have random weights (nothing needs training to check arithmetic): the tiny
preset at 64x64 with its zero-initialised output layer (flow, mask, paint) perturbed, so
frames are warped and painted rather than copies of the last one.

Where frames may differ: memory holds 8-bit frames. Two engines' float32 sums differ by
~1e-6, which once in a few thousand pixels lands a remembered value on the other side of
a rounding edge; that pixel is then one level (2/255) apart in memory and is carried,
warped, into the frames after it. So frames are compared as the transformer's are (uint8,
at most a level or two apart in a small share of pixels) and latents to within about one
8-bit level, not 1e-4."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from neuralworld.actions import ActionSpec, Axis  # noqa: E402
from neuralworld.backends import fastest_exact  # noqa: E402
from neuralworld.bundle import build_networks, load_bundle, save_bundle  # noqa: E402
from neuralworld.model import memory  # noqa: E402
from neuralworld.model.autoencoder import frames_to_tensor, tensor_to_frames  # noqa: E402
from neuralworld.model.unet import baseline_preset  # noqa: E402
from neuralworld.model.warp import WarpCache, quantize, warp_preset  # noqa: E402
from neuralworld.onnx_export import (  # noqa: E402
    DECODER_FILE,
    META_FILE,
    STEP_FILE,
    OnnxBackend,
    WarpOnnxBackend,
    example_warp_step_inputs,
    export_onnx,
)
from neuralworld.session import WorldSession  # noqa: E402
from test_web_export import HAVE_ORT_WEB, PageNoise, _browser_page, needs_ort_web, turn_actions  # noqa: E402

SPEC = ActionSpec(buttons=("forward", "back", "left", "right", "attack"), axes=(Axis("turn", -15, 15),), fps=35)
LEVEL = 2.0 / 255.0
"""One step of the 8-bit memory, in [-1, 1] units."""


def start_frames(n: int = 3, size: int = 64) -> np.ndarray:
    """n frames of a scene with edges and gradients (something to warp), sliding right."""
    y, x = np.mgrid[0:size, 0:size]
    frames = []
    for t in range(n):
        img = np.stack([(x * 4 + 8 * t) % 256, (y * 3) % 256, ((x // 8 + y // 8) % 2) * 200 + 20], -1)
        frames.append(img.astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def world_path(tmp_path_factory):
    torch.manual_seed(0)
    cfg = warp_preset("tiny", SPEC, resolution=(64, 64))
    codec, net = build_networks(cfg)
    with torch.no_grad():
        net.out.weight.normal_(0.0, 0.05)  # flow, mask and paint do real work: not copy-last
    actions = np.stack([SPEC.make(turn=5.0)] * 3)
    return save_bundle(tmp_path_factory.mktemp("warp") / "tiny-warp", cfg, codec, net, name="random-tiny-warp",
                       start_frames=start_frames(), start_actions=actions)  # fmt: skip


@pytest.fixture(scope="module")
def world(world_path):
    return load_bundle(world_path)


def random_actions(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [SPEC.make(forward=float(rng.random() < 0.5), attack=float(rng.random() < 0.2), turn=float(rng.uniform(-15, 15)))
            for _ in range(n)]  # fmt: skip


# ---------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 2])
def test_step_graph_equals_pytorch(world, tmp_path, batch_size):
    """One graph (no decoder: frames are latents), GridSample in float32 with the warp's
    settings, and the pure step's outputs as PyTorch's on random 8-bit memory."""
    import onnx

    folder = export_onnx(world, tmp_path / "onnx", batch_size=batch_size)
    assert {p.name for p in folder.iterdir()} == {STEP_FILE, META_FILE}, "no decoder graph for a pixel world"
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["model"] == "warp" and meta["opset"] >= 16 and meta["batch_size"] == batch_size
    assert meta["decoder"] == {"file": None, "clamp": [-1.0, 1.0]}
    net = world.dynamics
    M, A = net.config.window, SPEC.size
    assert meta["step_inputs"] == {
        "latent": [[batch_size, 3, 64, 64], "float32"], "action": [[batch_size, A], "float32"],
        "frames": [[batch_size, M, 3, 64, 64], "float32"], "actions": [[batch_size, M, A], "float32"],
    }  # fmt: skip  (noise_level: a one-step generator reads none)
    graph = onnx.load(str(folder / STEP_FILE)).graph
    (grid,) = [n for n in graph.node if n.op_type == "GridSample"]
    attrs = {a.name: (a.s.decode() if a.s else a.i) for a in grid.attribute}
    mode = "nearest" if net.config.integer_warp else "bilinear"  # whole pixels: nothing is resampled
    assert attrs == {"mode": mode, "padding_mode": "border", "align_corners": 1}
    doubles = [n.name for n in graph.node for a in n.attribute if a.t.data_type == onnx.TensorProto.DOUBLE or (n.op_type == "Cast" and a.i == onnx.TensorProto.DOUBLE)]
    assert not doubles, f"float64 left in the graph (ONNX Runtime has no float64 GridSample): {doubles}"

    backend = OnnxBackend(folder, threads=1)
    assert isinstance(backend, WarpOnnxBackend) and backend.decoder_session is None
    cache = backend.new_cache(batch_size)
    for seed in range(3):
        latent, level, action, frames, actions = example_warp_step_inputs(net, batch_size, seed=seed)
        action = torch.rand(action.shape) * 2 - 1
        cache.frames.copy_(frames)
        cache.actions.copy_(actions)
        with torch.no_grad():
            ref = net.step_with_cache_tensors(latent, level, action, frames, actions)
        got = backend._run(latent, level, action, cache, ["velocity", "reward", "termination"])
        for name, g, r in zip(("velocity", "reward", "termination"), got, ref):
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0, err_msg=f"{name}, draw {seed}")
        assert np.abs(ref[0].numpy()).mean() > 0.1, "the velocity is not trivial"
    np.testing.assert_array_equal(backend.decode(torch.tensor([[-3.0, 0.25, 2.0]])).numpy(), [[-1.0, 0.25, 1.0]])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnx_session_plays_the_same_frames_as_eager(world, batch_size):
    """The same session, seed, start frames and actions on both backends, over more steps
    than memory holds: the same uint8 frames (at most one level apart), latents within one
    8-bit level, the same heads; and frames that move away from the start (not copy-last)."""
    start = start_frames()
    kw = dict(batch_size=batch_size, seed=7)
    ref = WorldSession(world, start, backend="eager", **kw)
    onnx = WorldSession(world, start, backend="onnx", **kw)
    assert onnx.backend.name == "onnx" and isinstance(onnx.cache, WarpCache)
    assert (onnx.sampler.method, onnx.sampler.steps, onnx.sampler.context_level) == ("euler", 1, 0.0)
    np.testing.assert_array_equal(onnx.frame, ref.frame)
    torch.testing.assert_close(onnx.cache.frames, ref.cache.frames, atol=0, rtol=0)  # primed alike, every slot filled
    steps = 10
    assert steps > world.dynamics.config.window
    for t, a in enumerate(random_actions(steps, seed=3)):
        f_ref, f_onnx = ref.step(a), onnx.step(a)
        diff = np.abs(f_ref.astype(np.int16) - f_onnx.astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.05, f"step {t}: max diff {diff.max()}, {(diff > 0).mean():.4f} of pixels"
        torch.testing.assert_close(onnx.latent, ref.latent, atol=LEVEL + 1e-4, rtol=0)
        np.testing.assert_allclose(onnx.last_reward, ref.last_reward, atol=1e-4)
        np.testing.assert_allclose(onnx.last_termination, ref.last_termination, atol=1e-4)
    moved = np.abs(f_ref.astype(np.int16) - np.broadcast_to(start[-1], f_ref.shape)).mean()
    assert moved > 5, f"frames barely moved from the start ({moved:.2f} levels): the test world is copy-last"
    # reset works the same on the host cache
    np.testing.assert_array_equal(onnx.reset(start, seed=1), ref.reset(start, seed=1))
    np.testing.assert_allclose(onnx.step(SPEC.noop()).astype(int), ref.step(SPEC.noop()).astype(int), atol=1)


def test_compiled_session_plays_the_same_frames_as_eager(world):
    """torch.compile of the pure step: the same frames as eager over more steps than memory holds
    (a warp world's append calls no network, so the compiled path only steps)."""
    start, actions = start_frames(), random_actions(8, seed=4)
    ref = WorldSession(world, start, backend="eager", seed=2)
    compiled = WorldSession(world, start, backend="compiled", seed=2)
    assert compiled.backend.name == "compiled"
    for t, a in enumerate(actions):
        diff = np.abs(ref.step(a).astype(np.int16) - compiled.step(a).astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.05, f"step {t}: max diff {diff.max()}"
    np.testing.assert_allclose(compiled.last_termination, ref.last_termination, atol=1e-4)


def test_auto_plays_warp_on_onnx_and_the_baseline_still_refuses(world, tmp_path):
    assert fastest_exact(world) == "onnx"
    assert world.start(backend="auto").backend.name == "onnx"
    cfg = baseline_preset("tiny", SPEC, resolution=(32, 32))
    baseline = load_bundle(save_bundle(tmp_path / "baseline", cfg, *build_networks(cfg)))
    assert fastest_exact(baseline) == "eager"
    with pytest.raises(ValueError, match="transformer worlds only"):
        export_onnx(baseline, tmp_path / "no")
    assert not (tmp_path / "no" / DECODER_FILE).exists()


def test_bench_measures_a_warp_world(world_path, capsys):
    from neuralworld.cli import main

    rc = main(["bench", str(world_path), "--batch", "1", "--frames", "3", "--warmup", "1", "--paths", "eager,onnx"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == {} and {r["path"] for r in summary["results"]} == {"eager", "onnx"}
    assert summary["params"]["dynamics"] > 0 and summary["params"]["decoder"] == 0
    for r in summary["results"]:
        assert r["calls_per_step"] == {"step": 1.0, "append": 1.0, "decode": 1.0}  # one call a frame
        assert r["flops_per_frame"] > 1e7 and r["fps"] > 0


# ---------------------------------------------------------------------------
# the web export
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(world_path, tmp_path_factory):
    if not HAVE_ORT_WEB:
        pytest.skip("onnxruntime-web is not installed (npm ci; ./setup.sh does)")
    from neuralworld.play.export import export_web

    return export_web(world_path, tmp_path_factory.mktemp("web") / "site")


def session_rollout(session: WorldSession, actions: list[list[float]], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """What the page's worker computes, by the session's own code: reset to the bundle's start
    frames, then per (normalised) action ``WorldSession.step``'s sampler and memory
    (model/memory.py) fed the page's noise (mulberry32 + Box-Muller, ported exactly).
    Returns (latents (T, 3, H, W), frames uint8 (T, H, W, 3))."""
    noise = PageNoise(seed)
    session.reset()
    shape = session._latent_shape
    latents, frames = [], []
    with torch.inference_mode():
        for a in actions:
            x = torch.from_numpy(noise.normal(int(np.prod(shape))).reshape(shape))
            act = torch.tensor([a], dtype=torch.float32)
            latent = memory.generate(session.backend, session.sampler, x, act, session.cache)
            session._remember(latent, act)
            latents.append(latent[0].numpy())
            frames.append(tensor_to_frames(session.backend.decode(latent))[0])
    return np.stack(latents), np.stack(frames)


@needs_ort_web
def test_web_folder_manifest_and_page_loop_in_python(site, world):
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert {"index.html", "world.json", "start.bin", STEP_FILE, "static/world-worker.js"} <= names
    assert not {DECODER_FILE, "encoder.onnx"} & names, "frames are the latents: no codec graphs"
    m = json.loads((site / "world.json").read_text())
    assert m["model"] == "warp" and m["graphs"]["decoder"] is None and m["graphs"]["encoder"] is None
    assert (m["sampler"]["method"], m["sampler"]["steps"], m["sampler"]["flow_times"], m["sampler"]["context_level"]) == ("euler", 1, [1.0, 0.0], 0.0)
    assert m["memory"]["window"] == world.dynamics.config.window
    # start.bin: the start frames in [-1, 1] and their normalised actions, as the session primes
    raw = np.fromfile(site / "start.bin", "<f4")
    T, n = m["start"]["frames"], int(np.prod(m["start"]["latents"]["shape"]))
    np.testing.assert_array_equal(raw[:n].reshape(T, 3, 64, 64), frames_to_tensor(world.start_frames).numpy())
    np.testing.assert_array_equal(raw[n:].reshape(T, -1), SPEC.normalize(world.start_actions))
    # the session's loop with the page's noise: the graph the page loads (ONNX Runtime) against eager
    actions = turn_actions(m, 8, -15.0)
    z_onnx, f_onnx = session_rollout(WorldSession(world, backend=OnnxBackend(site, threads=1)), actions, seed=7)
    z_ref, f_ref = session_rollout(WorldSession(world, backend="eager"), actions, seed=7)
    diff = np.abs(f_onnx.astype(int) - f_ref)
    # ONNX Runtime's and torch's float kernels round apart by CPU (AVX-512 or not): where a pixel sits
    # on a quantisation boundary it lands a level apart, and the next steps carry that pixel on a
    # few levels; the rest of the frames must be the same
    assert (diff > 0).mean() < 0.01 and diff.max() <= 4 and np.abs(z_onnx - z_ref).max() <= 4 * LEVEL + 1e-4
    # quantize (model/warp.py), which the page ports, is exact on the start frames
    np.testing.assert_array_equal(quantize(frames_to_tensor(world.start_frames)), frames_to_tensor(world.start_frames))


@pytest.fixture
def page(site, tmp_path):
    from neuralworld.play.export import StaticServer

    with StaticServer(site) as served, _browser_page(served.url, tmp_path) as page:
        yield page


def _rollout(page, actions: list[list[float]], seed: int) -> tuple[np.ndarray, np.ndarray]:
    frames, latents = page.evaluate(
        "([a, s]) => nw.transport.rollout(a, s).then(r => [r.frames.map(f => Array.from(f)), r.latents.map(z => Array.from(z))])",
        [actions, seed],
    )
    return np.array(frames, np.uint8).reshape(len(actions), 64, 64, 4), np.array(latents, np.float32).reshape(len(actions), 3, 64, 64)


@needs_ort_web
def test_page_plays_the_warp_world_as_the_onnx_session_does(page, site, world, tmp_path):
    """The exported page in headless Chromium, network cut: it plays, and its worker's seeded
    rollout is the Python session's on the ONNX Runtime backend (and eager's)."""
    assert "in this browser" in page.inner_text("#status")
    step0 = int(page.inner_text("#hud-step"))
    page.wait_for_function(f"nw.stats.step > {step0 + 5}", timeout=20_000)
    assert float(page.inner_text("#hud-fps")) > 0
    assert page.evaluate("nw.messages.find(m => m.type === 'hello').pipelined") is False, "no decoder graph to overlap"

    m = json.loads((site / "world.json").read_text())
    actions = turn_actions(m, 6, -15.0)
    (frames, latents), (again, _) = _rollout(page, actions, 7), _rollout(page, actions, 7)
    assert np.array_equal(frames, again), "same seed, same actions: same frames"
    assert (frames[..., 3] == 255).all()
    z_onnx, f_onnx = session_rollout(WorldSession(world, backend=OnnxBackend(site, threads=1)), actions, seed=7)
    z_eager, f_eager = session_rollout(WorldSession(world, backend="eager"), actions, seed=7)
    for name, z_ref, f_ref in (("onnx", z_onnx, f_onnx), ("eager", z_eager, f_eager)):
        z_diff = np.abs(latents - z_ref).max()
        diff = np.abs(frames[..., :3].astype(int) - f_ref)
        print(f"\nbrowser vs the {name} session over 6 frames: latents max {z_diff:.2e}, pixels max {diff.max()} "
              f"mean {diff.mean():.4f}, {(diff > 0).mean():.4%} of pixels differ (uint8)")
        # a pixel on a quantisation boundary may land a level apart and be carried a few levels on
        # (float kernels round apart by CPU: see test_web_folder_manifest_and_page_loop_in_python)
        assert (diff > 0).mean() < 0.01 and diff.max() <= 4 and diff.mean() < 0.05 and z_diff <= 4 * LEVEL + 1e-4
    assert np.abs(f_onnx[-1].astype(int) - world.start_frames[-1]).mean() > 5, "frames move: not copy-last"
    page.evaluate("nw.transport.resume()")
    n = page.evaluate("nw.stats.framesShown")
    page.wait_for_function(f"nw.stats.framesShown > {n + 2}", timeout=10_000)

    # start from an image: no encoder graph, the fitted pixels are the latent
    import cv2

    img = np.zeros((48, 80, 3), np.uint8)
    img[:, :40] = (220, 40, 40)
    img[:, 40:] = (40, 200, 60)
    cv2.imwrite(str(tmp_path / "start.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    page.set_input_files("#start-image", str(tmp_path / "start.png"))
    page.wait_for_function("nw.messages.some(m => m.type === 'started')", timeout=20_000)
    assert page.evaluate("nw.messages.find(m => m.type === 'started')")["image"] == [48, 80]
    page.click("#reset")
    page.wait_for_function("nw.messages.some(m => m.type === 'reset' && m.step === 0)", timeout=10_000)


def test_a_geometry_worlds_step_graph_equals_pytorch(tmp_path):
    """geometry_flow (depth and camera move reprojected in the graph: trigonometry, a division
    by depth) and the overlay (a second, nearest GridSample) export, and ONNX Runtime's step is PyTorch's."""
    torch.manual_seed(1)
    cfg = warp_preset("tiny", SPEC, resolution=(64, 64))
    cfg.dynamics.geometry_flow = cfg.dynamics.overlay = True
    codec, net = build_networks(cfg.validate())
    with torch.no_grad():
        net.overlay[..., 48:, 24:40] = 1.0  # a weapon: it stays put, nothing is warped from it
        net.out.weight.normal_(0.0, 0.05)
        net.pose_head[-1].weight.normal_(0.0, 0.3)  # the camera moves: the reprojection does real work
    world = load_bundle(save_bundle(tmp_path / "geo", cfg, codec, net, name="random-geo", start_frames=start_frames()))
    net = world.dynamics
    backend = OnnxBackend(export_onnx(world, tmp_path / "onnx", batch_size=2), threads=1)
    cache = backend.new_cache(2)
    for seed in range(2):
        latent, level, action, frames, actions = example_warp_step_inputs(net, 2, seed=seed)
        action = torch.rand(action.shape) * 2 - 1
        cache.frames.copy_(frames)
        cache.actions.copy_(actions)
        with torch.no_grad():
            ref = net.step_with_cache_tensors(latent, level, action, frames, actions)
            flow = net(frames, torch.cat([actions[:, -(net.config.action_frames - 1):], action[:, None]], 1), latent)["flow"]
        assert flow.abs().mean() > 1.0, "the reprojection does not move the picture"
        got = backend._run(latent, level, action, cache, ["velocity", "reward", "termination"])
        for name, g, r in zip(("velocity", "reward", "termination"), got, ref):
            np.testing.assert_allclose(g, r.numpy(), atol=1e-3, rtol=0, err_msg=f"{name}, draw {seed}")
