"""The ViZDoom recorder, run for real: the engine, the worker processes, the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vizdoom")

from neuralworld.data.store import Dataset  # noqa: E402
from neuralworld.record.doom import RecordConfig, record  # noqa: E402
from neuralworld.record.explorer import coverage_cells  # noqa: E402

CLI = str(Path(sys.executable).parent / "neuralworld")


def run(*args, check=True, **kw):
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"neuralworld {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def test_record_info_show(tmp_path):
    out = tmp_path / "doom"
    p = run("record", "--env", "doom/freedoom_map01", "--episodes", 2, "--workers", 2, "--max-steps", 60,
            "--resolution", "64x80", "--out", out, "--quiet")
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["frames"] == 120 and summary["frames_per_second"] > 0

    ds = Dataset(out)
    assert ds.num_episodes == 2 and ds.resolution == (64, 80) and ds.fps == 17.5
    assert ds.info.pose_names == ("x", "y", "z", "angle", "eye") and ds.info.camera.depth_offset > 0
    assert ds.spec.names == ("forward", "back", "strafe_left", "strafe_right", "attack", "use", "turn")
    data = ds.episode(0).load()
    assert data["frames"].shape == (60, 64, 80, 3) and data["frames"].std() > 10  # a picture, not a blank
    ds.spec.validate(data["actions"])
    assert np.isfinite(data["poses"]).all() and np.isfinite(data["game_vars"]).all()
    assert data["game_vars"][0, 0] > 0  # health
    assert data["poses"][0, 4] == pytest.approx(41.0, abs=0.5) and data["poses"][:, 4].std() > 0.5  # standing, then the walk's bob

    # the stored actions are what the engine executed: the turn axis explains the angle change
    turn = data["actions"][:-1, -1]
    d_angle = (np.diff(data["poses"][:, 3]) + 180) % 360 - 180
    moving = np.abs(turn) > 0.5
    assert moving.sum() > 10
    np.testing.assert_allclose(d_angle[moving], -turn[moving], atol=0.05)  # positive turn = right = angle down

    # the engine's depth buffer is stored, and its geometry explains the next frame better than Farneback alone
    assert ds.info.camera is not None and data["depth"].shape == (60, 64, 80) and data["depth"].dtype == np.uint8
    assert (data["depth"] > 0).mean() > 0.8  # the view, not the weapon drawn over it
    from neuralworld.data.flow import optical_flow, pair_flow, remap


    def psnr(a, b):
        return 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2))

    scores = {"copy": [], "farneback": [], "pair": []}
    for e in range(2):
        d = ds.episode(e).load()
        for t in range(59):
            old, new = d["frames"][t], d["frames"][t + 1]
            scores["copy"].append(psnr(old, new))
            scores["farneback"].append(psnr(remap(old, optical_flow(new, old)), new))
            pair = pair_flow(new, old, depth_new=d["depth"][t + 1], pose_new=d["poses"][t + 1], pose_old=d["poses"][t], camera=ds.info.camera)
            scores["pair"].append(psnr(remap(old, pair), new))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["pair"] > mean["farneback"] > mean["copy"], mean

    info = json.loads(run("data", "info", out, "--json").stdout)
    assert info["episodes"] == 2 and info["frames"] == 120 and 0 < info["bytes_per_frame"] < 64 * 80 * 3

    video = tmp_path / "ep.mp4"
    run("data", "show", out, "--episode", "1", "--out", video, "--scale", "2")
    import av

    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 60 and frames[0].shape[1] == 160 and frames[0].shape[0] > 128  # picture + action panel
    gif = tmp_path / "ep.gif"
    run("data", "show", out, "--out", gif, "--max-frames", 5)
    assert gif.stat().st_size > 0


def test_explorer_covers_more_than_random(tmp_path):
    cells = {}
    for policy in ("explorer", "random"):
        cfg = RecordConfig(env="doom/freedoom_map01", episodes=3, workers=2, resolution=(32, 32), max_steps=400, policy=policy)
        record(cfg, tmp_path / policy, progress=False)
        ds = Dataset(tmp_path / policy)
        cells[policy] = np.mean([coverage_cells(ds.episode(i)["poses"][:, :2]) for i in range(ds.num_episodes)])
    assert cells["explorer"] > 1.5 * cells["random"], cells


def _wait_for_episodes(out, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (Path(out) / "zarr.json").exists():
            try:
                if Dataset(out).num_episodes >= n:
                    return
            except Exception:
                pass
        assert proc.poll() is None, "recorder ended before it could be killed"
        time.sleep(0.2)
    raise AssertionError("no finished episode in time")


@pytest.mark.parametrize("kill_group", [True, False], ids=["whole-group", "main-only"])
def test_kill_9_keeps_finished_episodes_and_appends(tmp_path, kill_group):
    out = tmp_path / "doom"
    proc = subprocess.Popen(
        [CLI, "record", "--env", "doom/my_way_home", "--episodes", "200", "--workers", "2", "--max-steps", "150",
         "--resolution", "32x32", "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    _wait_for_episodes(out, 2, proc)
    if kill_group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)  # orphaned workers notice their parent is gone and stop

    ds = Dataset(out)
    before = ds.num_episodes
    assert before >= 2
    for i in range(before):  # every finished episode is whole
        ep = ds.episode(i)
        d = ep.load()
        assert len(d["frames"]) == len(d["actions"]) == ep.length == ep.attrs["length"]
        assert d["frames"][-1].std() > 1

    run("record", "--env", "doom/my_way_home", "--episodes", 2, "--workers", 1, "--max-steps", 20,
        "--resolution", "32x32", "--out", out, "--quiet")
    after = Dataset(out)
    assert after.num_episodes == before + 2
    assert after.incomplete == []
    assert after.ids[:before] == ds.ids  # nothing lost


def test_append_with_other_resolution_is_refused(tmp_path):
    out = tmp_path / "d"
    run("record", "--env", "doom/basic", "--episodes", 1, "--workers", 1, "--max-steps", 10, "--resolution", "32x32", "--out", out, "--quiet")
    p = run("record", "--env", "doom/basic", "--episodes", 1, "--max-steps", 10, "--resolution", "48x48", "--out", out, "--quiet", check=False)
    assert p.returncode == 2 and "resolution is 32x32, not 48x48" in p.stderr
    p = run("record", "--env", "doom/basic", "--episodes", 1, "--max-steps", 10, "--resolution", "32x32",
            "--frame-skip", "4", "--out", out, "--quiet", check=False)
    assert p.returncode == 2 and "ActionSpec differs" in p.stderr and "fps 17.5 vs 8.75" in p.stderr
    assert Dataset(out).num_frames == 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["record", "--env", "doom/nowhere", "--out", "{tmp}/x"], "unknown Doom scenario 'nowhere'"),
        (["record", "--env", "quake/e1m1", "--out", "{tmp}/x"], "unknown --env 'quake/e1m1'"),
        (["record", "--env", "doom/basic", "--out", "/proc/nw-test"], "cannot write to /proc/nw-test"),
        (["record", "--env", "doom/basic", "--episodes", "0", "--out", "{tmp}/x"], "expected a number >= 1"),
        (["record", "--env", "doom/basic", "--resolution", "big", "--out", "{tmp}/x"], "resolution must look like 128x128"),
        (["data", "info", "{tmp}/missing"], "no such dataset"),
        (["data", "info", "{tmp}/junk"], "not a neuralworld dataset"),
        (["data", "show", "{tmp}/missing", "--out", "{tmp}/a.mp4"], "no such dataset"),
    ],
)
def test_cli_errors_are_specific(tmp_path, args, message):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    p = run(*[a.replace("{tmp}", str(tmp_path)) for a in args], check=False)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "x").exists()


def test_env_list_prints_every_scenario_and_records_nothing(tmp_path):
    p = run("record", "--env", "list")
    from neuralworld.record.doom import SCENARIOS

    assert all(f"doom/{name}" in p.stdout for name in SCENARIOS)
    bad = subprocess.run([CLI, "record", "--env", "doom/basic"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--out" in bad.stderr


def test_strafe_policy_holds_take_covers_buttons_and_never_turns():
    from neuralworld.record.explorer import make_policy

    policy = make_policy("strafe", seed=3, turn_limit=15.0)
    acts = [policy.act(0.0, 0.0, 90.0) for _ in range(400)]
    held = [tuple(sorted(k for k, v in a.items() if v)) for a in acts]
    assert set(held) == {(), ("strafe_left",), ("strafe_right",)}
    assert all(a["turn"] == 0.0 and a["forward"] == 0.0 and a["attack"] == 0.0 for a in acts)
    runs, n = [], 1
    for a, b in zip(held, held[1:]):
        if a == b:
            n += 1
        else:
            runs.append(n)
            n = 1
    assert 3 < np.mean(runs) < 10  # held a while: 1-8 frames a hold, and holds of the same choice may meet


def test_an_agent_plays_the_recording_with_exploration(tmp_path):
    """record --agent: the shipped Take Cover controller plays (World Models' iterative
    training), every recorded action is one of its set, and --epsilon mixes in random choices
    that the controller's memory is told of; another frame size or frame skip is refused before
    any engine starts."""
    from neuralworld.agents import load_agent
    from neuralworld.record.doom import AgentPolicy

    root = Path(__file__).resolve().parents[1]
    agent_dir = root / "agents" / "take-cover"
    out = tmp_path / "played"
    run("record", "--env", "doom/take_cover", "--agent", agent_dir, "--epsilon", "0.3", "--episodes", "2",
        "--workers", "2", "--resolution", "64x64", "--max-steps", "40", "--seed", "5", "--out", out, "--quiet")
    ds = Dataset(out)
    assert len(ds) == 2
    agent = load_agent(agent_dir)
    table = {tuple(row) for row in np.asarray(agent.table, np.float32)}
    for i in range(2):
        ep = ds.episode(i)
        assert "agent" in ep.attrs["policy"] and "epsilon 0.3" in ep.attrs["policy"]
        assert all(tuple(a) in table for a in ep["actions"][:])

    class Counting:  # the controller, counting what it is told was played instead of its choice
        def __init__(self, inner):
            self.inner, self.table, self.told = inner, inner.table, 0

        def predict(self, *a, **k):
            return self.inner.predict(*a, **k)

        def played(self, i, index):
            self.told += 1
            self.inner.played(i, index)

    frame = np.asarray(ds.episode(0)["frames"][0])
    for epsilon, expect in ((0.0, 0), (1.0, 50)):
        counting = Counting(agent)
        policy = AgentPolicy(counting, seed=0, epsilon=epsilon)
        chosen = [tuple(policy.act_frame(frame)) for _ in range(50)]
        assert counting.told == expect and all(c in table for c in chosen)

    for args, message in ((["--resolution", "32x32"], "sees (64, 64) frames"), (["--frame-skip", "4"], "fps 17.5 vs 8.75")):
        p = run("record", "--env", "doom/take_cover", "--agent", agent_dir, "--episodes", "1", "--out", tmp_path / "no",
                *(args if "--resolution" in args else [*args, "--resolution", "64x64"]), check=False)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr
        assert not (tmp_path / "no").exists()


def test_appending_to_a_recording_from_before_the_eye_keeps_its_columns_and_camera(tmp_path):
    """A recording made before poses stored the eye, and before the camera knew its depth offset:
    a new episode appended to it keeps its four pose columns and its camera."""
    from dataclasses import replace

    from neuralworld.data.store import DatasetWriter
    from neuralworld.record.doom import CAMERA, GAME_VARIABLES, LEGACY_POSE_NAMES, doom_action_spec

    out = tmp_path / "old"
    old_camera = replace(CAMERA, depth_offset=0.0)
    DatasetWriter.create(out, doom_action_spec(2), (64, 64), source="vizdoom:freedoom_map01", pose_names=LEGACY_POSE_NAMES,
                         game_variables=GAME_VARIABLES, camera=old_camera)
    record(RecordConfig(env="doom/freedoom_map01", episodes=1, workers=1, max_steps=20, resolution=(64, 64)), out, progress=False)
    ds = Dataset(out)
    assert ds.num_episodes == 1 and ds.info.pose_names == LEGACY_POSE_NAMES and ds.info.camera == old_camera
    assert ds.episode(0).load(("poses",))["poses"].shape == (20, 4)

