"""Video import: visual odometry against known motion (a synthetic panorama and
ViZDoom's true angle), motion logs, bad inputs, and the import end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from neuralworld.actions import camera_motion_spec
from neuralworld.data.store import Dataset, DatasetError, EpisodeWriter
from neuralworld.record.motion import (
    IMU_COLUMNS,
    POSE_COLUMNS,
    ImuLog,
    MotionError,
    PoseLog,
    euler_to_matrix,
    matrix_to_euler,
    motion_from_log,
    read_motion_log,
)
from neuralworld.record.odometry import estimate_camera_motion
from neuralworld.record.video import VideoError, import_video


# ---------------------------------------------------------------------------
# synthetic footage: a pinhole camera turning inside a textured cylinder
# ---------------------------------------------------------------------------
def _panorama(seed: int = 0, height: int = 320, width: int = 1440) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((12, 1.0), (40, 0.6), (120, 0.35)):
        coarse = rng.random((max(2, height * cells // width), cells, 3)).astype(np.float32)
        img += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    img -= img.min()
    return (255 * img / img.max()).astype(np.uint8)


def _render_view(pano: np.ndarray, yaw_deg: float, size=(320, 180), hfov=90.0) -> np.ndarray:
    """What a camera at the cylinder's axis sees, heading ``yaw_deg`` (positive = left)."""
    w, h = size
    ph, pw = pano.shape[:2]
    f = (w / 2) / math.tan(math.radians(hfov) / 2)
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    x, y = (u - (w - 1) / 2) / f, (v - (h - 1) / 2) / f  # OpenCV axes: right, down
    azimuth = math.radians(yaw_deg) + np.arctan2(-x, 1.0)  # left of the start heading
    radius = pw / (2 * math.pi)
    cols = (pw / 2 - azimuth * radius) % pw
    rows = ph / 2 + y / np.sqrt(x**2 + 1) * radius
    return cv2.remap(pano, cols.astype(np.float32), rows.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def _write_video(path: Path, frames, fps: float = 30, codec: str = "libx264", rotation: int | None = None) -> Path:
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            s.set_display_rotation(rotation)
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _yaw_pattern(n: int) -> np.ndarray:
    """Degrees turned per frame: left, pause, right faster."""
    rates = np.zeros(n)
    rates[: n // 3] = 2.0
    rates[n // 2 :] = -3.5
    return rates


def _turning_clip(path: Path, n: int = 36, fps: float = 30, size=(320, 180)) -> tuple[Path, np.ndarray]:
    rates = _yaw_pattern(n)
    headings = np.concatenate([[0.0], np.cumsum(rates[:-1])])
    pano = _panorama()
    return _write_video(path, (_render_view(pano, a, size) for a in headings), fps), rates


# ---------------------------------------------------------------------------
# (a) visual odometry on the synthetic clip
# ---------------------------------------------------------------------------
def test_vo_recovers_yaw_of_a_panning_camera(tmp_path):
    clip, rates = _turning_clip(tmp_path / "pan.mp4")
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    motion = estimate_camera_motion(frames, fps=30, hfov_deg=90)
    yaw = motion.rotation[:-1, 0]
    truth = rates[:-1]
    assert np.all(np.sign(yaw[np.abs(truth) > 0]) == np.sign(truth[np.abs(truth) > 0]))
    assert np.abs(yaw - truth).mean() < 0.15, (yaw, truth)
    assert np.abs(motion.rotation[:-1, 1:]).max() < 0.5  # no pitch, no roll
    assert np.abs(motion.translation).max() < 0.02  # the camera never moved
    assert motion.reliable[:-1].mean() > 0.9
    # the integrated heading ends where the camera did
    assert motion.pose[-1, 3] == pytest.approx(truth.sum(), abs=1.0)


def test_vo_ignores_a_static_overlay():
    """A game's status bar or a logo stays put while the scene turns; its corners
    would vote for "no motion" and must be masked out once they show themselves."""
    rates = np.full(40, 2.5)
    pano = _panorama(2)
    bar = (np.indices((50, 320)).sum(0) // 6 % 2 * 255).astype(np.uint8)[..., None].repeat(3, 2)  # checkerboard
    frames = []
    for heading in np.concatenate([[0.0], np.cumsum(rates[:-1])]):
        img = _render_view(pano, heading)
        img[-50:] = bar
        frames.append(img)
    motion = estimate_camera_motion(frames, fps=30)
    yaw = motion.rotation[10:-1, 0]  # after a few moving frames have revealed the overlay
    assert np.abs(yaw - 2.5).mean() < 0.2, yaw


# ---------------------------------------------------------------------------
# (b) visual odometry against ViZDoom's true angle
# ---------------------------------------------------------------------------
def _doom_clip(n_stand: int, n_walk: int):
    vzd = pytest.importorskip("vizdoom")
    game = vzd.DoomGame()
    game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), "freedoom2.wad"))
    game.set_doom_map("MAP01")
    game.add_game_args("-nomonsters")
    game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
    game.set_screen_format(vzd.ScreenFormat.RGB24)
    game.set_window_visible(False)
    game.set_render_hud(False)
    game.set_render_weapon(False)
    game.set_render_crosshair(False)
    game.set_available_buttons([vzd.Button.TURN_LEFT_RIGHT_DELTA, vzd.Button.MOVE_FORWARD])
    game.set_available_game_variables([vzd.GameVariable.ANGLE])
    game.set_episode_timeout(100_000)
    game.set_mode(vzd.Mode.PLAYER)
    game.init()
    try:
        game.new_episode()
        for _ in range(12):  # the first tics after spawning ignore turning
            game.make_action([0.0, 0.0])
        frames, angles = [], []
        for i in range(n_stand + n_walk):
            state = game.get_state()
            frames.append(state.screen_buffer.copy())
            angles.append(state.game_variables[0])
            # TURN_LEFT_RIGHT_DELTA > 0 turns right; a sine, then steps while walking
            turn = 4.0 * math.sin(2 * math.pi * i / 25) if i < n_stand else [3.0, 0.0, -5.0, 1.5][(i // 12) % 4]
            game.make_action([round(turn, 2), float(i >= n_stand)])
    finally:
        game.close()
    true_yaw = (np.diff(angles) + 180) % 360 - 180  # ANGLE grows turning left, like our yaw
    return np.asarray(frames), true_yaw


def test_vo_follows_vizdoom_true_angle():
    frames, truth = _doom_clip(n_stand=50, n_walk=70)
    motion = estimate_camera_motion(frames, fps=35, hfov_deg=90)  # ViZDoom's default FOV
    est = motion.rotation[:-1, 0]
    turning = np.abs(truth) > 1.0
    corr = np.corrcoef(est, truth)[0, 1]
    assert corr > 0.9, corr
    assert np.mean(np.sign(est[turning]) == np.sign(truth[turning])) > 0.95
    assert np.abs(est - truth).mean() < 0.8
    # standing still there is no parallax, so no translation; walking, when there is
    # enough parallax to see it, the translation points forward
    assert np.abs(motion.translation[:49]).max() < 1e-3
    forward = motion.translation[52:-1, 2]
    assert np.mean(forward > 0) > 0.4 and np.mean(forward < 0) < 0.05


# ---------------------------------------------------------------------------
# (c) motion logs
# ---------------------------------------------------------------------------
def _write_csv(path: Path, header, rows) -> Path:
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            f.write(",".join(f"{v:.6f}" for v in r) + "\n")
    return path


def test_euler_round_trip_and_signs():
    angles = np.array([[30.0, 10.0, -5.0], [-170.0, -40.0, 20.0], [0.0, 0.0, 0.0]])
    assert np.allclose(matrix_to_euler(euler_to_matrix(*angles.T)), angles)
    left = euler_to_matrix(90.0, 0.0, 0.0)
    assert np.allclose(left @ [1, 0, 0], [0, 1, 0])  # yaw +90: forward becomes world +y (left)
    up = euler_to_matrix(0.0, 30.0, 0.0)
    assert (up @ [1, 0, 0])[2] > 0  # positive pitch looks up


def test_pose_log_round_trip(tmp_path):
    t = np.arange(0, 4.0, 0.01)
    x, y, z = 0.5 * t, 0.2 * np.sin(t), 1.6 + 0.0 * t
    yaw, pitch, roll = 200 + 30 * t, 5 * np.sin(t), 2 * np.cos(t)  # heading crosses 360
    log_path = _write_csv(tmp_path / "pose.csv", POSE_COLUMNS, np.stack([t, x, y, z, (yaw + 180) % 360 - 180, pitch, roll], 1))
    log = read_motion_log(log_path)
    assert isinstance(log, PoseLog) and len(log.t) == len(t)
    frame_times = np.arange(0, 3.0, 0.1)
    motion = motion_from_log(log, frame_times, fps=10, smooth_s=0.0)
    assert motion.translation_unit == "m" and motion.source == "pose_log"
    # the per-frame deltas, integrated back, give the logged poses
    rot = euler_to_matrix(*motion.pose[0, 3:])
    pos = motion.pose[0, :3].copy()
    for i in range(len(frame_times) - 1):
        right, up, fwd = motion.translation[i]
        pos = pos + rot @ np.array([fwd, -right, up])
        rot = rot @ euler_to_matrix(*motion.rotation[i])
    expect = [np.interp(frame_times[-1], t, v) for v in (x, y, z)]
    assert np.allclose(pos, expect, atol=0.02)
    assert np.allclose(matrix_to_euler(rot), matrix_to_euler(euler_to_matrix(np.interp(2.9, t, yaw), np.interp(2.9, t, pitch), np.interp(2.9, t, roll))), atol=0.2)
    assert motion.rotation[5, 0] == pytest.approx(3.0, abs=0.05)  # 30 deg/s at 10 fps, through the wrap


def test_pose_log_directions(tmp_path):
    """Facing north (+y, heading 90), walking north is forward and walking east is right."""
    t = np.array([0.0, 1.0, 2.0])
    for world_step, expect in (((0, 1), [0, 0, 1]), ((1, 0), [1, 0, 0])):
        rows = [[ti, world_step[0] * ti, world_step[1] * ti, 0, 90, 0, 0] for ti in t]
        log = read_motion_log(_write_csv(tmp_path / "dir.csv", POSE_COLUMNS, rows))
        m = motion_from_log(log, [0.0, 1.0, 2.0], fps=1, smooth_s=0.0)
        assert np.allclose(m.translation[0], expect, atol=1e-6)


def test_pose_log_offset_and_coverage(tmp_path):
    t = 1000.0 + np.arange(0, 2.0, 0.05)
    rows = np.stack([t, 0 * t, 0 * t, 0 * t, 10 * (t - 1000), 0 * t, 0 * t], 1)
    log = read_motion_log(_write_csv(tmp_path / "late.csv", POSE_COLUMNS, rows))
    frames = np.arange(0, 1.5, 0.1)
    with pytest.raises(MotionError, match=r"covers t = 1000.000..1001.950 s.*offset of 1000.000 s"):
        motion_from_log(log, frames, fps=10)
    m = motion_from_log(log, frames, fps=10, offset=1000.0, smooth_s=0.0)
    assert m.rotation[3, 0] == pytest.approx(1.0, abs=1e-6)


def test_imu_integration(tmp_path):
    fps, rate = 20.0, 200.0
    t = np.arange(0, 3.0, 1 / rate)
    theta = math.radians(10)  # held pitched 10 degrees up, turning left at 0.5 rad/s
    g = 9.80665
    up = np.array([math.sin(theta), 0.0, math.cos(theta)])  # world up seen in forward-left-up axes
    yaw_rate = 0.5 * up  # turning about world up, in body axes
    # forward-left-up → OpenCV camera axes (x right, y down, z forward)
    gyro = np.array([-yaw_rate[1], -yaw_rate[2], yaw_rate[0]])
    accel = g * np.array([-up[1], -up[2], up[0]])
    rows = np.column_stack([t, np.tile(gyro, (len(t), 1)), np.tile(accel, (len(t), 1))])
    log = read_motion_log(_write_csv(tmp_path / "imu.csv", IMU_COLUMNS, rows))
    assert isinstance(log, ImuLog)
    m = motion_from_log(log, np.arange(0, 2.5, 1 / fps), fps=fps, smooth_s=0.0)
    assert m.translation_unit == "none" and np.all(m.translation == 0) and np.all(np.isnan(m.pose[:, :3]))
    assert np.allclose(m.pose[:, 4], 10.0, atol=0.3)  # pitch from gravity, held there
    heading_rate = np.diff(np.unwrap(np.radians(m.pose[:, 3]))) * fps
    assert np.allclose(heading_rate, 0.5, atol=0.01)  # 0.5 rad/s left about the vertical


@pytest.mark.parametrize(
    "text, message",
    [
        ("time,a,b\n0,1,2\n1,2,3\n", "neither the pose columns"),
        ("", "is empty"),
        ("t,x,y,z,yaw,pitch,roll\n0,0,0,0,0,0,0\n", "at least 2"),
        ("t,x,y,z,yaw,pitch,roll\n0,0,0,0,0,0,0\n1,0,zero,0,0,0,0\n", "line 3: y = 'zero' is not a number"),
        ("t,x,y,z,yaw,pitch,roll\n1,0,0,0,0,0,0\n0.5,0,0,0,0,0,0\n", "does not increase"),
        ("t,gx,gy,gz,ax,ay\n0,0,0,0,0,0\n", "neither the pose columns"),
    ],
)
def test_motion_log_errors(tmp_path, text, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(MotionError, match=message):
        read_motion_log(p)


# ---------------------------------------------------------------------------
# (d) bad inputs: a specific error, nothing left behind
# ---------------------------------------------------------------------------
def _small_clip(path: Path, n: int = 12, fps: float = 30, codec: str = "libx264") -> Path:
    pano = _panorama(1)
    return _write_video(path, (_render_view(pano, 2.0 * i, (96, 64)) for i in range(n)), fps, codec)


def _audio_only(path: Path, with_empty_video: bool = False) -> Path:
    with av.open(str(path), "w") as c:
        if with_empty_video:
            v = c.add_stream("libx264", rate=30)
            v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        for i in range(8):
            frame.pts = i * 1024
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: (d / "garbage.mp4").write_bytes(os.urandom(4000)) and d / "garbage.mp4", "cannot read it as a video"),
        (lambda d: _truncated(_small_clip(d / "a.mp4", 40), d / "cut.mp4"), "cannot read it as a video"),
        (lambda d: _truncated(_small_clip(d / "a.mkv", 40), d / "cut.mkv"), "is truncated: its frames stop"),
        (lambda d: _audio_only(d / "sound.m4a"), "has no video stream"),
        (lambda d: _audio_only(d / "empty.mkv", with_empty_video=True), "has a video stream but no frames"),
    ],
)
def test_bad_videos_leave_nothing(tmp_path, make, message):
    video = make(tmp_path)
    out = tmp_path / "data"
    with pytest.raises(VideoError, match=message):
        import_video([video], out, resolution=(32, 32))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".neuralworld-import-")]


def test_bad_motion_logs_leave_nothing(tmp_path):
    clip = _small_clip(tmp_path / "clip.mp4", 12)
    out = tmp_path / "data"
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,x,y\n0,0,0\n1,0,0\n")
    with pytest.raises(MotionError, match="neither the pose columns"):
        import_video([clip], out, motion=wrong, resolution=(32, 32))
    short = _write_csv(tmp_path / "short.csv", POSE_COLUMNS, [[t, 0, 0, 0, 0, 0, 0] for t in (0.0, 0.1, 0.2)])
    with pytest.raises(MotionError, match="but the video needs"):
        import_video([clip], out, motion=short, resolution=(32, 32))
    with pytest.raises(VideoError, match="one per video"):
        import_video([clip, clip], out, motion=short, resolution=(32, 32))
    assert not out.exists()
    assert issubclass(MotionError, DatasetError) and issubclass(VideoError, DatasetError)


def test_failed_write_is_undone(tmp_path, monkeypatch):
    clip = _small_clip(tmp_path / "clip.mp4", 20)
    out = tmp_path / "data"
    import_video([clip], out, resolution=(32, 32), max_episode_frames=8)
    before = Dataset(out).ids

    calls = {"n": 0}
    real_add = EpisodeWriter.add_frame

    def failing_add(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 11:  # partway through the second episode
            raise OSError("disk full")
        return real_add(self, *a, **kw)

    monkeypatch.setattr(EpisodeWriter, "add_frame", failing_add)
    with pytest.raises(OSError, match="disk full"):
        import_video([clip], out, resolution=(32, 32), max_episode_frames=8)
    after = Dataset(out)
    assert after.ids == before and after.incomplete == []
    calls["n"] = 0
    with pytest.raises(OSError, match="disk full"):
        import_video([clip], tmp_path / "fresh", resolution=(32, 32), max_episode_frames=8)
    assert not (tmp_path / "fresh").exists()


def test_refuses_incompatible_dataset_before_decoding(tmp_path):
    clip = _small_clip(tmp_path / "clip.mp4", 12)
    out = tmp_path / "data"
    import_video([clip], out, resolution=(32, 32))
    with pytest.raises(DatasetError, match="resolution"):
        import_video([clip], out, resolution=(16, 16))
    assert Dataset(out).num_episodes == 1


# ---------------------------------------------------------------------------
# (e) end to end
# ---------------------------------------------------------------------------
def test_import_video_end_to_end(tmp_path):
    clip, rates = _turning_clip(tmp_path / "walk.mp4", n=48, fps=60, size=(320, 180))
    out = tmp_path / "data"
    summary = import_video([clip], out, resolution=(32, 48), max_episode_frames=10, rotation_scale=360.0)
    assert summary["fps"] == 30.0 and summary["frames"] == 24 and summary["episodes"] == 3
    assert summary["videos"][0]["source"] == "visual_odometry"

    ds = Dataset(out)
    assert ds.num_episodes == 3 and ds.lengths == [8, 8, 8]
    assert ds.fps == 30.0 and ds.resolution == (32, 48)
    assert ds.spec == camera_motion_spec(30.0)
    assert ds.info.pose_names == ("x", "y", "z", "yaw", "pitch", "roll")
    assert ds.info.game_variables == ("motion_reliable",)
    ep = ds.episode(0).load()
    assert ep["frames"].shape == (8, 32, 48, 3) and ep["frames"].dtype == np.uint8
    attrs = ds.episode(0).attrs
    assert attrs["video"] == "walk.mp4" and attrs["source_fps"] == 60.0 and attrs["source_size"] == [320, 180]
    motion = attrs["motion"]
    assert motion["rotation_deg_per_unit"] == pytest.approx(360.0 / 30.0)
    # every other 60 fps frame: 2 deg per source frame is 4 deg per stored frame, turning left
    yaw = np.concatenate([ds.episode(i).load(["actions"])["actions"][:, 3] for i in range(3)])
    yaw_deg = yaw * motion["rotation_deg_per_unit"]
    assert np.allclose(yaw_deg[:6], 4.0, atol=0.4)
    assert np.allclose(yaw_deg[13:22], -7.0, atol=0.7)
    poses = np.concatenate([ds.episode(i).load(["poses"])["poses"] for i in range(3)])
    assert poses[-1, 3] == pytest.approx(rates[:46].sum(), abs=1.5)

    # a second import appends with the same controls
    again = import_video([clip], out, resolution=(32, 48), max_episode_frames=100, rotation_scale=360.0)
    assert again["created"] is False and Dataset(out).num_episodes == 4


def test_import_with_pose_log_and_rotated_video(tmp_path):
    img = np.zeros((32, 64, 3), np.uint8)
    img[:, :32] = 255  # left half white
    clip = _write_video(tmp_path / "phone.mp4", [img] * 10, fps=10, rotation=90)
    t = np.arange(0, 1.2, 0.02)
    log = _write_csv(tmp_path / "pose.csv", POSE_COLUMNS, np.stack([t, t, 0 * t, 0 * t, 20 * t, 0 * t, 0 * t], 1))
    out = tmp_path / "data"
    summary = import_video([clip], out, motion=log, resolution=(16, 8), crop="stretch")
    assert summary["videos"][0]["source"] == "pose_log" and summary["videos"][0]["source_size"] == "32x64"
    ep = Dataset(out).episode(0)
    frame = ep.load(["frames"])["frames"][0]
    # turned upright counter-clockwise: the white left half is now the bottom half
    assert frame[12:, :, 0].mean() > 200 and frame[:4, :, 0].mean() < 50
    actions = ep.load(["actions"])["actions"]
    motion = ep.attrs["motion"]
    assert actions[0, 3] * motion["rotation_deg_per_unit"] == pytest.approx(2.0, abs=0.05)  # 20 deg/s at 10 fps
    assert actions[0, 2] * motion["translation_per_unit"] == pytest.approx(0.1, abs=0.01)  # 1 m/s along x, facing x at t=0


def test_cli_import_video(tmp_path):
    clip = _small_clip(tmp_path / "clip.mp4", 12)
    out = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    run = subprocess.run(
        [sys.executable, "-m", "neuralworld.cli", "import-video", str(clip), "--resolution", "32x32", "--fps", "15", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["episodes"] == 1 and summary["fps"] == 15.0 and summary["frames"] == 6
    bad = subprocess.run(
        [sys.executable, "-m", "neuralworld.cli", "import-video", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "x")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert bad.returncode == 2 and "no such file" in bad.stderr and not (tmp_path / "x").exists()
