"""The field world (model/field.py): rendering reads, kinematics and walls, the session's pose,
localisation, and training it for real (slow: records with ViZDoom)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import neuralworld
from neuralworld.actions import ActionSpec
from neuralworld.bundle import BundleError, load_bundle, save_bundle
from neuralworld.model.config import ConfigError
from neuralworld.model.field import (
    EYE, TEXTURE_FLOOR, FieldConfig, FieldNet, FieldNetConfig, body_move, field_preset, fit_bob, fit_kinematics, fit_stuck, walk_speeds,
)
from neuralworld.model.unet import PixelCodec
from neuralworld.state_io import load_tensors

CLI = str(Path(sys.executable).with_name("neuralworld"))


def spec() -> ActionSpec:
    from neuralworld.record.doom import doom_action_spec

    return doom_action_spec(frame_skip=2)


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    """Three short ViZDoom episodes at 32x32, with poses."""
    pytest.importorskip("vizdoom")
    from neuralworld.record.doom import RecordConfig, record

    out = tmp_path_factory.mktemp("data") / "d32"
    record(RecordConfig(env="doom/freedoom_map01", episodes=3, workers=2, resolution=(32, 32), max_steps=40), out, progress=False)
    return out


def small_net(resolution=(32, 32), walls=None, renderer="column", texture=0.0, exact=False) -> FieldNet:
    """``texture``: the ray renderer's surface texture cell (0: none); ``exact``: its exact_hit."""
    cfg = FieldNetConfig(cells=(16.0, 64.0), angles=(36, 12), features=4, column_channels=32, decoder_channels=8,
                         bounds=(0.0, 0.0, 256.0, 128.0), bank_size=64, locate_candidates=2, locate_steps=10,
                         renderer=renderer, hit_cells=(8.0, 32.0), hit_features=4, reach=64.0,
                         texture_cell=texture, texture_table=12, exact_hit=exact).validate()
    torch.manual_seed(0)
    net = FieldNet(cfg, resolution=resolution, action_size=spec().size).eval()
    if walls is not None:
        net.walls.copy_(torch.as_tensor(walls, dtype=torch.float32))
    return net


def lively_net(resolution=(32, 32), renderer="column", texture=0.0, exact=False) -> tuple[FieldNet, np.ndarray]:
    """A small field whose look changes with the pose (an untrained one barely does), its bank
    filled with its own renders at a grid of 64 poses; returns (net, those poses)."""
    net = small_net(resolution, renderer=renderer, texture=texture, exact=exact)
    with torch.no_grad():
        for name, q in net.named_parameters():
            if name.startswith(("grids.", "hit_grids.", "textures.")):
                q.mul_(10)
            elif not name.startswith(("overlay", "camera")):
                q.mul_(2)
    poses = np.array([[40.0 + 24 * (i % 8), 24.0 + 24 * ((i // 8) % 4), 0.0, 90.0 * (i // 32)] for i in range(64)], np.float32)
    with torch.no_grad():
        net.bank_thumbs.copy_(F.avg_pool2d(net.render(torch.from_numpy(poses)), 8))
        net.bank_poses.copy_(torch.from_numpy(poses))
    return net, poses


def hand_kinematics(net: FieldNet) -> None:
    """forward: 10 units a frame; the turn axis turns by minus its value (ViZDoom: + is right)."""
    s = spec()
    K = torch.zeros_like(net.kinematics)
    K[2 + s.buttons.index("forward"), 0] = 10.0
    turn = 2 + len(s.buttons) + [a.name for a in s.axes].index("turn")
    scale = float(s.normalize(s.make(turn=1.0))[turn - 2])  # normalised units per degree
    K[turn, 2] = -1.0 / scale
    net.kinematics.copy_(K)


def test_gathered_read_is_trilinear_grid_sample():
    """The eight-corner gathers equal a 5-D grid_sample (align_corners, border, angle wrapped)."""
    net = small_net()
    g = torch.randn(1, 3, 12, 5, 7)
    xy = torch.tensor([[0.3, 0.7], [-0.2, 1.4], [1.0, 0.0]])  # inside, beyond both borders, on them
    ang = torch.tensor([[0.0, 17.5, 359.9], [-40.0, 400.0, 180.0], [29.99, 30.0, 330.01]])
    got = net._read(g, xy, ang)  # (B, C, W)
    wrapped = torch.cat([g, g[:, :, :1]], 2)
    B, W = ang.shape
    grid = torch.stack([xy[:, None, 0].expand(B, W) * 2 - 1, xy[:, None, 1].expand(B, W) * 2 - 1,
                        torch.remainder(ang, 360.0) / 360.0 * 2 - 1], -1)
    want = F.grid_sample(wrapped, grid.reshape(1, B * W, 1, 1, 3), align_corners=True, padding_mode="border")
    assert torch.allclose(got, want.reshape(3, B, W).permute(1, 0, 2), atol=1e-5)


def test_ray_renderer_places_rows_by_depth_and_reads_the_hit_point():
    """The "ray" renderer's geometry: a wall twice as near spans twice the rows (each row's world
    height scales with depth about the eye), and a column's ray meets the map at its planar depth."""
    net = small_net(renderer="ray")
    pose = torch.tensor([[100.0, 60.0, 8.0, 90.0]])  # facing +y, floor at 8
    near, far = net.pixel_heights(pose, torch.full((1, 32), 50.0)), net.pixel_heights(pose, torch.full((1, 32), 100.0))
    eye = 8.0 + 41.0
    assert torch.allclose(far - eye, 2 * (near - eye), atol=1e-4)
    assert near[0, 0, 0] > eye > near[0, -1, 0]  # the top row looks up, the bottom row down
    wall_rows = lambda h: int(((h[0, :, 0] > 8.0) & (h[0, :, 0] < 8.0 + 72.0)).sum())  # noqa: E731  a 72-unit wall
    assert wall_rows(near) > 1.6 * wall_rows(far)
    ang = pose[:, 3:4] + net.col_angle[None]
    hit = net.hit_points(pose, ang, torch.full((1, 32), 40.0))
    assert torch.allclose(hit[0, :, 1], torch.full((32,), 100.0), atol=1e-3)  # every column meets the plane 40 ahead
    assert hit[0, 0, 0] < 100.0 < hit[0, -1, 0]  # the left column meets it to the left (-x when facing +y)
    two = torch.tensor([[100.0, 60.0, 0.0, 0.0], [150.0, 80.0, 0.0, 200.0]])
    depth = net.march_depth(two, two[:, 3:4] + net.col_angle[None])
    assert depth.shape == (2, 32) and (depth >= 1.0).all()
    assert net.render(two).shape == (2, 3, 32, 32) and torch.isfinite(net.render(two)).all()


def test_surface_points_land_on_the_floor_or_the_wall_and_the_texture_reads_them_trilinearly():
    """Each pixel's point: rows looking down meet the pose's floor (EYE below the eye, as far as
    their slope says) before the wall; the others are on the wall their column met. The texture
    is a trilinear read of the hashed corners (at a corner: that corner's entry)."""
    from neuralworld.model.field import EYE, HASH_PRIMES, TEXTURE_FLOOR

    net = small_net(renderer="ray", texture=2.0)
    wall_at_x(net, 200.0)
    pose = torch.tensor([[100.0, 60.0, 8.0, 0.0]])  # facing the wall (+x), floor at 8
    ang = pose[:, 3:4] + net.col_angle[None]
    depth = net.march_depth(pose, ang)
    pts = net.surface_points(pose, ang, depth, net.pixel_heights(pose, depth))[0].detach()  # (H, W, 3)
    mid = 15  # a column near the view's centre
    slope = (net.camera[0] - torch.arange(32.0)) / net.camera[1].exp()
    on_floor = (slope < 0) & (41.0 / -slope.clamp(max=-1e-3) < depth[0, mid])
    assert on_floor.any() and not on_floor.all()
    assert torch.allclose(pts[on_floor, mid, 2], torch.full((int(on_floor.sum()),), 8.0))
    ahead = pts[on_floor, mid, 0] - 100.0  # along the view (facing +x)
    assert torch.allclose(ahead, 41.0 / -slope[on_floor].detach(), rtol=1e-4)
    assert (ahead < depth[0, mid]).all()
    hit = net.hit_points(pose, ang, depth)[0]
    assert torch.allclose(pts[~on_floor, mid, :2], hit[mid].expand(int((~on_floor).sum()), 2), atol=1e-3)
    assert pts[0, mid, 2] > 8.0 + 41.0  # the top row looks up the wall

    table = net.textures[0]
    def entry(i, j, k):
        return table[(i * HASH_PRIMES[0] + j * HASH_PRIMES[1] + k * HASH_PRIMES[2]) % table.shape[0]]
    origin = torch.tensor([float(net.hit_lo[0]), float(net.hit_lo[1]), -TEXTURE_FLOOR])
    corner = origin + 2.0 * torch.tensor([10.0, 7.0, 2052.0])  # cell (10, 7, 2052) of the finest level
    halfway = corner + torch.tensor([1.0, 0.0, 0.0])  # half a cell along x
    got = net.texture(torch.stack([corner, halfway])[None, None])[0, :4, 0]  # (F, 2) the finest level
    assert torch.allclose(got[:, 0], entry(10, 7, 2052), atol=1e-5)
    assert torch.allclose(got[:, 1], (entry(10, 7, 2052) + entry(11, 7, 2052)) / 2, atol=1e-5)
    y = net.render(pose)
    y.sum().backward()
    assert table.grad is not None and 0 < int((table.grad.abs().sum(1) > 0).sum()) < table.shape[0]


def test_texture_footprint_keeps_the_read_and_shares_out_the_gradient_by_what_a_pixel_resolves():
    """texture_footprint: a point 200 units from the eye (a pixel spans 200 / 16 = 12.5 units at 32
    px and 90 degrees) passes back a small share of its gradient, a point 8 units away most of it;
    the coarse level more than the fine; the read's value is the same. A rendered frame is too."""
    import math

    net = small_net(renderer="ray", texture=2.0)
    wall_at_x(net, 200.0)
    pose = torch.tensor([[0.0, 60.0, 0.0, 0.0]])
    pts = torch.tensor([[[[200.0, 60.0, 41.0], [8.0, 60.0, 41.0]]]])  # (1, 1, 2, 3): far, near (level with the eye)
    assert torch.allclose(net.footprint(pose, pts), torch.tensor([[[200.0, 8.0]]]) * 2 / 2)  # 2 tan 45 deg / W (W = 2 here)
    plain = net.texture(pts)
    pix = net.footprint(pose, pts) * 2 / 32  # as at 32 columns
    shared = net.texture(pts, footprint=pix)
    assert torch.equal(plain, shared)
    grads = []
    for p in (pix[..., :1], pix[..., 1:]):
        net.zero_grad()
        net.texture(pts[:, :, : 1] if p is pix[..., :1] else pts[:, :, 1:], footprint=p).sum().backward()
        grads.append([float(t.grad.abs().sum()) for t in net.textures])
    (far_fine, far_coarse), (near_fine, near_coarse) = grads
    cell = net.config.texture_cell
    assert far_fine / near_fine == pytest.approx(math.erf(cell / (math.sqrt(8) * 12.5)) / math.erf(cell / (math.sqrt(8) * 0.5)), rel=1e-3)
    assert far_fine / near_fine < 0.1 and far_coarse / near_coarse > far_fine / near_fine
    poses = torch.tensor([[100.0, 60.0, 8.0, 0.0], [150.0, 50.0, 8.0, 20.0]])
    before = net.render(poses)
    net.config.texture_footprint = True
    assert torch.equal(before, net.render(poses))


def test_texture_snap_reads_one_value_per_cell_along_the_surface_and_stays_continuous_across_it():
    """texture_snap 1: on a wall (x = const) the finest level's read is the same anywhere in a
    cell along y and height (the read at the cell's middle); across the wall it still ramps. The
    coarse level is not snapped. A rendered wall square to the view gets its normal axis x."""
    net = small_net(renderer="ray", texture=2.0, exact=True)
    net.config.texture_snap = 1
    wall_at_x(net, 200.0)
    origin = torch.tensor([float(net.hit_lo[0]), float(net.hit_lo[1]), -TEXTURE_FLOOR])
    base = origin + 2.0 * torch.tensor([10.0, 7.0, 2052.0])  # a corner of the finest level's cell (10, 7, 2052)
    along = torch.stack([base + torch.tensor([0.0, dy, dz]) for dy, dz in ((0.2, 0.2), (1.0, 1.5), (1.9, 0.7))])
    across = torch.stack([base + torch.tensor([dx, 1.0, 1.0]) for dx in (0.0, 1.0)])
    pts = torch.cat([along, across])[None, None]  # (1, 1, 5, 3)
    wall = torch.zeros(1, 1, 5)  # normal axis 0 (x) for all
    got = net.texture(pts, wall)[0, :, 0]  # (2F, 5)
    F_ = net.config.texture_features
    fine, coarse = got[:F_], got[F_:]
    assert torch.allclose(fine[:, 0], fine[:, 1], atol=1e-6) and torch.allclose(fine[:, 0], fine[:, 2], atol=1e-6)
    assert torch.allclose(fine[:, 0], fine[:, 3], atol=1e-6)  # x at the corner: the cell's middle along y, z
    assert not torch.allclose(fine[:, 3], fine[:, 4], atol=1e-4)  # half a cell across the wall: a ramp
    assert not torch.allclose(coarse[:, 0], coarse[:, 1], atol=1e-4)  # the coarse level stays trilinear
    with pytest.raises(ValueError, match="normals"):
        net.texture(pts)
    pose = torch.tensor([[100.0, 60.0, 8.0, 0.0]])
    ang = pose[:, 3:4] + net.col_angle[None]
    depth = net.march_depth(pose, ang)
    points = net.surface_points(pose, ang, depth, net.pixel_heights(pose, depth))
    floor = net._sees_floor(depth, net.eye(pose))[0]
    normals = net.surface_normals(points, floor)
    assert (normals[floor] == 2).all() and (normals[~floor] == 0).all()
    assert torch.isfinite(net.render(pose)).all()
    with pytest.raises(ConfigError, match="texture_snap"):
        FieldNetConfig(texture_snap=3).validate()


def test_column_depth_skips_the_weapon():
    from neuralworld.train.field import column_depth

    d = np.full((2, 8, 4), 30, np.uint8)
    d[:, 3, 1], d[:, 4, 1] = 0, 6  # the weapon hides one of column 1's middle rows
    d[:, 2:6, 2] = 0  # all of column 2
    d[1, :, 3] = 90
    d[0, 2:4, 3] = 4
    got = column_depth(d)
    assert got.shape == (2, 4) and np.allclose(got[:, 1], 30.0)  # of 30, 6, 30 (not 0)
    assert np.all(got[:, 2] == 0) and got[0, 0] == 30 and got[1, 3] == 90 and got[0, 3] == 17


def wall_at_x(net: FieldNet, x: float) -> None:
    """A wall map with one wall: the plane x = ``x`` (a column of cells)."""
    cell = net.config.occupancy_cell
    occ = torch.zeros_like(net.occupancy)
    occ[:, int((x - float(net.hit_lo[0])) // cell)] = 1.0
    net.occupancy.copy_(occ)


def test_march_finds_the_first_wall_and_fit_occupancy_finds_the_walls():
    net = small_net(renderer="ray")
    wall_at_x(net, 200.0)
    pose = torch.tensor([[100.0, 60.0, 0.0, 0.0]])  # facing the wall (+x), 100 units from it
    depth = net.march_depth(pose, pose[:, 3:4] + net.col_angle[None])
    assert torch.allclose(depth, torch.full_like(depth, 100.0), atol=2.5)  # a wall square to the view: one depth
    away = torch.tensor([[100.0, 60.0, 0.0, 180.0]])
    assert torch.all(net.march_depth(away, away[:, 3:4] + net.col_angle[None]) > 500)  # nothing that way: far
    # exact_hit: where the ray enters the wall's cells, exactly, and smoothly as the camera moves
    net.config.exact_hit = True
    face = float(net.hit_lo[0]) + (200.0 - float(net.hit_lo[0])) // net.config.occupancy_cell * net.config.occupancy_cell
    for x in (100.0, 100.3, 100.7, 101.1):
        for yaw in (0.0, 17.0, -31.0):
            p = torch.tensor([[x, 60.0, 0.0, yaw]])
            ang = p[:, 3:4] + net.col_angle[None]
            d = net.march_depth(p, ang)[0]
            along = (face - x) / torch.cos(torch.deg2rad(ang[0]))  # along each ray to the plane x = face
            y = 60.0 + along * torch.sin(torch.deg2rad(ang[0]))
            meets = (y > -60) & (y < 188)  # inside the wall map (y from -64 to 192)
            assert meets.sum() > 20
            assert torch.allclose(d[meets], (along * net.col_cos)[meets], atol=1e-3), (x, yaw)
    assert torch.all(net.march_depth(away, away[:, 3:4] + net.col_angle[None]) > 500)
    net.config.exact_hit = False
    # recorded rays against that wall (and, in a few frames, a monster at x = 150) give the wall back
    from neuralworld.train.field import fit_occupancy

    rng = np.random.default_rng(0)
    poses = np.stack([rng.uniform(20, 180, 200), rng.uniform(10, 110, 200), np.zeros(200), rng.uniform(-30, 30, 200)], 1)
    ang = np.radians(poses[:, 3:4] + net.col_angle.numpy()[None])
    planar = ((200.0 - poses[:, 0:1]) / np.cos(ang)) * np.cos(np.radians(net.col_angle.numpy()))[None]
    planar[:10] = np.maximum(1.0, (150.0 - poses[:10, 0:1]) / np.cos(ang[:10])) * np.cos(np.radians(net.col_angle.numpy()))[None]
    planar[:10][poses[:10, 0] > 150] = 0.0  # (behind the monster: unknown)
    planar[:, 3] = 0.0  # a column the weapon hides
    occ = fit_occupancy(net, poses.astype(np.float32), planar.astype(np.float32))
    x_of = lambda ix: float(net.hit_lo[0]) + (ix + 0.5) * net.config.occupancy_cell  # noqa: E731
    walls_x = {round(x_of(ix)) for ix in np.nonzero(occ.any(0))[0]}
    assert walls_x and all(195 <= x <= 205 for x in walls_x), walls_x  # the wall, not the monster
    band = occ[(np.arange(occ.shape[0]) * 2 - 64 > 20) & (np.arange(occ.shape[0]) * 2 - 64 < 100)]
    assert band.any(1).mean() > 0.9  # along the wall where the rays met it


def test_kinematics_fit_recovers_a_linear_law():
    rng = np.random.default_rng(0)
    K_true = rng.normal(size=(2 + 3 + 1, 3)).astype(np.float32) * 0.3
    moves, actions = [], []
    for _ in range(4):
        a = rng.normal(size=(50, 3)).astype(np.float32)
        mv = np.zeros((49, 3), np.float32)
        for t in range(1, 49):
            mv[t] = np.concatenate([mv[t - 1, :2], a[t], [1.0]]) @ K_true
        moves.append(mv), actions.append(a)
    assert np.allclose(fit_kinematics(moves, actions), K_true, atol=1e-4)
    assert np.allclose(fit_kinematics(moves, actions, blocked_mads=None), K_true, atol=1e-4)
    with pytest.raises(ValueError):
        fit_kinematics([np.zeros((1, 3))], [np.zeros((1, 3))])


def test_kinematics_fit_leaves_out_moves_a_wall_cut_short():
    """A walk with Doom's momentum (each step keeps 0.82 of the last move and the forward key
    adds 2.9), a quarter of its moves stopped dead by walls: plain least squares learns a
    slower, lazier camera; the fit that leaves out the short moves learns the free one."""
    rng = np.random.default_rng(1)
    K_true = np.zeros((2 + 1 + 1, 3), np.float32)
    K_true[0, 0], K_true[1, 1], K_true[2, 0] = 0.82, 0.82, 2.9  # forward follows momentum and the key
    moves, actions = [], []
    for _ in range(20):
        a = np.repeat((rng.random((25, 1)) < 0.7).astype(np.float32), 8, 0)[:200]  # forward held or not, 8 frames at a time
        mv = np.zeros((199, 3), np.float32)
        for t in range(1, 199):
            mv[t] = np.concatenate([mv[t - 1, :2], a[t], [1.0]]) @ K_true + rng.normal(0, 0.05, 3)
            if rng.random() < 0.25:
                mv[t, :2] = 0.0  # a wall: no move this frame
        moves.append(mv), actions.append(a)
    plain, free = fit_kinematics(moves, actions, blocked_mads=None), fit_kinematics(moves, actions)
    assert abs(free[0, 0] - 0.82) < 0.03 and abs(free[2, 0] - 2.9) < 0.15
    assert abs(plain[0, 0] - 0.82) > 3 * abs(free[0, 0] - 0.82) or abs(plain[2, 0] - 2.9) > 3 * abs(free[2, 0] - 2.9)


def test_body_move_is_in_the_old_cameras_frame():
    old = torch.tensor([[0.0, 0.0, 0.0, 90.0]])  # facing +y
    new = torch.tensor([[-3.0, 10.0, 0.0, 80.0]])
    assert torch.allclose(body_move(new, old), torch.tensor([[10.0, 3.0, -10.0]]), atol=1e-5)


def test_advance_turns_walks_slides_and_stops_at_walls():
    walls = np.ones((8, 16), np.float32)  # 16-unit cells over 256 x 128
    walls[:, 8] = 0.0  # a wall at x in [128, 144)
    walls[5, :] = 0.0  # and one at y in [80, 96)
    net = small_net(walls=walls)
    hand_kinematics(net)
    s = spec()
    a = lambda **kw: torch.from_numpy(s.normalize(s.make(**kw)))[None]  # noqa: E731
    pose, move = torch.tensor([[40.0, 40.0, 0.0, 0.0]]), torch.zeros(1, 2)
    p, m = net.advance(pose, move, a(turn=8.0))
    assert torch.allclose(p[0, 3], torch.tensor(352.0)) and torch.allclose(p[0, :2], pose[0, :2])
    p, m = net.advance(pose, move, a(forward=1))
    assert torch.allclose(p[0, :2], torch.tensor([50.0, 40.0])) and torch.allclose(m, torch.tensor([[10.0, 0.0]]))
    p, _ = net.advance(torch.tensor([[124.0, 40.0, 0.0, 0.0]]), move, a(forward=1))  # into the wall: stops
    assert torch.allclose(p[0, :2], torch.tensor([124.0, 40.0]))
    p, m = net.advance(torch.tensor([[124.0, 40.0, 0.0, 45.0]]), move, a(forward=1))  # at 45 degrees: slides along y
    assert torch.allclose(p[0, 0], torch.tensor(124.0)) and p[0, 1] > 45.0 and torch.all(m == 0)
    p, _ = net.advance(torch.tensor([[136.0, 40.0, 0.0, 180.0]]), move, a(forward=1))  # stranded in a wall: walks out
    assert torch.allclose(p[0, :2], torch.tensor([126.0, 40.0]))


def test_a_placed_camera_keeps_the_momentum_it_had_between_placements():
    """Teacher forcing places the camera on every real frame: it keeps the move between the last
    two placements (Doom's player has momentum), unless the frame was seen far from where the
    camera was expected (a new place), and a start is at rest."""
    net = small_net()
    hand_kinematics(net)
    frames = torch.zeros(1, 3, 32, 32)
    cache = net.new_cache(1)
    p0 = torch.tensor([[60.0, 40.0, 0.0, 90.0]])
    net.place(cache, frames, p0, start=True)
    assert not cache.move.any() and torch.equal(cache.home, p0)
    net.append(frames, 0.0, torch.from_numpy(spec().normalize(spec().make(forward=1)))[None], cache)
    assert torch.equal(cache.last, p0) and cache.move[0, 2] > 0  # the walk's speed
    walk = cache.move[:, 2:].clone()
    p1 = torch.tensor([[58.0, 47.0, 0.0, 90.0]])  # 7 forward and 2 left of p0, facing +y
    net.place(cache, frames, p1)
    assert torch.allclose(cache.move[:, :2], torch.tensor([[7.0, 2.0]]), atol=1e-4) and torch.equal(cache.move[:, 2:], walk)
    assert torch.equal(cache.pose, p1) and cache.last is None and torch.equal(cache.home, p0)
    net.place(cache, frames, p0)  # no frame appended since: nothing to read a move from
    assert not cache.move.any()
    net.append(frames, 0.0, torch.from_numpy(spec().normalize(spec().make(forward=1)))[None], cache)
    net.place(cache, frames, p0 + torch.tensor([[100.0, 0.0, 0.0, 0.0]]))  # far from where the walk took it: a new place
    assert not cache.move.any()
    net.append(frames, 0.0, torch.from_numpy(spec().normalize(spec().make(forward=1)))[None], cache)
    net.place(cache, frames, p1, start=True)
    assert not cache.move.any()


def test_fit_bob_finds_dooms_law_and_a_standing_eye_has_none():
    rng = np.random.default_rng(0)
    eyes, speeds = [], []
    for _ in range(6):
        v = np.clip(np.cumsum(rng.normal(0, 2, 300)), 0, 16)  # a walk that speeds up and stops
        t = np.arange(300)
        eyes.append(EYE + np.minimum(0.03 * v**2, 7.0) * np.sin(2 * np.pi * t / 10 + 2.8) + rng.normal(0, 0.3, 300))
        speeds.append(v)
    bob = fit_bob(eyes, speeds)
    assert bob["bob_period"] == pytest.approx(10.0, abs=0.06) and bob["bob_phase"] == pytest.approx(2.8, abs=0.1)
    assert bob["bob_gain"] == pytest.approx(0.03, rel=0.15) and bob["bob_max"] == pytest.approx(7.0, abs=0.6)
    assert bob["share"] > 0.9
    standing = fit_bob([EYE + rng.normal(0, 0.3, 300) for _ in range(3)], speeds[:3])
    assert standing["bob_gain"] == 0.0 and standing["bob_period"] == 0.0


def test_walk_speeds_follow_what_the_legs_push_for():
    s = spec()
    K = np.zeros((2 + s.size + 1, 3), np.float32)
    K[2 + s.buttons.index("forward"), 0] = 10.0
    acts = s.normalize(np.stack([s.make(forward=1)] * 4 + [s.noop()] * 2))
    moves = np.zeros((5, 3))  # pressed into a wall: no move at all
    v = walk_speeds(moves, acts, K)
    assert v[0] == 0 and np.allclose(v[1:5], [5.0, 7.5, 8.75, 9.375]) and np.allclose(v[5], 4.6875)
    v = walk_speeds(moves, acts, K, stuck=4.0)  # a stuck move counts as its own speed; standing is not stuck
    assert np.allclose(v[1:5], [2.0, 3.0, 3.5, 3.75]) and np.allclose(v[5], 1.875)


def test_fit_stuck_finds_the_bob_of_a_player_pressed_into_a_wall():
    """Walks that run into walls: the recorded eye bobs at a stuck move as if the walk went at 5
    units a frame (what Doom's momentum keeps). The push itself (10 from rest) fits worse."""
    s = spec()
    K = np.zeros((2 + s.size + 1, 3), np.float32)
    K[2 + s.buttons.index("forward"), 0] = 10.0
    rng = np.random.default_rng(2)
    bob = {"bob_period": 10.0, "bob_phase": 1.0, "bob_gain": 0.03, "bob_max": 7.0}
    eyes, moves, acts = [], [], []
    for _ in range(4):
        a = s.normalize(np.stack([s.make(forward=1) if (t // 40) % 3 else s.noop() for t in range(200)]))
        m = np.zeros((199, 3))
        m[:, 0] = np.where((np.arange(199) // 20) % 2 == 1, 0.0, 10.0 * a[:199, s.buttons.index("forward")])  # walls
        v = walk_speeds(m, a, K, stuck=5.0)
        t = np.arange(200)
        eyes.append(EYE + np.minimum(0.03 * v**2, 7.0) * np.sin(2 * np.pi * t / 10 + 1.0) + rng.normal(0, 0.1, 200))
        moves.append(m), acts.append(a)
    fit = fit_stuck(eyes, moves, acts, K, bob)
    assert fit["bob_stuck"] == pytest.approx(5.0, abs=0.15) and fit["stuck_frames"] > 100
    free = [np.where(m > 0, m, 10.0 * a[:199, s.buttons.index("forward"), None]) for m, a in zip(moves, acts)]
    assert fit_stuck(eyes, free, acts, K, bob) == {"bob_stuck": 0.0, "stuck_frames": 0.0}  # nothing stuck
    assert fit_stuck(eyes, moves, acts, K, {**bob, "bob_gain": 0.0})["bob_stuck"] == 0.0  # no bob


def test_the_view_bobs_as_the_camera_walks_even_against_a_wall():
    net, _ = lively_net(renderer="ray")
    net.config.player_radius = 14.0
    hand_kinematics(net)
    wall_at_x(net, 200.0)
    s = spec()
    fwd = torch.from_numpy(s.normalize(s.make(forward=1)))[None]
    still = torch.from_numpy(s.normalize(s.noop()))[None]
    pose, move = torch.tensor([[185.0, 60.0, 0.0, 0.0]]), torch.zeros(1, 4)  # 15 units from the wall, facing it
    latent = torch.zeros(1, 3, 32, 32)
    frames, eyes = [], []
    for _ in range(12):  # pressed into the wall: the pose stays, the legs push
        frames.append(latent - net.step_with_cache_tensors(latent, torch.ones(1), fwd, pose, move)[0])
        pose2, move = net.advance(pose, move, fwd)
        assert torch.equal(pose2, pose)
        eyes.append(float(net.walk(move)[0, 0]))
    assert float(move[0, 3]) == 12 and float(move[0, 2]) > 9.9  # the clock runs (no period to wrap it)
    assert all(e == EYE for e in eyes) and all(torch.equal(f, frames[0]) for f in frames)  # no bob fitted: frozen
    net.config.bob_period, net.config.bob_phase, net.config.bob_gain, net.config.bob_max = 10.0, 0.0, 0.05, 4.0
    move = torch.zeros(1, 4)
    frames, eyes = [], []
    for _ in range(20):
        frames.append(latent - net.step_with_cache_tensors(latent, torch.ones(1), fwd, pose, move)[0])
        _, move = net.advance(pose, move, fwd)
        eyes.append(float(net.walk(move)[0, 0]))
    assert float(move[0, 3]) == 20  # the clock wraps after CLOCK_WRAP periods (160 frames)
    assert max(eyes[10:]) == pytest.approx(EYE + 4.0, abs=0.3) and min(eyes[10:]) == pytest.approx(EYE - 4.0, abs=0.3)
    assert np.allclose(eyes[4:10], eyes[14:20], atol=1e-3) and not np.allclose(eyes[4:10], eyes[9:15], atol=1)  # ten frames a cycle
    moved = lambda a, b: bool((a - b).abs().mean() > 1e-3)  # noqa: E731
    assert all(moved(a, b) or moved(a, c) for a, b, c in zip(frames[4:], frames[5:], frames[6:]))  # never frozen
    for _ in range(30):  # standing: the bob dies away
        _, move = net.advance(pose, move, still)
    assert abs(float(net.walk(move)[0, 0]) - EYE) < 1e-3
    net.config.bob_stuck = 6.0  # a stuck move's own speed (fit_stuck): pressed into the wall, the bob is 0.05 * 36
    eyes = []
    for _ in range(20):
        _, move = net.advance(pose, move, fwd)
        eyes.append(float(net.walk(move)[0, 0]))
    assert max(eyes[10:]) == pytest.approx(EYE + 1.8, abs=0.1) and min(eyes[10:]) == pytest.approx(EYE - 1.8, abs=0.1)
    free = torch.tensor([[185.0, 60.0, 0.0, 180.0]])  # turned away from the wall the walk is not stuck: the push, capped at 4
    for _ in range(10):
        free, move = net.advance(free, move, fwd)
    assert float(free[0, 0]) == pytest.approx(85.0) and float(move[0, 2]) > 9.9 and float(net.bob_amplitude(move[:, 2])[0]) == pytest.approx(4.0)


def test_fit_weapon_finds_the_weapons_bob_and_render_moves_the_overlay():
    from neuralworld.train.field import fit_weapon

    rng = np.random.default_rng(1)
    H = W = 32
    period, phase, gx, gy = 10.0, 1.0, 0.4, 0.5
    frames, amps = [], []
    for _ in range(4):
        T = 200
        amp = np.where(np.arange(T) % 100 < 30, 0.0, 7.0)  # stands, then walks
        t = np.arange(T)
        w = 2 * np.pi * t / (3.2 * period) + phase
        dx, dy = np.round(gx * amp * np.cos(w)).astype(int), np.round(gy * amp * np.abs(np.sin(w))).astype(int)
        f = rng.integers(0, 120, (T, H, W, 3)).astype(np.uint8)  # a busy background
        for i in range(T):  # a weapon: a bright block with a dark bar, bottom middle
            y0, x0 = 22 + dy[i], 13 + dx[i]
            f[i, y0 : y0 + 8, x0 : x0 + 6] = 230
            f[i, y0 + 3 : y0 + 5, x0 : x0 + 6] = 20
        frames.append(f)
        amps.append(amp)
    fit = fit_weapon(frames, amps, [np.zeros(len(a), bool) for a in amps], bob_period=period, bob_phase=0.0)
    assert fit["weapon_x"] == pytest.approx(gx, abs=0.05) and fit["weapon_y"] == pytest.approx(gy, abs=0.07)
    assert fit["weapon_phase"] == pytest.approx(phase, abs=0.1) and fit["share"] > 0.8
    still = fit_weapon([f[:, :, :, :] * 0 + 50 for f in frames], amps, [np.zeros(len(a), bool) for a in amps], bob_period=period,
                       bob_phase=0.0)
    assert still["weapon_x"] == 0.0 and still["weapon_y"] == 0.0  # nothing moves: no weapon bob
    net, _ = lively_net()
    with torch.no_grad():
        net.overlay[:, 3] = -20.0
        net.overlay[:, 3, 10, 12] = 20.0  # one opaque overlay pixel
        net.overlay[:, :3, 10, 12] = 5.0  # white
    pose = torch.tensor([[60.0, 40.0, 0.0, 0.0]])
    at_rest = net.render(torch.cat([pose, torch.tensor([[EYE, 0.0, 0.0]])], 1))
    moved = net.render(torch.cat([pose, torch.tensor([[EYE, 3.0, 2.0]])], 1))
    assert torch.allclose(at_rest, net.render(pose), atol=1e-5)
    assert moved[0, :, 12, 15].min() > 0.99 and at_rest[0, :, 10, 12].min() > 0.99 and moved[0, :, 10, 12].max() < 0.99


def test_the_camera_keeps_its_radius_from_the_wall_map():
    net = small_net(renderer="ray")
    net.config.player_radius = 14.0
    hand_kinematics(net)
    wall_at_x(net, 200.0)  # the wall's cells: x in [face, face + 2)
    face = float(net.hit_lo[0]) + (200.0 - float(net.hit_lo[0])) // net.config.occupancy_cell * net.config.occupancy_cell
    R = net.config.player_radius
    at = lambda x, y=60.0: torch.tensor([[x, y]])  # noqa: E731
    assert torch.allclose(net.clearance(at(face - 5.0)), torch.tensor([5.0]))
    assert torch.allclose(net.clearance(at(face - 100.0)), torch.tensor([R]))  # capped at the radius
    assert torch.allclose(net.clearance(at(face + 9.0)), torch.tensor([7.0]))  # past it: the box distance to its far edge
    s = spec()
    a = lambda **kw: torch.from_numpy(s.normalize(s.make(**kw)))[None]  # noqa: E731
    move = torch.zeros(1, 2)
    p, m = net.advance(torch.tensor([[face - 20.0, 60.0, 0.0, 0.0]]), move, a(forward=1))  # 10 units on: within R
    assert torch.allclose(p[0, :2], torch.tensor([face - 20.0, 60.0])) and torch.all(m == 0)
    p, _ = net.advance(torch.tensor([[face - 20.0, 60.0, 0.0, 45.0]]), move, a(forward=1))  # at 45 degrees: slides along y
    assert torch.allclose(p[0, 0], torch.tensor(face - 20.0)) and p[0, 1] > 65.0
    p, _ = net.advance(torch.tensor([[face - 30.0, 60.0, 0.0, 0.0]]), move, a(forward=1))  # stays R away: goes
    assert torch.allclose(p[0, :2], torch.tensor([face - 20.0, 60.0]))
    p, _ = net.advance(torch.tensor([[face - 5.0, 60.0, 0.0, 0.0]]), move, a(forward=1))  # placed nearer: no nearer
    assert torch.allclose(p[0, :2], torch.tensor([face - 5.0, 60.0]))
    p, _ = net.advance(torch.tensor([[face - 5.0, 60.0, 0.0, 180.0]]), move, a(forward=1))  # ... but it may back off
    assert torch.allclose(p[0, :2], torch.tensor([face - 15.0, 60.0]))
    net.config.player_radius = 0.0  # only the walked cells bound it
    p, _ = net.advance(torch.tensor([[face - 20.0, 60.0, 0.0, 0.0]]), move, a(forward=1))
    assert torch.allclose(p[0, :2], torch.tensor([face - 10.0, 60.0]))


def test_a_grown_texture_table_draws_what_it_drew():
    from neuralworld.train.field import grow_table

    net = small_net(renderer="ray", texture=1.0)
    big = small_net(renderer="ray", texture=1.0)
    big.config.texture_table = 14
    for t_small, t_big in zip(net.textures, big.textures):
        torch.nn.init.normal_(t_small)
        t_big.data = grow_table(t_small.data, 2 ** 14)
    pts = torch.rand(1, 4, 5, 3) * torch.tensor([200.0, 100.0, 64.0])
    assert big.textures[0].shape[0] == 4 * net.textures[0].shape[0]
    assert torch.allclose(net.texture(pts), big.texture(pts))


def test_a_batch_draws_its_share_of_close_views():
    from neuralworld.train.field import _batch

    close = np.array([3, 7])
    idx = _batch(np.random.default_rng(0), 1000, close, 32, 0.25).numpy()
    assert len(idx) == 32 and np.isin(idx[-8:], close).all() and idx.max() < 1000
    plain = _batch(np.random.default_rng(0), 1000, close, 32, 0.0).numpy()
    assert np.array_equal(plain, np.random.default_rng(0).integers(0, 1000, 32))  # share 0: the old draw, exactly
    assert len(_batch(np.random.default_rng(0), 1000, close[:0], 32, 0.25)) == 32  # no close views: all from the rest


def save_small(tmp_path: Path, net: FieldNet, poses: np.ndarray) -> Path:
    cfg = FieldConfig(resolution=net.latent_size, dynamics=net.config).for_spec(spec())
    frames = to_uint8(net.render(torch.from_numpy(poses)))
    return save_bundle(tmp_path / "w", cfg, PixelCodec(), net, start_frames=frames[:1], start_poses=poses[:1])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def test_a_session_renders_its_pose_and_restarts_at_home(tmp_path):
    net = small_net()
    hand_kinematics(net)
    start = np.array([[60.0, 40.0, 0.0, 30.0]], np.float32)
    world = neuralworld.load(save_small(tmp_path, net, start))
    assert world.model == "field" and np.allclose(world.start_poses, start)
    s = world.start(backend="eager")
    frames = s.rollout(np.stack([world.spec.make(forward=1, turn=5.0)] * 3))
    pose = s.cache.pose.clone()
    assert torch.allclose(pose, torch.tensor([[60 + 10 * (np.cos(np.radians(30)) + np.cos(np.radians(25)) + np.cos(np.radians(20))),
                                               40 + 10 * (np.sin(np.radians(30)) + np.sin(np.radians(25)) + np.sin(np.radians(20))),
                                               0.0, 15.0]], dtype=torch.float32), atol=1e-3)
    with torch.no_grad():
        assert np.abs(frames[-1].astype(int) - to_uint8(world.dynamics.render(pose))[0].astype(int)).max() <= 1
    b = world.start(batch_size=2, backend="eager")
    b.step(world.spec.make(forward=1))
    b.step(np.stack([world.spec.make(forward=1)] * 2), restart=np.array([False, True]))
    assert torch.allclose(b.cache.pose[1], torch.from_numpy(start[0])) and b.cache.pose[0, 0] > 75


def test_reset_from_an_image_finds_where_it_was_seen(tmp_path):
    """An image seen a few units and degrees off a bank pose: the session starts from the image
    as given, near where it was seen, and renders it more closely than from the bank pose."""
    net, poses = lively_net()
    world = neuralworld.load(save_small(tmp_path, net, poses))
    near = poses[19]
    seen = (near + np.array([3.0, -2.0, 0.0, 4.0], np.float32))[None]
    with torch.no_grad():
        image = to_uint8(net.render(torch.from_numpy(seen)))[0]
        from_bank = to_uint8(net.render(torch.from_numpy(near[None])))[0]
    s = world.start(image)
    assert np.array_equal(s.frame, image)  # the session shows the image it was given
    with torch.no_grad():
        located = to_uint8(net.render(s.cache.pose))[0]
    assert np.abs(located.astype(int) - image).mean() < np.abs(from_bank.astype(int) - image).mean()
    err = (s.cache.pose[0] - torch.from_numpy(seen[0])).abs()
    assert float(err[:2].max()) < 4.0 and float(err[3]) < 4.0, s.cache.pose


def test_bundle_keeps_the_feature_tables_at_half_precision(tmp_path):
    net, poses = lively_net(resolution=(64, 64), renderer="ray")
    path = save_small(tmp_path, net, poses[:1])
    stored, _ = load_tensors(path / "model.safetensors")
    assert stored["dynamics.hit_grids.0"].dtype == torch.float16 and stored["dynamics.pix.0.weight"].dtype == torch.float32
    loaded = neuralworld.load(path).dynamics
    assert loaded.hit_grids[0].dtype == torch.float32
    with torch.no_grad():
        a, b = to_uint8(net.render(torch.from_numpy(poses))), to_uint8(loaded.render(torch.from_numpy(poses)))
    assert np.abs(a.astype(int) - b).max() <= 2 and np.abs(a.astype(int) - b).mean() < 0.05


def test_bundle_start_poses_must_match_start_frames(tmp_path):
    net = small_net()
    cfg = FieldConfig(resolution=net.latent_size, dynamics=net.config).for_spec(spec())
    with pytest.raises(BundleError, match="start poses"):
        save_bundle(tmp_path / "w", cfg, PixelCodec(), net, start_frames=np.zeros((2, 32, 32, 3), np.uint8),
                    start_poses=np.zeros((1, 4), np.float32))


def test_presets_fit_their_configs():
    for name in ("tiny", "mini", "small", "base"):
        cfg = field_preset(name, spec(), (64, 64))
        cfg.dynamics.bounds = (0.0, 0.0, 512.0, 256.0)
        cfg.validate()


def cli(*args, check=True):
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"neuralworld {args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def test_train_field_plays_and_resumes_exactly(tmp_path, data32):
    """`neuralworld train --model field` on a ViZDoom recording: a world that plays, turns at
    the kinematics' rate, and a run stopped and resumed ends with the same weights."""
    args = ["--model", "field", "--preset", "tiny", "--log-every", 5, "--validate-every", 10, "--quiet"]
    out = json.loads(cli("train", data32, "--out", tmp_path / "straight", "--field-steps", 20, *args).stdout.strip().splitlines()[-1])
    assert out["model"] == "field" and out["held_out_psnr"] > 5 and out["kinematics_median_error"]["yaw"] < 0.5
    assert {"bob_period", "bob_gain", "share"} <= set(out["bob"])  # the walk's bob, fitted to the recorded eye
    cli("train", data32, "--out", tmp_path / "halves", "--field-steps", 10, *args)
    p = cli("train", data32, "--out", tmp_path / "halves", "--field-steps", 20, "--resume", *args)
    assert "resuming at step 10/20" in p.stdout + p.stderr
    a, _ = load_tensors(tmp_path / "straight" / "world" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "halves" / "world" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if not k.startswith("start."))
    world = load_bundle(tmp_path / "straight" / "world")
    s = world.start()
    before = float(s.cache.pose[0, 3])
    s.step(world.spec.make(turn=8.0))
    assert abs((before - 8.0) % 360 - float(s.cache.pose[0, 3])) < 1.0  # ViZDoom's turn, fitted
    # the critic stage goes on from it: same map area, its renderer as the start
    cli("train", data32, "--out", tmp_path / "adv", "--init-world", tmp_path / "straight", "--field-steps", 5,
        "--field-objective", "adv_weight=0.02", *args)
    adv = load_bundle(tmp_path / "adv" / "world")
    assert adv.config.dynamics.bounds == world.config.dynamics.bounds and adv.config.dynamics.adv_weight == 0.02
    assert not torch.equal(adv.dynamics.overlay, world.dynamics.overlay)  # it trained on from there
    # the ray renderer fits its wall map from the recording's depth buffers, and its columns meet those walls
    cli("train", data32, "--out", tmp_path / "ray", "--field-steps", 10, "--field-renderer", "ray", *args)
    ray = load_bundle(tmp_path / "ray" / "world")
    assert ray.config.dynamics.renderer == "ray" and ray.start().step(ray.spec.make(forward=1)).shape == (32, 32, 3)
    net, pose = ray.dynamics, torch.from_numpy(ray.start_poses[:1])
    assert 0 < float(net.occupancy.mean()) < 0.2
    assert float(net.march_depth(pose, pose[:, 3:4] + net.col_angle[None]).median()) < net.config.march / 2
    # a surface texture grows on a field that had none: the texture's inputs start at zero, so it draws what it drew
    cli("train", data32, "--out", tmp_path / "grown", "--init-world", tmp_path / "ray", "--field-steps", 0,
        "--field-renderer", "ray", "--field-objective", "texture_cell=2", "--field-objective", "texture_table=12", *args)
    grown = load_bundle(tmp_path / "grown" / "world")
    assert len(grown.dynamics.textures) == 2 and grown.config.dynamics.texture_cell == 2.0
    with torch.no_grad():
        assert torch.allclose(grown.dynamics.render(pose), net.render(pose), atol=1e-4)
    refused = cli("train", data32, "--out", tmp_path / "x", "--model", "field", "--field-objective", "nope=1", check=False)
    assert refused.returncode != 0 and "not a field setting" in refused.stderr
