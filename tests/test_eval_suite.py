"""The evaluation suite beyond fidelity: the inverse-dynamics model, turning measured by
odometry, the stability detector, memory round trips and the report, each on real
(tiny) ViZDoom data and worlds, with checks that fail when a part is wrong."""

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from neuralworld.eval import control as ctl
from neuralworld.eval import idm as idm_mod
from neuralworld.eval import memory as mem
from neuralworld.eval import stability as stab
from neuralworld.eval.fidelity import EvalError

CLI = str(Path(sys.executable).parent / "neuralworld")


# ---------------------------------------------------------------------------
# closed forms: no data needed
def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 4))
    mu, cov = stab.gaussian(x)
    assert stab.frechet(mu, cov, mu, cov) == pytest.approx(0, abs=1e-6)
    # a shifted mean adds |d|^2; a scaled covariance adds tr(C1 + C2 - 2 sqrt(C1 C2)) = sum (1 - 2)^2 for I vs 4I
    assert stab.frechet(mu, cov, mu + 3, cov) == pytest.approx(9 * 4, rel=1e-6)
    assert stab.frechet(np.zeros(4), np.eye(4), np.zeros(4), 4 * np.eye(4)) == pytest.approx(4.0)


def test_agreement_slope_sign_and_correlation():
    c = np.concatenate([np.zeros(10), np.full(20, 10.0), np.full(20, -5.0)])
    a = ctl.agreement(c, 0.5 * c)
    assert a["slope"] == pytest.approx(0.5) and a["corr"] == pytest.approx(1.0) and a["sign_agreement"] == 1.0
    b = ctl.agreement(c, -c)  # a world that turns the wrong way
    assert b["slope"] == pytest.approx(-1.0) and b["sign_agreement"] == 0.0
    assert ctl.agreement(c, np.zeros_like(c))["slope"] == 0.0  # a world that never turns


def test_frozen_needs_a_run_while_moving():
    change = np.array([5.0] * 5 + [0.1] * 12 + [5.0] * 5)
    moving = np.ones(22, bool)
    f = stab.frozen_flags(change, moving, run=10)
    assert f[5:17].all() and not f[:5].any() and not f[17:].any()
    assert not stab.frozen_flags(change, np.zeros(22, bool), run=10).any()  # standing still may not change
    assert not stab.frozen_flags(np.array([5.0] * 5 + [0.1] * 9 + [5.0]), np.ones(15, bool), run=10).any()


def test_idm_score_balanced_accuracy_and_overall():
    from neuralworld.actions import ActionSpec, Axis

    spec = ActionSpec(("forward", "use"), (Axis("turn", -15, 15),))
    true = np.zeros((100, 3), np.float32)
    true[:10, 0] = 1  # forward pressed 10%
    true[:, 2] = np.where(np.arange(100) % 2, 10.0, -10.0)
    never = true.copy()
    never[:, 0] = 0  # never predicts forward: 0.9 accuracy, 0.5 balanced
    s = idm_mod.score(spec, never, true)
    assert s["controls"]["forward"]["accuracy"] == 0.9 and s["controls"]["forward"]["balanced_accuracy"] == 0.5
    assert s["controls"]["use"]["score"] is None  # never pressed: no balanced accuracy
    assert s["controls"]["turn"]["sign_accuracy"] == 1.0
    assert idm_mod.overall(s, ["forward", "turn"]) == 0.75


# ---------------------------------------------------------------------------
# a dedicated small dataset: long enough episodes to learn from and to return to a pose
@pytest.fixture(scope="module")
def doom32(tmp_path_factory):
    pytest.importorskip("vizdoom")
    from neuralworld.data.store import Dataset
    from neuralworld.record.doom import RecordConfig, record

    out = tmp_path_factory.mktemp("suite") / "doom32"
    record(RecordConfig(env="doom/freedoom_map01", episodes=6, workers=2, resolution=(32, 32), max_steps=200, seed=3), out, progress=False)
    return Dataset(out)


@pytest.fixture(scope="module")
def trained_idm(doom32, tmp_path_factory):
    train, held = doom32.split(0.2)
    cache = tmp_path_factory.mktemp("idm")
    idm = idm_mod.train_idm(doom32, train, idm_mod.IDMTraining(steps=400, seconds=60, batch_size=64), cache_dir=cache)
    return idm, train, held, cache


def test_idm_reads_real_held_out_pairs_better_than_chance(doom32, trained_idm):
    idm, train, held, _ = trained_idm
    f0, f1, acts = idm_mod.real_pairs(doom32, held)
    res = idm_mod.compare(idm, (f0, f1, acts))
    turn = res["held_out_real"]["controls"]["turn"]
    assert turn["sign_pairs"] > 20 and turn["sign_accuracy"] > 0.7, turn
    assert "turn" in res["readable_controls"]
    # shuffled pairs carry no action: the same model must fall to about chance on them
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(f0))
    shuffled = idm_mod.score(doom32.spec, idm.predict(f0[perm], f1[rng.permutation(len(f0))]), acts)
    assert shuffled["controls"]["turn"]["sign_accuracy"] < turn["sign_accuracy"] - 0.15


def test_idm_is_saved_without_pickle_and_reused(doom32, trained_idm):
    idm, train, _, cache = trained_idm
    files = sorted(p.name for p in Path(cache).iterdir())
    key = idm.meta["key"]
    assert files == [f"idm-{key}.json", f"idm-{key}.safetensors"]
    assert json.loads((Path(cache) / f"idm-{key}.json").read_text())["steps_done"] == idm.meta["steps_done"]
    again = idm_mod.train_idm(doom32, train, idm_mod.IDMTraining(steps=400, seconds=60, batch_size=64), cache_dir=cache)  # loads, trains nothing
    f0, f1, _ = idm_mod.real_pairs(doom32, train[:1], max_pairs=50)
    assert np.array_equal(again.predict(f0, f1), idm.predict(f0, f1))
    other = idm_mod.train_idm(doom32, train[:-1], idm_mod.IDMTraining(steps=2, seconds=60, batch_size=8), cache_dir=cache)  # other data: other key
    assert other.meta["key"] != key and other.meta["steps_done"] == 2


def test_odometry_measures_real_recorded_turns(doom32):
    ep = doom32.episode(0).load(("frames", "actions"))
    yaw, _ = ctl.measure_turn(ep["frames"], hfov=ctl.dataset_hfov(doom32))
    a = ctl.agreement(ep["actions"][:-1, -1], yaw)  # actions[t] turned from frame t to t+1; positive = right
    # 32x32 frames leave odometry little to track (on 64x64 ViZDoom: corr ~0.76, sign ~0.83),
    # but a wrong sign convention or misaligned pairs would make these negative or ~0
    assert a["corr"] > 0.3 and a["sign_agreement"] > 0.55 and a["slope"] > 0.15, a
    b = ctl.agreement(ep["actions"][1:, -1], yaw)  # one frame off
    assert b["corr"] < a["corr"]


def test_image_shift_reads_a_slide_and_real_recorded_turns(doom32):
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (32, 96, 3), dtype=np.uint8), (5, 5), 0)
    frames = np.stack([scene[:, 32 - k : 64 - k] for k in (0, 2, 5, 4)])  # the view moves left: the picture slides right
    np.testing.assert_allclose(ctl.image_shifts(frames), [2, 3, -1], atol=0.25)
    ep = doom32.episode(0).load(("frames", "actions"))
    yaw, _ = ctl.measure_shift(ep["frames"], hfov=ctl.dataset_hfov(doom32))
    a = ctl.agreement(ep["actions"][:-1, -1], yaw)  # degrees to the right, as odometry's
    assert a["corr"] > 0.5 and a["sign_agreement"] > 0.7 and a["slope"] > 0.3, a
    assert ctl.agreement(ep["actions"][1:, -1], yaw)["corr"] < a["corr"]  # one frame off


def test_the_engine_plays_the_probes_beside_the_worlds(doom32):
    """The recording's engine under the probes' controls, from its map's start: the picture
    slides with a held turn the way the recorded pairs do, expands when walking forward, and is
    sharp; a dataset from elsewhere has no engine to play."""
    from neuralworld.eval import probes as prb
    from neuralworld.eval.inputs import sample_real_frames

    held = list(range(doom32.num_episodes))
    real = prb.real_motion(doom32, held, sample_real_frames(doom32, held, 200))
    assert doom32.info.source == "vizdoom:freedoom_map01"
    e = prb.run_engine_probes(doom32.info.source, doom32.info.resolution, doom32.spec, real)
    for side in ("right", "left"):
        assert e["turn"][side]["second_ratio"] > 0.5  # the same direction as the recorded slide, about as far
    # random play meets walls the recording's explorer keeps away from: sharp, but less than the recording
    assert e["forward"]["px"] > 0 and 0.2 < e["sharpness"]["ratio"] < 1.5
    assert "not a ViZDoom scenario" in prb.run_engine_probes("video:walk.mp4", doom32.info.resolution, doom32.spec, real)["skipped"]


def test_stability_judge_passes_real_and_flags_black_and_frozen(doom32):
    project = stab.FeatureProjection()
    train, held = doom32.split(0.2)
    seqs = [doom32.episode(e)["frames"][:] for e in held]
    ref = np.concatenate([doom32.episode(e)["frames"][:] for e in train])
    band = stab.real_band(ref, seqs, window=40, project=project)
    real = np.concatenate([doom32.episode(e)["frames"][:] for e in train[:2]])
    moving = np.ones(len(real), bool)

    def run(frames: np.ndarray) -> dict:
        change = stab.frame_change(frames[0], frames)
        return stab.judge(stab.frame_stats(frames), stab.frozen_flags(change, moving[: len(frames)]), project(frames), band)

    ok = run(real)
    assert ok["collapse_frame"] is None and ok["in_band_fraction"] >= 0.8, ok["out_reasons"]
    # real, then black: the collapse is found where the black starts
    black = real.copy()
    black[160:] = 0
    r = run(black)
    assert r["collapse_frame"] == 160 and r["out_reasons"].get("black", 0) >= 3 and r["black_fraction"] > 0.4
    frozen = real.copy()
    frozen[120:] = real[120]
    r = run(frozen)
    assert r["collapse_frame"] == 120 and r["out_reasons"].get("frozen", 0) >= 3, r
    soup = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)  # noise: sharp, grey, wrong layout
    r = run(soup)
    assert r["collapse_frame"] == 0 and r["in_band_at_start"] is False


def test_memory_real_returns_are_closer_than_random_pairs(doom32):
    every = list(range(doom32.num_episodes))
    a, b = mem.real_return_pairs(doom32, every, min_gap=16)
    ra, rb = mem.random_pairs(doom32, every)
    assert len(a) >= 5, "the explorer never came back to a pose: record longer episodes"
    from neuralworld.eval.metrics import psnr

    assert psnr(a, b).mean() > psnr(ra, rb).mean() + 2.0


# ---------------------------------------------------------------------------
# the report on the tiny world, with a baseline
@pytest.fixture(scope="module")
def report(tiny_world_run, tmp_path_factory):
    from neuralworld.eval.report import run_report

    data, run = tiny_world_run
    out = tmp_path_factory.mktemp("report")
    m = run_report(run, data, report_dir=out, baselines=[run / "world"], sampler="fast", horizons=(1, 4, 16),
                   stability_frames=120, stability_window=20, control_horizon=16, control_windows=2, memory_starts=2,
                   idm_steps=30, idm_seconds=30, bench_frames=3, log=lambda s: None)  # fmt: skip
    return m, out


def test_report_markdown_plots_and_baseline_column(report):
    m, out = report
    md = (out / "report.md").read_text()
    names = list(m["worlds"])
    assert len(names) == 2 and m["baselines"] == [names[1]]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"psnr_vs_horizon.png", f"stability_{names[0]}.png", f"memory_{names[1]}.png", f"control_turn_{names[0]}.png"} <= set(images)
    for name in images:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 20 and img.std() > 0, name
    # every table carries the baseline: a column per world in fidelity and control, rows in the others
    fid_head = next(line for line in md.splitlines() if line.startswith("| ") and "copy last frame" in line)
    assert all(n in fid_head for n in names)
    assert f"generated: {names[1]}" in md and f"{names[1]}: scripted" in md and f"{names[1]}: back after" in md
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["control"]["worlds"]) == set(names) and set(saved["stability"]["worlds"]) == set(names)
    assert (out / "rollout.mp4").stat().st_size > 0
    assert np.load(out / f"stability_{names[0]}.npz")["sharpness"].shape == (4, 120)  # the scripted tour and three random drives


def test_report_figures_are_consistent(report):
    m, out = report
    names = list(m["worlds"])
    # the baseline is the same world: same seed, same windows -> the same figures
    a, b = (m["fidelity"][n]["teacher_forced"]["psnr"] for n in names)
    assert a == b
    c = m["control"]["worlds"][names[0]]["idm"]
    assert c["generated"]["pairs"] == c["real_same_windows"]["pairs"] > 0
    assert c["ratio_generated_to_real"] is None or c["ratio_generated_to_real"] > 0
    st = m["stability"]["worlds"][names[0]]
    assert set(st["drives"]) == {"scripted", "random0", "random1", "random2"} and st["frames"] == 120
    turn = m["memory"]["worlds"][names[0]]["turn"]
    assert turn["frames"] == 24 and turn["degrees"] == 360
    refs = m["memory"]["references"]
    assert refs["random_pairs"]["pairs"] == 200
    assert m["speed"]["worlds"][names[0]]["fps_batch1"] > 0
    # the bars: every row, marked; the probes for every world; the long-rollout figures off the random drive
    from neuralworld.eval.bars import BARS

    assert [r["key"] for r in m["bars"]] == list(BARS) and all(r["mark"] in "✓✗–" for r in m["bars"])
    assert set(m["probes"]["worlds"]) == set(names) and m["probes"]["real"]["turn_pairs"] >= 0
    assert m["probes"]["engine"]["forward"]["px"] > 0  # the recording's engine beside them, under the same probes
    engine = m["stability"]["engine"]  # and under the same random drive
    assert engine["frames"] == 120 and engine["sharpness_ratio"] > 0.2 and engine["black_frames"] == 0
    assert st["end"]["drives"] == 3 and st["end"]["last_frames"] == 120 and len(st["end"]["drive_ratios"]) == 3
    assert engine["drives"] == 3  # the engine plays the same three
    assert "## Bars (issue 15)" in (out / "report.md").read_text()
    heads = m["heads"]["worlds"][names[0]]  # freedoom has no deaths: only false alarms are counted
    assert heads["episodes"] >= 1 and heads["deaths"] == 0 and heads["steps_checked"] > 0 and heads["caught_fraction"] is None
    assert "## Heads" in (out / "report.md").read_text()


def test_cli_report_and_errors(tiny_world_run, tmp_path):
    data, run = tiny_world_run
    p = subprocess.run(
        [CLI, "eval", str(run), "--data", str(data), "--report", str(tmp_path / "r"), "--sampler", "fast",
         "--horizons", "1,4", "--skip", "control,stability,speed"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    md = Path(out["report"]).read_text()
    assert "## Fidelity" in md and "## Memory" in md and "## Stability" not in md
    p = subprocess.run([CLI, "eval", str(run), "--data", str(data), "--report", str(tmp_path / "x"), "--skip", "everything"],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and "--skip takes" in p.stderr
    with pytest.raises(EvalError, match="baseline"):
        from neuralworld.eval.report import run_report

        run_report(run, data, report_dir=tmp_path / "y", baselines=[tmp_path / "nowhere"])


def test_alarms_count_deaths_caught_in_their_window_and_false_alarms_elsewhere():
    from neuralworld.eval.heads import _alarms

    quiet = np.full(20, 0.01)
    near = quiet.copy()
    near[-3] = 0.9  # 2 steps before the death: caught
    far = quiet.copy()
    far[5] = 0.9  # 14 steps before: missed, and a false alarm
    alive = quiet.copy()
    alive[[2, 3]] = 0.7  # an episode that did not end: two false alarms
    a = _alarms([(near, True), (far, True), (alive, False)], 0.5, 4)
    assert (a["deaths"], a["caught"], a["missed"], a["caught_fraction"]) == (2, 1, 1, 0.5)
    assert a["false_alarm_steps"] == 3 and a["steps_checked"] == 15 + 15 + 20
    assert _alarms([(near, True)], 0.95, 4)["caught"] == 0 and _alarms([(far, True)], 0.005, 4)["caught"] == 1
