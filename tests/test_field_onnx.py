"""The field world (model/field.py) on both ONNX paths: ONNX Runtime against eager PyTorch, and
``neuralworld export --web`` in headless Chromium against the Python session. Random weights,
made to depend on the pose (tests/test_field.py's small field), with hand-set kinematics."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from neuralworld.backends import fastest_exact  # noqa: E402
from neuralworld.bundle import load_bundle  # noqa: E402
from neuralworld.onnx_export import LOCATE_FILE, FieldOnnxBackend, OnnxBackend, export_onnx  # noqa: E402
from neuralworld.session import WorldSession  # noqa: E402
from test_field import hand_kinematics, lively_net, save_small, wall_at_x  # noqa: E402
from test_warp_onnx import _rollout, session_rollout  # noqa: E402
from test_web_export import HAVE_ORT_WEB, _browser_page, needs_ort_web, turn_actions  # noqa: E402


@pytest.fixture(scope="module", params=["column", "ray", "ray_texture"])
def world_path(request, tmp_path_factory):
    """A small field of each renderer (the ray ones with a wall at x = 200 in their wall map; one
    with the per-pixel surface texture and exact wall entries)."""
    renderer, textured = request.param.split("_")[0], "texture" in request.param
    net, poses = lively_net(resolution=(64, 64), renderer=renderer, texture=2.0 if textured else 0.0, exact=textured)
    if renderer == "ray":
        wall_at_x(net, 200.0)
        net.config.bob_period, net.config.bob_phase, net.config.bob_gain, net.config.bob_max = 10.0, 0.5, 0.08, 6.0
        net.config.bob_stuck = 4.0
        net.config.weapon_x, net.config.weapon_y, net.config.weapon_phase = 0.4, 0.5, 1.0
    hand_kinematics(net)
    return save_small(tmp_path_factory.mktemp(request.param), net, poses[19:20])


@pytest.fixture(scope="module")
def world(world_path):
    return load_bundle(world_path)


def actions(world, n: int = 12) -> np.ndarray:
    return np.stack([world.spec.make(forward=float(t % 3 != 2), turn=float(6 - t)) for t in range(n)])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_onnx_session_plays_the_same_frames_and_poses_as_eager(world, batch_size):
    assert fastest_exact(world) == "onnx"
    eager = world.start(backend="eager", batch_size=batch_size)
    onnx = world.start(backend="onnx", batch_size=batch_size)
    assert isinstance(onnx.backend, FieldOnnxBackend)
    a = actions(world)
    for t in range(len(a)):
        restart = np.array([False, t == 5])[:batch_size] if batch_size > 1 else None
        f_e, f_o = eager.step(a[t], restart=restart), onnx.step(a[t], restart=restart)
        assert np.abs(f_e.astype(int) - f_o).max() <= 1
        assert torch.allclose(eager.cache.pose, onnx.cache.pose, atol=1e-4)
        assert torch.allclose(eager.cache.last, onnx.cache.last, atol=1e-4)  # where a placement reads the momentum from
    assert float((eager.cache.pose[..., :2] - torch.from_numpy(world.start_poses[0, :2])).abs().max()) > 20, "it walked"


def test_export_cache_reuses_an_export_of_the_same_weights(world, monkeypatch, tmp_path):
    from neuralworld.onnx_export import cached_export

    monkeypatch.setenv("NEURALWORLD_CACHE", str(tmp_path / "cache"))
    first = cached_export(world, 1)
    made = (first / "dynamics_step.onnx").stat().st_mtime_ns
    assert cached_export(world, 1) == first and (first / "dynamics_step.onnx").stat().st_mtime_ns == made
    pair = cached_export(world, 2)
    assert pair != first  # another batch: another export
    with torch.no_grad():
        world.dynamics.overlay[0, 0, 0, 0] += 1.0
    try:
        changed = cached_export(world, 1)
        assert changed != first and sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir()) == sorted(
            p.name for p in (first, changed, pair))  # no partial folders left
    finally:
        with torch.no_grad():
            world.dynamics.overlay[0, 0, 0, 0] -= 1.0
    monkeypatch.setenv("NEURALWORLD_CACHE", "off")
    assert cached_export(world, 1) is None
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NEURALWORLD_CACHE", str(tmp_path / "file"))  # cannot hold a folder: no cache, still plays
    assert cached_export(world, 1) is None and world.start(backend="onnx").step(world.spec.make()).shape == (64, 64, 3)


def test_locate_graph_is_nearest(world, tmp_path):
    import onnxruntime as ort

    folder = export_onnx(world, tmp_path / "onnx")
    meta = json.loads((folder / "onnx.json").read_text())
    assert meta["model"] == "field" and meta["locate"]["file"] == LOCATE_FILE and meta["decoder"]["file"] is None
    net = world.dynamics
    with torch.no_grad():
        frame = net.render(torch.tensor([[100.0, 50.0, 0.0, 5.0]]))
        want = net.nearest(frame)
    (got,) = ort.InferenceSession(str(folder / LOCATE_FILE)).run(["pose"], {"frame": frame.numpy()})
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    assert isinstance(OnnxBackend(folder, threads=1), FieldOnnxBackend)


@pytest.fixture(scope="module")
def site(world_path, tmp_path_factory):
    if not HAVE_ORT_WEB:
        pytest.skip("onnxruntime-web is not installed (npm ci; ./setup.sh does)")
    from neuralworld.play.export import export_web

    return export_web(world_path, tmp_path_factory.mktemp("web") / "site")


@needs_ort_web
def test_web_manifest_and_the_page_loop_in_python(site, world):
    m = json.loads((site / "world.json").read_text())
    assert m["model"] == "field" and m["graphs"]["locate"]["file"] == LOCATE_FILE and m["graphs"]["decoder"] is None
    assert m["memory"]["start_pose"] == [float(v) for v in world.start_poses[-1]]
    assert (site / LOCATE_FILE).is_file() and not (site / "encoder.onnx").exists()
    acts = turn_actions(m, 6, -15.0)
    z_onnx, f_onnx = session_rollout(WorldSession(world, backend=OnnxBackend(site, threads=1)), acts, seed=7)
    z_ref, f_ref = session_rollout(WorldSession(world, backend="eager"), acts, seed=7)
    assert np.abs(f_onnx.astype(int) - f_ref).max() <= 1 and np.abs(z_onnx - z_ref).max() < 1e-3


@pytest.fixture
def page(site, tmp_path):
    from neuralworld.play.export import StaticServer

    with StaticServer(site) as served, _browser_page(served.url, tmp_path) as page:
        yield page


@needs_ort_web
def test_page_walks_the_field_as_the_python_session_does(page, site, world, tmp_path):
    """The exported page in headless Chromium, network cut: its seeded rollout (turning and
    walking) is the Python session's, frame for frame; starting from an image locates it."""
    assert "in this browser" in page.inner_text("#status")
    m = json.loads((site / "world.json").read_text())
    norm = lambda a: [float(v) for v in world.spec.normalize(a)]  # noqa: E731
    acts = [norm(a) for a in actions(world, 8)]
    frames, latents = _rollout(page, acts, 7)
    z_ref, f_ref = session_rollout(WorldSession(world, backend="eager"), acts, seed=7)
    diff = np.abs(frames[..., :3].astype(int) - f_ref)
    assert diff.max() <= 1 and np.abs(latents - z_ref).max() < 1e-3
    assert np.abs(f_ref[-1].astype(int) - world.start_frames[-1]).mean() > 5, "the view moved"
    assert m["model"] == "field"

    import cv2

    with torch.no_grad():
        seen = world.dynamics.render(torch.tensor([[136.0, 48.0, 0.0, 3.0]]))
    img = ((seen[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "start.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    page.set_input_files("#start-image", str(tmp_path / "start.png"))
    page.wait_for_function("nw.messages.some(m => m.type === 'started')", timeout=20_000)
    assert page.evaluate("nw.messages.find(m => m.type === 'started')")["image"] == [64, 64]


def test_export_keeps_the_half_precision_tables_at_half_size(world, tmp_path):
    """The tables a bundle stores at half precision go into the graphs as float16 (cast back to
    float32 inside), so the download halves; weights trained in float32 stay float32 (the graphs'
    outputs are checked against eager above)."""
    import onnx

    folder = export_onnx(world, tmp_path)
    for f in ("dynamics_step.onnx", LOCATE_FILE):
        inits = onnx.load(str(folder / f)).graph.initializer
        size = lambda kind: sum(int(np.prod(i.dims)) for i in inits if i.data_type == kind)  # noqa: E731
        tables = sum(q.numel() for name, q in world.dynamics.named_parameters() if name.startswith(("grids.", "hit_grids.", "textures.")))
        assert size(onnx.TensorProto.FLOAT16) >= tables, f
        assert any(i.name == "network.col.0.weight" and i.data_type == onnx.TensorProto.FLOAT for i in inits), f
