"""The bars of issue 15: the probes read a known motion correctly (a synthetic dataset whose
turn slides a texture a known number of pixels, and fake worlds that slide it by k), the
marks flip exactly at each bar, the report renders the table, and every world kind plays
the probes through its WorldSession."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from neuralworld.actions import ActionSpec, Axis
from neuralworld.data.store import Dataset, DatasetWriter
from neuralworld.eval import bars
from neuralworld.eval import probes as prb
from neuralworld.eval.markdown import render_markdown

SPEC = ActionSpec(buttons=("forward", "back", "attack"), axes=(Axis("turn", -15, 15, "deg/frame"),), fps=17.5)
H = W = 64
PPD = 0.5  # the synthetic engine: the picture slides 0.5 px per degree (4 px at 8 deg/frame)
ZOOM = 1.04  # and walking forward zooms it 4 % per frame
CLI = str(Path(sys.executable).parent / "neuralworld")


def panorama(seed: int = 0, width: int = 512) -> np.ndarray:
    """A texture that wraps around horizontally (H, width, 3) uint8."""
    rng = np.random.default_rng(seed)
    noise = rng.random((H, width, 3)).astype(np.float32)
    wide = np.pad(noise, ((8, 8), (8, 8), (0, 0)), mode="wrap")
    smooth = cv2.GaussianBlur(wide, (0, 0), 1.5)[8:-8, 8:-8]
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


PANORAMA = panorama()


def view(offset: float) -> np.ndarray:
    """The 64 px wide window at ``offset`` (whole pixels) into the panorama."""
    return np.ascontiguousarray(np.roll(PANORAMA, -int(round(offset)), axis=1)[:, :W])


def zoom(frame: np.ndarray, factor: float) -> np.ndarray:
    m = cv2.getRotationMatrix2D(((W - 1) / 2, (H - 1) / 2), 0.0, factor)
    return cv2.warpAffine(frame, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def step(frame: np.ndarray, offset: float, action: np.ndarray, ppd: float, zoom_by: float) -> tuple[np.ndarray, float]:
    """The next frame of the synthetic engine (or a fake world moving ``ppd`` px/deg, zooming ``zoom_by``)."""
    turn = float(action[SPEC.index("turn")])
    if abs(turn) > 1e-6:
        offset += turn * ppd
        return view(offset), offset
    if action[SPEC.index("forward")] > 0.5:
        return zoom(frame, zoom_by), offset
    return frame, offset


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    """Two episodes: stand, turn right 8 deg/frame, stand, turn left, walk forward; poses recorded."""
    path = tmp_path_factory.mktemp("bars") / "data"
    writer = DatasetWriter.create(path, SPEC, (H, W), source="synthetic: a panorama slid and zoomed")
    noop, fwd = SPEC.noop(), SPEC.make(forward=1.0)
    right, left = SPEC.make(turn=8.0), SPEC.make(turn=-8.0)
    plan = [noop] * 4 + [right] * 10 + [noop] * 4 + [left] * 10 + [noop] * 3 + [fwd] * 12 + [noop] * 2
    for e in range(2):
        ep = writer.episode(e)
        offset, angle = 37.0 * e, 90.0
        frame = view(offset)
        for a in plan:
            ep.add_frame(frame, a, pose=(0.0, 0.0, 0.0, angle))  # frames[t] is seen before actions[t]
            frame, offset = step(frame, offset, a, PPD, ZOOM)
            angle = (angle - float(a[SPEC.index("turn")])) % 360  # ViZDoom's sense: a right turn lowers the angle
        ep.save()
    return Dataset(path)


@pytest.fixture(scope="module")
def real(synthetic_data):
    sharp_views = np.stack([view(o) for o in range(0, 512, 16)])  # unzoomed real frames: the sharpness reference
    return prb.real_motion(synthetic_data, [0, 1], sharp_views)


class FakeSession:
    """A world that slides the panorama ``ppd`` px per degree and zooms by ``zoom_by`` walking forward."""

    def __init__(self, ppd: float, zoom_by: float, blur: float):
        self.ppd, self.zoom_by, self.blur = ppd, zoom_by, blur
        self.reset()

    def reset(self, frames=None, *, actions=None, seed=None) -> np.ndarray:
        self.offset, self.frame = 0.0, view(0.0)
        return self.frame

    def rollout(self, actions: np.ndarray) -> np.ndarray:
        out = []
        for a in actions:
            self.frame, self.offset = step(self.frame, self.offset, a, self.ppd, self.zoom_by)
            out.append(cv2.GaussianBlur(self.frame, (0, 0), self.blur) if self.blur else self.frame)
        return np.stack(out)


class FakeWorld:
    spec = SPEC
    start_frames = None

    def __init__(self, ppd: float = PPD, zoom_by: float = ZOOM, blur: float = 0.0):
        self.args = (ppd, zoom_by, blur)

    def start(self, frames=None, **kw) -> FakeSession:
        return FakeSession(*self.args)


# ---------------------------------------------------------------------------
# the real references and the probes
def test_real_motion_reads_the_synthetic_engine(real, synthetic_data, tmp_path):
    assert real.degrees_from == "pose angle"
    assert real.turn_pairs == 2 * 2 * 10  # every turning pair: nothing moved before them
    assert real.slide_px_per_deg == pytest.approx(-PPD, rel=0.1)  # right turn: the picture slides left
    assert real.forward_pairs == 2 * 10  # 12 forward frames, the first 2 still settling
    assert real.forward_px > 0.5
    # without poses the degrees are the commanded turn: the same slide here
    bare = tmp_path / "bare"
    writer = DatasetWriter.create(bare, SPEC, (H, W), source="synthetic", pose_names=())
    ep = writer.episode(0)
    d = synthetic_data.episode(0).load(("frames", "actions"))
    for f, a in zip(d["frames"], d["actions"]):
        ep.add_frame(f, a)
    ep.save()
    r = prb.real_motion(Dataset(bare), [0], d["frames"][:4])
    assert r.degrees_from == "commanded turn" and r.slide_px_per_deg == pytest.approx(real.slide_px_per_deg, rel=0.05)


@pytest.mark.parametrize("ppd", [PPD, PPD / 2, 0.0])
def test_turn_probe_ratio_is_the_shift_over_the_real_slide(real, ppd):
    r = prb.run_probes(FakeWorld(ppd=ppd), real)["turn"]
    assert r["rate"] == 8.0
    for side, sign in (("right", -1), ("left", 1)):
        assert np.sign(r[side]["real_px"]) == sign
        for half in ("first", "second"):
            assert r[side][f"{half}_ratio"] == pytest.approx(ppd / PPD, abs=0.12), (side, half)


def test_forward_and_sharpness_probes(real):
    p = prb.run_probes(FakeWorld(), real)
    assert p["forward"]["ratio"] == pytest.approx(1.0, abs=0.15)
    assert prb.run_probes(FakeWorld(zoom_by=1.0), real)["forward"]["ratio"] == pytest.approx(0.0, abs=0.05)
    sharp = prb.run_probes(FakeWorld(zoom_by=1.0), real)["sharpness"]
    blurred = prb.run_probes(FakeWorld(zoom_by=1.0, blur=2.0), real)["sharpness"]
    assert sharp["frames"] == prb.SHARP_FRAMES and sharp["ratio"] == pytest.approx(1.0, abs=0.1)
    assert blurred["ratio"] < 0.3


def test_radial_flow_reads_expansion_and_ignores_a_slide():
    f = view(0)
    assert prb.radial_flow(f, zoom(f, 1.05)) > 0.5
    assert prb.radial_flow(zoom(f, 1.05), f) < -0.5
    assert abs(prb.radial_flow(f, view(3))) < 0.3
    assert prb.horizontal_flow(f, view(3)) == pytest.approx(-3, abs=0.3)


# ---------------------------------------------------------------------------
# the marks
def metrics(**over) -> dict:
    """A report's metrics holding every figure the bars read, each at its value ``over`` says."""
    v = {"sharp_start": 0.8, "sharp_long": 0.7, "black": 0, "frozen": 0, "frames": 10_000, "turn": 0.75, "forward": 0.75,
         "tf": 26.0, "copy": 21.0, "tf_sharp": 0.8, "ol": 20.0, "ol_copy": 19.0, "unet": None, "idm_fwd": (0.9, 1.0),
         "idm_turn": (0.45, 0.5), "readable": ["forward", "turn"], "fps": 60.0, "seconds": 6 * 3600.0, "res": [64, 64]}  # fmt: skip
    v.update(over)
    hs = ("1", "8", "32", "128")
    turn = {d: {"first_ratio": v["turn"], "second_ratio": v["turn"], "first_px": 1.0, "second_px": 1.0, "real_px": 1.0} for d in ("right", "left")}
    m = {
        "world": "w", "baselines": [], "skipped": [], "data": "d", "sampler": "fast", "seed": 0, "context_frames": 4,
        "held_out": {"episodes": ["0"], "fraction": 0.1, "source": "x"},
        "worlds": {"w": {"resolution": v["res"], "model": "warp", "path": "w", "memory_frames": 5}},
        "probes": {"real": {"turn_pairs": 10, "degrees_from": "pose angle", "forward_pairs": 10, "slide_px_per_deg": -0.4,
                            "forward_px": 1.0, "sharpness": 100.0},
                   "worlds": {"w": {"start": "world start frames", "session": "S",
                                    "sharpness": {"ratio": v["sharp_start"], "median": 1.0, "real_median": 1.0, "frames": 200},
                                    "turn": {"rate": 8.0, **turn}, "forward": {"ratio": v["forward"], "px": 1.0, "real_px": 1.0}}}},
        "stability": {"worlds": {"w": {"frames": v["frames"], "end": {
            "drives": 1, "last_frames": 200, "sharpness": 1.0, "sharpness_ratio": v["sharp_long"], "black_frames": v["black"],
            "white_frames": 0, "frozen_frames": v["frozen"], "black_below": 8.0, "white_above": 247.0, "frozen_run": 10, "frozen_change": 0.5}}}},
        "fidelity": {"w": {"teacher_forced": {"psnr": v["tf"], "copy_last_psnr": v["copy"], "sharpness_ratio": v["tf_sharp"],
                                              "sharpness": 1.0, "real_sharpness": 1.0},
                           "rollout": {"horizons": {h: {"psnr": v["ol"], "copy_last_psnr": v["ol_copy"]} for h in hs}, "skipped_horizons": {}}}},
        "control": {"worlds": {"w": {"idm": {
            "readable_controls": v["readable"], "readable_threshold": 0.6,
            "held_out_real": {"controls": {"forward": {"score": 0.7}, "turn": {"score": 0.9}}},
            "generated": {"controls": {"forward": {"score": v["idm_fwd"][0]}, "turn": {"score": v["idm_turn"][0]}}},
            "real_same_windows": {"controls": {"forward": {"score": v["idm_fwd"][1]}, "turn": {"score": v["idm_turn"][1]}}}}}}},
        "speed": {"source": "bench", "worlds": {"w": {"fps_batch1": v["fps"], "path": "onnx"}}},
        "training": {"seconds": v["seconds"], "source": "summary.json"},
    }  # fmt: skip
    if v["unet"] is not None:
        m["baselines"] = ["u"]
        m["worlds"]["u"] = {"resolution": v["res"], "model": "unet-baseline", "path": "u", "memory_frames": 5}
        m["fidelity"]["u"] = {"rollout": {"horizons": {h: {"psnr": v["unet"], "copy_last_psnr": v["ol_copy"]} for h in hs}}}
    return m


def marks(m: dict) -> dict:
    return {r["key"]: r["mark"] for r in bars.bar_rows(m)}


def test_marks_flip_exactly_at_each_bar():
    at = marks(metrics(unet=19.5))
    assert [r["key"] for r in bars.bar_rows(metrics())] == list(bars.BARS)
    assert {k: v for k, v in at.items() if k != "browser_fps"} == {k: "✓" for k in at if k != "browser_fps"}
    assert at["browser_fps"] == "–"
    below = {"sharp_start": 0.799, "sharp_long": 0.699, "turn": 0.7499, "forward": 0.7499, "tf": 25.99, "tf_sharp": 0.799,
             "fps": 59.9, "seconds": 6 * 3600.0 + 1, "idm_fwd": (0.8999, 1.0)}  # fmt: skip
    keys = {"sharp_start": "sharpness_start", "sharp_long": "sharpness_long", "turn": "turn_right", "forward": "forward",
            "tf": "tf_psnr", "tf_sharp": "tf_sharpness", "fps": "play_fps", "seconds": "training_hours", "idm_fwd": "idm_forward"}  # fmt: skip
    for name, value in below.items():
        assert marks(metrics(unet=19.5, **{name: value}))[keys[name]] == "✗", name
    assert marks(metrics(copy=21.01))["tf_psnr"] == "✗"  # 26 dB but only 4.99 over copy-last
    assert marks(metrics(black=1))["collapse_long"] == "✗" and marks(metrics(frozen=3))["collapse_long"] == "✗"
    assert marks(metrics(unet=20.0))["open_loop"] == "✗"  # not above the U-Net baseline
    assert marks(metrics(ol=19.0, unet=18.0))["open_loop"] == "✗"  # not above copy-last
    assert marks(metrics())["open_loop"] == "–"  # above copy-last, but no U-Net baseline to compare with
    assert marks(metrics(res=[128, 128], fps=30.0))["play_fps"] == "✓"
    assert marks(metrics(res=[128, 128], fps=29.9))["play_fps"] == "✗"


def test_unmeasured_bars_say_why():
    m = metrics(readable=["turn"], frames=2000, seconds=None)
    rows = {r["key"]: r for r in bars.bar_rows(m)}
    assert rows["idm_forward"]["mark"] == "–" and rows["idm_forward"]["value"] == "not read"
    assert rows["idm_turn"]["mark"] == "✓"
    assert rows["sharpness_long"]["mark"] == "–" and "10,000" in rows["sharpness_long"]["note"]
    assert rows["training_hours"]["mark"] == "–" and rows["browser_fps"]["note"].startswith("not measured by eval")
    assert marks(metrics(frames=2000, sharp_long=0.1))["sharpness_long"] == "✗"  # short, but already below
    for part in ("probes", "stability", "fidelity", "control", "speed"):
        m = metrics()
        del m[part]
        m["skipped"] = [part]
        rows = [r for r in bars.bar_rows(m) if r["mark"] == "–" and "skipped" in r["note"]]
        assert rows, part


def test_report_renders_the_bars_table_first():
    m = metrics(unet=19.5, sharp_start=0.1)
    m.update(baselines=[], skipped=["fidelity", "control", "stability", "memory", "speed", "probes"])
    for part in ("fidelity", "control", "stability", "speed", "probes"):
        m.pop(part)
    m["bars"] = bars.bar_rows(metrics(unet=19.5, sharp_start=0.1))
    md = render_markdown(m)
    table = md[md.index("## Bars") : md.index("## Verdict")]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + len(m["bars"])
    assert all(ln.count(" | ") == 4 for ln in lines)  # no stray | inside a cell
    assert "| ✗ | sharpness / real, first 200" in table and "| ✓ | held forward" in table
    printed = bars.format_bars(m["bars"]).splitlines()
    assert len(printed) == len(m["bars"]) and printed[0].startswith("✗ ") and printed[-1].startswith("✓ ")


def test_long_rollout_figures_from_the_stability_traces():
    from neuralworld.eval.stability import BLACK_LUMA, end_of_drives

    frames = 500
    traces = {"sharpness": np.full((2, frames), 50.0, np.float32), "luma": np.full((2, frames), 100.0, np.float32),
              "frozen": np.zeros((2, frames), np.float32)}  # fmt: skip
    traces["sharpness"][1, -200:] = 20.0  # the random drive blurs at the end
    traces["luma"][1, 10:13] = BLACK_LUMA - 1  # three black frames
    traces["luma"][0, :50] = 0.0  # the scripted drive's black frames do not count: the bar is about random play
    traces["frozen"][1, 100:110] = 1.0
    end = end_of_drives(traces, ["scripted", "random0"], real_sharpness=100.0)
    assert end["drives"] == 1 and end["sharpness_ratio"] == pytest.approx(0.2)
    assert (end["black_frames"], end["white_frames"], end["frozen_frames"]) == (3, 0, 10)
    assert end_of_drives(traces, ["scripted", "tour"], real_sharpness=100.0) is None
    three = {k: np.concatenate([v, v[1:], v[1:]]) for k, v in traces.items()}  # and two more random drives
    three["sharpness"][2, -200:], three["sharpness"][3, -200:] = 60.0, 80.0
    end = end_of_drives(three, ["scripted", "random0", "random1", "random2"], real_sharpness=100.0)
    assert end["drives"] == 3 and end["sharpness_ratio"] == pytest.approx(0.6) and end["lowest_ratio"] == pytest.approx(0.2)
    assert end["drive_ratios"] == pytest.approx([0.2, 0.6, 0.8]) and end["frozen_frames"] == 30


def test_training_time_from_the_bundle_or_the_run(tmp_path):
    from types import SimpleNamespace

    from neuralworld.eval.inputs import WorldLocation
    from neuralworld.eval.report import _training_time

    world = SimpleNamespace(meta={"training": {"minutes": 90}})
    assert _training_time(WorldLocation(tmp_path, None, None), world)["seconds"] == 5400
    (tmp_path / "summary.json").write_text(json.dumps({"seconds": 1234.5}))
    t = _training_time(WorldLocation(tmp_path / "world", tmp_path, {}), SimpleNamespace(meta={"training": {"steps": {}}}))
    assert t["seconds"] == 1234.5 and "summary.json" in t["source"]
    assert _training_time(WorldLocation(tmp_path, None, None), SimpleNamespace(meta={}))["seconds"] is None


# ---------------------------------------------------------------------------
# every world kind plays the probes through its session
@pytest.mark.parametrize("kind", ["world", "unet-baseline", "warp"])
def test_probes_play_every_world_kind(kind, real, tmp_path):
    torch = pytest.importorskip("torch")
    from neuralworld.bundle import build_networks, load_bundle, save_bundle
    from neuralworld.model.config import preset
    from neuralworld.model.unet import baseline_preset
    from neuralworld.model.warp import warp_preset

    make = {"world": preset, "unet-baseline": baseline_preset, "warp": warp_preset}[kind]
    cfg = make("tiny", spec=SPEC, resolution=(32, 32))  # small: the U-Net samples in several steps
    torch.manual_seed(0)
    ae, dyn = build_networks(cfg)
    start = np.stack([view(o)[:32, :32] for o in range(0, 40, 4)])
    world = load_bundle(save_bundle(tmp_path / kind, cfg, ae, dyn, start_frames=start))
    assert world.model == kind
    p = prb.run_probes(world, real, backend="eager")
    assert p["start"] == "world start frames" and "eager" in p["session"]
    for side in ("right", "left"):
        assert len(p["turn"][side]["per_frame_px"]) == prb.TURN_FRAMES and np.isfinite(p["turn"][side]["first_px"])
    assert np.isfinite(p["forward"]["px"]) and p["sharpness"]["ratio"] >= 0
    json.dumps(p)  # metrics.json takes it as it is


def test_cli_bars_on_the_shipped_world(tmp_path):
    """The real command on the shipped world, the probes alone, on a small recording of its map
    made here (the engine's slide and forward flow are measured from it)."""
    pytest.importorskip("vizdoom")
    from neuralworld.record.doom import RecordConfig, record

    shipped = Path(__file__).parents[1] / "worlds" / "freedoom-map01"
    data = tmp_path / "map01"
    record(RecordConfig(env="doom/freedoom_map01", episodes=12, workers=2, resolution=(64, 64), max_steps=1000, seed=1000),
           data, progress=False)
    p = subprocess.run([CLI, "eval", str(shipped), "--data", str(data), "--report", str(tmp_path / "r"), "--episodes", "1",
                        "--horizons", "1,8", "--skip", "control,stability,memory"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert json.loads(lines[-1])["report"].endswith("report.md")
    assert sum(ln[:1] in "✓✗–" for ln in lines[:-1]) == len(bars.BARS)
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert [r["key"] for r in saved["bars"]][:1] == ["sharpness_start"]
    assert saved["probes"]["real"]["turn_pairs"] > 10 and saved["probes"]["real"]["forward_pairs"] > 10


def test_opposite_buttons_held_together_do_not_move_the_view():
    from neuralworld.actions import ActionSpec, Axis
    from neuralworld.eval.inputs import controls_moving

    spec = ActionSpec(buttons=("forward", "back", "strafe_left", "strafe_right", "attack", "use"),
                      axes=(Axis("turn", -15.0, 15.0, "deg/frame"),), fps=17.5)
    rows = [spec.make(forward=1), spec.make(strafe_left=1, strafe_right=1), spec.make(forward=1, back=1),
            spec.make(strafe_left=1, strafe_right=1, forward=1), spec.make(attack=1), spec.make(turn=3.0),
            spec.make(strafe_left=1, strafe_right=1, turn=-1.0), spec.noop()]
    assert controls_moving(spec, np.stack(rows)).tolist() == [True, False, False, True, False, True, True, False]
