"""The flow between recorded frames: the engine's geometry (depth + pose) and its combination with Farneback."""

import numpy as np
import torch
import pytest

from neuralworld.actions import ActionSpec, Axis
from neuralworld.data.flow import Camera, pair_flow, reprojection_flow
from neuralworld.data.store import Dataset, DatasetError, DatasetWriter

CAM = Camera(hfov_deg=90.0, aspect=4.0 / 3.0, depth_unit=10.0)
H, W = 48, 64


def test_a_turn_slides_every_row_alike_whatever_the_depth():
    rng = np.random.default_rng(0)
    depth = rng.integers(5, 200, (H, W)).astype(np.uint8)  # any scene
    old, new = np.array([0, 0, 0, 90.0]), np.array([0, 0, 0, 80.0])  # turned 10 degrees right (the angle goes down)
    flow = reprojection_flow(depth, new, old, CAM)
    fx, _ = CAM.focal(H, W)
    cx = (W - 1) / 2
    # a pixel of the new view was further right in the old one: x0 = cx + fx tan(atan((x - cx) / fx) + 10 deg)
    x = np.arange(W)
    x0 = cx + fx * np.tan(np.arctan((x - cx) / fx) + np.radians(10.0))
    np.testing.assert_allclose(flow[..., 0], np.broadcast_to(x0 - x, (H, W)), atol=1e-3)
    np.testing.assert_allclose(flow[..., 1], -flow[::-1, :, 1], atol=1e-3)  # a pinhole's rows bend alike above and below


def test_walking_at_a_wall_expands_the_picture_from_its_centre():
    depth = np.full((H, W), 20, np.uint8)  # a wall 200 units ahead
    old, new = np.array([0, 0, 0, 0.0]), np.array([50.0, 0, 0, 0.0])  # 50 units nearer
    flow = reprojection_flow(depth, new, old, CAM)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    y, x = np.mgrid[0:H, 0:W]
    # seen from 250 units away, every point sat 200/250 as far from the centre
    np.testing.assert_allclose(flow[..., 0], (x - cx) * (200 / 250 - 1), atol=1e-3)
    np.testing.assert_allclose(flow[..., 1], (y - cy) * (200 / 250 - 1), atol=1e-3)


def test_the_eye_bobbing_up_moves_the_picture_down_and_the_offset_pushes_the_wall_back():
    depth = np.full((H, W), 20, np.uint8)  # a wall 200 units ahead
    old, new = np.array([0, 0, 0, 0.0, 41.0]), np.array([0, 0, 0, 0.0, 46.0])  # the eye 5 units higher
    _, fy = CAM.focal(H, W)
    np.testing.assert_allclose(reprojection_flow(depth, new, old, CAM)[..., 1], -fy * 5 / 200, atol=1e-3)  # each pixel was higher in the old view
    far = Camera(hfov_deg=90.0, aspect=4.0 / 3.0, depth_unit=10.0, depth_offset=50.0)  # the same reading, 250 units
    np.testing.assert_allclose(reprojection_flow(depth, new, old, far)[..., 1], -fy * 5 / 250, atol=1e-3)
    np.testing.assert_allclose(reprojection_flow(depth, new[:4], old[:4], CAM), 0.0, atol=1e-6)  # no eye: standing still
    from neuralworld.model.warp import POSE_SCALE, camera_move

    up = camera_move(torch.from_numpy(new)[None], torch.from_numpy(old)[None])[0, 2] * POSE_SCALE[2]  # the warp world's move
    assert float(up) == pytest.approx(5.0)


def test_what_is_drawn_over_the_view_stays_put():
    depth = np.full((H, W), 20, np.uint8)
    depth[-10:, 24:40] = 0  # the weapon: depth 0
    flow = reprojection_flow(depth, np.array([10.0, 5, 0, 30]), np.array([0, 0, 0, 20.0]), CAM)
    assert np.all(flow[-10:, 24:40] == 0) and np.abs(flow[:20]).mean() > 1


def test_without_depth_the_pair_flow_is_farnebacks():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    b = np.roll(a, 2, axis=1)
    from neuralworld.data.flow import optical_flow

    np.testing.assert_array_equal(pair_flow(b, a), optical_flow(b, a))
    nan_pose = np.full(4, np.nan)  # a pose the recording did not know
    np.testing.assert_array_equal(pair_flow(b, a, depth_new=np.ones((H, W), np.uint8), pose_new=nan_pose,
                                            pose_old=nan_pose, camera=CAM), optical_flow(b, a))


SPEC = ActionSpec(buttons=("forward",), axes=(Axis("turn", -10, 10),), fps=10)


def test_a_store_with_a_camera_keeps_depth_and_refuses_frames_without_it(tmp_path):
    w = DatasetWriter.create(tmp_path / "d", SPEC, (H, W), source="test", camera=CAM)
    ep = w.episode(w.next_ids(1)[0])
    frame, act = np.zeros((H, W, 3), np.uint8), np.zeros(2, np.float32)
    with pytest.raises(DatasetError, match="records depth"):
        ep.add_frame(frame, act)
    with pytest.raises(DatasetError, match="records depth"):
        ep.add_frame(frame, act, depth=np.zeros((H, W), np.float32))
    for t in range(40):  # past a chunk (32)
        ep.add_frame(frame, act, pose=[t, 0, 0, 0], depth=np.full((H, W), t, np.uint8))
    ep.save()
    ds = Dataset(tmp_path / "d")
    assert ds.info.camera == CAM
    depth = ds.episode(0).load(("depth",))["depth"]
    assert depth.shape == (40, H, W) and depth.dtype == np.uint8 and depth[33, 0, 0] == 33
    with pytest.raises(DatasetError, match="holds depth from Camera.*this recording none"):  # appending a recording without a camera
        DatasetWriter.create(tmp_path / "d", SPEC, (H, W), source="test", exist_ok=True)


def test_the_camera_turns_depth_buffer_steps_into_distances_with_its_offset():
    cam = Camera(depth_unit=10.0, depth_offset=6.0)
    np.testing.assert_allclose(cam.distance(np.array([[0, 1], [3, 255]], np.uint8)), [[0, 16], [36, 2556]])  # 0: unknown
    assert Camera.from_attrs({"hfov_deg": 90, "aspect": 4 / 3, "depth_unit": 10}).depth_offset == 0.0  # a recording that did not say


def test_a_store_without_a_camera_refuses_depth(tmp_path):
    w = DatasetWriter.create(tmp_path / "d", SPEC, (H, W), source="test")
    ep = w.episode(w.next_ids(1)[0])
    with pytest.raises(DatasetError, match="no camera"):
        ep.add_frame(np.zeros((H, W, 3), np.uint8), np.zeros(2, np.float32), depth=np.zeros((H, W), np.uint8))
    assert Dataset(tmp_path / "d").info.camera is None


def test_the_warp_worlds_reprojection_in_torch_is_the_recordings():
    """model.warp.reprojection_flow (a depth and a camera move, differentiable) draws the flow
    data.flow.reprojection_flow draws from the recorded depth and poses."""
    import torch

    from neuralworld.model.warp import camera_move
    from neuralworld.model.warp import reprojection_flow as torch_flow

    rng = np.random.default_rng(3)
    for k in range(6):
        cam = CAM if k < 5 else Camera(hfov_deg=90.0, aspect=4.0 / 3.0, depth_unit=10.0, depth_offset=6.0)
        depth = rng.integers(0, 120, (H, W)).astype(np.uint8)
        depth[-8:, 20:44] = 0  # the weapon
        old = np.array([*rng.uniform(-500, 500, 2), rng.uniform(0, 40), rng.uniform(0, 360)])
        new = old + np.array([*rng.uniform(-40, 40, 2), rng.uniform(-8, 8), rng.uniform(-25, 25)])
        want = reprojection_flow(depth, new, old, cam)
        move = camera_move(torch.tensor(new)[None], torch.tensor(old)[None])
        got = torch_flow(torch.from_numpy(depth).double()[None, None] / 255.0, move, hfov_deg=cam.hfov_deg,
                         aspect=cam.aspect, depth_unit=cam.depth_unit, depth_offset=cam.depth_offset)[0].permute(1, 2, 0).numpy()
        keep = np.abs(want).max(-1) < 200  # beside a point at the old camera's plane the projection runs off
        np.testing.assert_allclose(got[keep], want[keep], atol=1e-3)
        assert np.all(got[-8:, 20:44] == 0)
