"""The world that ships in worlds/: ``neuralworld play`` with no argument finds it, it loads
with nothing else, and "turn left" moves the picture the way turning left does (the scene
slides right): in Python, on the play page, and on the exported static page.

The direction is read off the generated frames: the horizontal slide between consecutive
frames by block matching (``eval.control.image_shifts``; on recorded data it correlates
-0.80 with the commanded turn: turning right slides the picture left, ~3.7 px/frame at the
7.5 deg/frame held here). The shipped CPU-trained world turns the right way but weakly, so
each check compares left with right over fixed noise seeds rather than ask for the engine's
rate; the evaluation report measures the rate.

The pages are asked the same way, with their noise seeded so that a run is a replay, not a
draw: the play page resets its server session with a seed while the arrow key is held (every
frame the browser receives is collected, keyed by step); the exported page holds the key,
then runs the action the page made from it through its worker's seeded rollout.
"""

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

import neuralworld
from neuralworld.backends import fastest_exact
from neuralworld.eval.control import image_shifts
from neuralworld.play.server import DEFAULT_WORLD, resolve_world

HOLD = 7.5
"""What ArrowLeft / ArrowRight hold: half the turn range, in degrees per frame."""
FRAMES = 16
"""Frames a turn is held for, from the start frames."""
SEEDS = range(4)


@pytest.fixture(scope="module")
def shipped():
    assert DEFAULT_WORLD is not None, "no world ships: neuralworld play has nothing to open on a fresh machine"
    path = resolve_world(None)
    assert (path / "model.safetensors").stat().st_size < 50 * 2**20, "a shipped bundle must stay under 50 MB"
    return path


@pytest.fixture(scope="module")
def world(shipped):
    return neuralworld.load(shipped)


def slide(frames) -> np.ndarray:
    """Horizontal slide (px/frame, + = the picture moves right) between consecutive frames."""
    return image_shifts(frames)


def held_slide(start: np.ndarray, frames) -> float:
    """Mean slide (px/frame) of a turn held from ``start`` through ``frames``."""
    return float(np.mean(slide([start, *frames])))


def assert_turns_the_right_way(left, right, where: str) -> None:
    """Held left slides the picture right (+), held right slides it left, seed by seed."""
    left, right = np.asarray(left), np.asarray(right)
    print(f"\n{where}: held left slides {np.round(left, 2)} px/frame, held right {np.round(right, 2)}")
    assert left.mean() > 0.1 and (left - right).mean() > 0.2 and (left > right).sum() >= len(left) - 1, (left, right)


def test_turn_left_slides_the_picture_right(world):
    """Held from the start frames with four noise seeds, in ``WorldSession``."""

    def held(turn, seed):
        session = world.start(sampler="fast", seed=seed)
        action = world.spec.make(turn=turn)
        return held_slide(session.frame, [session.step(action) for _ in range(FRAMES)])

    assert_turns_the_right_way([held(-HOLD, s) for s in SEEDS], [held(HOLD, s) for s in SEEDS], "WorldSession")


def test_python_api_plays_what_the_player_plays(world):
    """``neuralworld.load(path).start()`` plays the ``fast`` preset on the fastest exact backend
    (ONNX Runtime where it is installed, as ``neuralworld play``), and its repr says so;
    ``quality`` is one argument away."""
    s = world.start()
    want = "onnx" if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx") else "eager"
    assert s.backend.name == want and fastest_exact(world) == want
    q = world.start(sampler="quality")
    if getattr(world.dynamics, "one_step", False):  # a one-step generator: one call per frame, whatever the preset
        assert "sampler fast (euler, 1 step)" in repr(s) and f"backend {want}," in repr(s), repr(s)
        assert s.sampler.calls == q.sampler.calls == 1 and s.dynamics is q.dynamics is world.dynamics
    else:
        assert f"sampler fast (euler, {world.distilled_steps} step" in repr(s) and f"backend {want}," in repr(s), repr(s)
        assert s.dynamics is world.distilled
        assert q.sampler.calls == 15 and q.dynamics is world.dynamics
        assert "sampler quality (heun, 8 steps)" in repr(q) and f"backend {want}," in repr(q), repr(q)
    assert s.step(world.spec.make(forward=1)).shape == (*world.resolution, 3)
    assert q.step(world.spec.noop()).shape == (*world.resolution, 3)


def test_auto_backend_falls_back_to_eager(world, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed: importing it fails
    s = world.start()
    assert s.backend.name == "eager" and "backend eager," in repr(s)
    monkeypatch.undo()
    unet = SimpleNamespace(dynamics=torch.nn.Conv2d(3, 3, 1))  # a world ONNX does not export (the U-Net baseline)
    assert fastest_exact(unet) == "eager"


# ---------------------------------------------------------------------------
# the same, pressing the arrow keys on the pages in Chromium
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def start_frame(world):
    return world.start(sampler="fast").frame


def test_turn_left_on_the_play_page(world, start_frame, tmp_path):
    """``neuralworld play``'s page: hold the arrow key, reset the session with a seed, and read
    the frames the browser receives (JPEGs keyed by step) for the first ``FRAMES`` steps."""
    from test_play import CHROMIUM, CHROMIUM_ARGS, ServerThread

    from neuralworld.play.server import PlayConfig, create_app, unpack_frame

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; .ci/run does): the page is not tested")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    got: dict[int, tuple[dict, np.ndarray]] = {}
    since_reset = [False]

    def received(payload):
        if isinstance(payload, str):
            since_reset[0] |= json.loads(payload).get("type") == "reset"
            return
        header, jpeg = unpack_frame(payload)
        if since_reset[0] and header["step"] <= FRAMES + 2:  # frames made before the reset are past that
            got[header["step"]] = header, cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def held(page, key, seed):
        page.wait_for_function(f"nw.lastHeader.step > {FRAMES + 2}", timeout=30_000)
        got.clear()
        since_reset[0] = False
        page.evaluate(f"nw.send({{type: 'reset', seed: {seed}}})")
        deadline = time.monotonic() + 30
        while max(got, default=0) < FRAMES:  # Playwright hands over frames while it waits
            assert time.monotonic() < deadline, f"only steps {sorted(got)} came after the reset"
            page.wait_for_timeout(50)
        steps = [k for k in sorted(got) if k <= FRAMES]
        assert steps[0] <= 2 and len(steps) >= FRAMES - 2, f"too many frames dropped: {steps}"
        assert all(got[k][0]["action"]["turn"] == (-HOLD if key == "ArrowLeft" else HOLD) for k in steps)
        frames = [start_frame] + [got[k][1] for k in steps]
        return float(np.sum(slide(frames)) / steps[-1])  # a dropped frame's slide is in the next pair's

    with ServerThread(create_app(world, PlayConfig(max_players=1))) as server, sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                   headless=True, args=CHROMIUM_ARGS)
        try:
            page = ctx.new_page()
            page.on("websocket", lambda ws: ws.on("framereceived", received))
            page.goto(server.url)
            page.wait_for_function("window.nw && nw.stats.framesShown >= 5", timeout=60_000)
            slides = {}
            for key, turn in (("ArrowLeft", -HOLD), ("ArrowRight", HOLD)):
                page.keyboard.down(key)
                page.wait_for_function(f"nw.lastHeader.action.turn === {turn}", timeout=10_000)
                slides[key] = [held(page, key, seed) for seed in SEEDS]
                page.keyboard.up(key)
            assert page.evaluate("nw.errors") == []
        finally:
            ctx.close()
    assert_turns_the_right_way(slides["ArrowLeft"], slides["ArrowRight"], "play page")


def test_turn_left_on_the_exported_page(shipped, start_frame, tmp_path):
    """``neuralworld export --web``'s page, with the network cut: hold the arrow key, take the
    action the page made of it, and run it through the worker's seeded rollout."""
    pytest.importorskip("onnxruntime")
    from test_web_export import HAVE_ORT_WEB, _browser_page

    from neuralworld.actions import ActionSpec
    from neuralworld.play.export import MANIFEST_FILE, StaticServer, export_web

    if not HAVE_ORT_WEB:
        pytest.skip("onnxruntime-web is not installed (npm ci; ./setup.sh does)")
    site = export_web(shipped, tmp_path / "site")
    spec = ActionSpec.from_json_dict(json.loads((site / MANIFEST_FILE).read_text())["spec"])
    rollout = "(a) => nw.transport.rollout(a[0], a[1]).then(r => r.frames.map(f => Array.from(f)))"
    slides = {}
    with StaticServer(site) as server, _browser_page(server.url, tmp_path) as page:
        H, W = json.loads((site / MANIFEST_FILE).read_text())["resolution"]
        for key, turn in (("ArrowLeft", -HOLD), ("ArrowRight", HOLD)):
            page.keyboard.down(key)
            page.wait_for_function(f"nw.lastHeader && nw.lastHeader.action.turn === {turn}", timeout=10_000)
            action = spec.normalize(spec.make(page.evaluate("nw.lastHeader.action")))  # what the key made
            page.keyboard.up(key)
            slides[key] = []
            for seed in SEEDS:
                rgba = np.array(page.evaluate(rollout, [[list(map(float, action))] * FRAMES, seed]), np.uint8)
                slides[key].append(held_slide(start_frame, rgba.reshape(FRAMES, H, W, 4)[..., :3]))
            page.evaluate("nw.transport.resume()")  # a rollout pauses the live loop
    assert_turns_the_right_way(slides["ArrowLeft"], slides["ArrowRight"], "exported page")
