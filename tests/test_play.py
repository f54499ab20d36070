"""The web player end to end: the server (in a thread) on a tiny real world, WebSocket
clients for the protocol, and Debian's headless Chromium for the page.

Browser tests skip only where /usr/bin/chromium is absent (.ci/run installs it)."""

import asyncio
import base64
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest


import neuralworld  # noqa: E402
from neuralworld.cli import main as cli_main  # noqa: E402
from neuralworld.play.protocol import MessageError, decode_image, pack_frame, parse_action, unpack_frame  # noqa: E402
from neuralworld.play.server import PlayConfig, bind_socket, create_app  # noqa: E402
from neuralworld.play.worlds import PlayError, resolve_world  # noqa: E402
from neuralworld.session import fit_frame  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


class ServerThread:
    """The app under uvicorn in a background thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        import uvicorn

        self.app, self.hub = app, app.state.hub
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", ws_max_size=16 * 1024 * 1024)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=15)


def run_async(coro_fn, *args, timeout=120):
    """Run an async client in its own thread and loop (apart from Playwright's)."""
    box = {}

    def target():
        try:
            box["value"] = asyncio.run(coro_fn(*args))
        except BaseException as e:  # handed to the test's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the client timed out"
    if "error" in box:
        raise box["error"]
    return box["value"]


def png_base64(img_rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def test_image(h=48, w=80) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (220, 40, 40)
    img[:, w // 2 :] = (40, 200, 60)
    return img


test_image.__test__ = False  # a helper, not a test


# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world_path(tiny_world_run):
    return tiny_world_run[1] / "world"


@pytest.fixture(scope="module")
def world(world_path):
    return neuralworld.load(world_path)


@pytest.fixture(scope="module")
def server(world):
    with ServerThread(create_app(world, PlayConfig(max_players=4))) as s:
        yield s


@pytest.fixture
def browser(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; .ci/run does): the page is not tested")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 900, "height": 760},
        )  # fmt: skip
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    console_errors: list[str] = []
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)  # a 404 logs one
    page.on("response", lambda r: console_errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(server.url)
    page.wait_for_function("window.nw && nw.stats.framesShown >= 5", timeout=30_000)
    page.console_errors = console_errors
    yield page
    assert not console_errors, console_errors
    page.close()


# ---------------------------------------------------------------------------
# pieces, without a server
# ---------------------------------------------------------------------------
def test_messages_and_world_paths(world, world_path):
    spec = world.spec
    a = parse_action(spec, {"buttons": {"forward": True, "attack": 0}, "axes": {"turn": -7.5}})
    assert spec.to_dict(a)["forward"] == 1.0 and spec.to_dict(a)["turn"] == -7.5
    assert np.array_equal(parse_action(spec, {}), spec.noop())
    for bad, why in [
        ({"buttons": {"fly": 1}}, "unknown button 'fly'"),
        ({"axes": {"forward": 1}}, "unknown axis 'forward'"),
        ({"axes": {"turn": 99}}, "outside its range"),
        ({"buttons": {"forward": 0.5}}, "buttons are 0 or 1"),
        ({"axes": {"turn": "left"}}, "must be a number"),
        ({"axes": {"turn": True}}, "must be a number"),
        ({"buttons": [1, 0]}, '"buttons" and "axes" objects'),
    ]:
        with pytest.raises(MessageError, match=why):
            parse_action(spec, bad)

    img = test_image()
    assert np.array_equal(decode_image(png_base64(img)), img)
    assert np.array_equal(decode_image("data:image/png;base64," + png_base64(img)), img)
    for bad, why in [("%%%", "not valid base64"), (base64.b64encode(b"hello").decode(), "does not decode"), (None, "needs")]:
        with pytest.raises(MessageError, match=why):
            decode_image(bad)

    header, jpeg = unpack_frame(pack_frame({"step": 3}, b"\xff\xd8jpeg"))
    assert header == {"step": 3} and jpeg == b"\xff\xd8jpeg"

    assert resolve_world(str(world_path)) == world_path
    assert resolve_world(str(world_path.parent)) == world_path  # a run folder
    with pytest.raises(PlayError, match="no such world"):
        resolve_world(str(world_path / "nope"))
    with pytest.raises(PlayError, match="neither a world bundle"):
        resolve_world(str(world_path.parent.parent))
    assert resolve_world(None) == resolve_world("freedoom-map01")  # the shipped world, by name too


def test_cli_errors_are_one_line(world_path, tmp_path, capsys, monkeypatch):
    import neuralworld.play.worlds as worlds_module

    monkeypatch.setattr(worlds_module, "DEFAULT_WORLD", None)  # a checkout without a shipped world
    assert cli_main(["play"]) == 2
    assert cli_main(["play", str(tmp_path / "missing")]) == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli_main(["play", str(world_path), "--port", str(port)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("neuralworld play: error: ") for line in lines), lines
    assert "no world given" in lines[0] and "no such world" in lines[1]
    assert f"port {port} on 127.0.0.1 is taken" in lines[2] and "--port" in lines[2]


# ---------------------------------------------------------------------------
# the protocol, with WebSocket clients
# ---------------------------------------------------------------------------
async def _recv_until(ws, pred, timeout=20.0):
    """Messages until pred(msg) holds (frames as (header, jpeg), text as dicts)."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        msg = unpack_frame(raw) if isinstance(raw, bytes) else json.loads(raw)
        seen.append(msg)
        if pred(msg):
            return seen


def _is_frame(m):
    return isinstance(m, tuple)


def test_bad_messages_get_error_replies_and_everyone_keeps_playing(server, world):
    import websockets

    bad = [
        ("{not json", "malformed JSON"),
        ("[1, 2]", 'a JSON object with a "type"'),
        (json.dumps({"type": "teleport"}), "unknown message type 'teleport'"),
        (json.dumps({"type": "action", "buttons": {"fly": 1}}), "unknown button 'fly'"),
        (json.dumps({"type": "action", "axes": {"turn": 1e6}}), "outside its range"),
        (json.dumps({"type": "action", "buttons": {"forward": 0.5}}), "buttons are 0 or 1"),
        (json.dumps({"type": "start_image", "data": "x" * (3 * 1024 * 1024)}), "over the limit"),
        (json.dumps({"type": "start_image", "data": base64.b64encode(b"not an image").decode()}), "does not decode"),
        (json.dumps({"type": "start_image", "data": "!!!"}), "not valid base64"),
        (json.dumps({"type": "record", "on": "yes"}), "record needs"),
        (json.dumps({"type": "reset", "seed": -1}), 'reset "seed" must be an integer'),
        (json.dumps({"type": "reset", "seed": "7"}), 'reset "seed" must be an integer'),
        (b"\x00\x01binary", "binary messages"),
    ]

    async def scenario():
        async with websockets.connect(server.ws_url, max_size=None) as a, websockets.connect(server.ws_url, max_size=None) as b:
            await _recv_until(b, _is_frame)
            await _recv_until(a, _is_frame)
            for message, _ in bad:
                await a.send(message)
            seen = await _recv_until(a, lambda m: isinstance(m, dict) and m.get("type") == "error" and "binary" in m["message"])
            errors = [m["message"] for m in seen if isinstance(m, dict) and m.get("type") == "error"]
            # after all that, A still plays and its valid actions still count
            await a.send(json.dumps({"type": "action", "buttons": {"forward": 1}, "axes": {"turn": 5.0}, "seq": 7, "t": 1.0}))
            got = await _recv_until(a, lambda m: _is_frame(m) and m[0]["seq"] == 7)
            header, jpeg = got[-1]
            # and B played all along
            b_frames, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < 1.5:
                raw = await asyncio.wait_for(b.recv(), 5)
                b_frames += isinstance(raw, bytes)
            return errors, header, jpeg, b_frames

    errors, header, jpeg, b_frames = run_async(scenario)
    assert len(errors) == len(bad), errors
    for msg, (_, why) in zip(errors, bad):
        assert why in msg, (why, msg)
    assert header["action"]["forward"] == 1.0 and header["action"]["turn"] == 5.0
    frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape == (*world.resolution, 3)
    assert b_frames >= 10, f"the other player got only {b_frames} frames in 1.5 s"


def test_a_seeded_reset_replays_the_same_frames(server, world):
    """{"type": "reset", "seed": n}: the same seed and actions make the same frames again,
    as gymnasium's reset(seed=) does; what the page's direction test stands on."""
    import websockets

    async def run(ws, seed):
        await _recv_until(ws, lambda m: _is_frame(m) and m[0]["step"] >= 8)  # frames from before stay above step 4
        await ws.send(json.dumps({"type": "reset", "seed": seed}))
        await _recv_until(ws, lambda m: isinstance(m, dict) and m.get("type") == "reset")
        seen = await _recv_until(ws, lambda m: _is_frame(m) and m[0]["step"] >= 4)
        return {h["step"]: cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR).astype(int) for h, j in filter(_is_frame, seen)
                if h["step"] <= 4}

    async def scenario():
        async with websockets.connect(server.ws_url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "action", "buttons": {"forward": 1}, "axes": {"turn": -5.0}, "seq": 1}))
            return await run(ws, 5), await run(ws, 5), await run(ws, 6)

    a, b, c = run_async(scenario)
    common = sorted(set(a) & set(b) & set(c))
    assert len(common) >= 3, (sorted(a), sorted(b), sorted(c))
    assert all(np.abs(a[k] - b[k]).max() <= 2 for k in common), "the same seed made other frames"
    assert any(np.abs(a[k] - c[k]).mean() > 0.5 for k in common), "another seed made the same frames"


def test_players_beyond_the_cap_are_refused(world):
    import websockets

    async def scenario():
        async with websockets.connect(s.ws_url) as first:
            await _recv_until(first, _is_frame)
            async with websockets.connect(s.ws_url) as second:
                refusal = json.loads(await asyncio.wait_for(second.recv(), 10))
                try:
                    await asyncio.wait_for(second.recv(), 10)
                except websockets.ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd else None
            still = await _recv_until(first, _is_frame)
            return refusal, code, still

    with ServerThread(create_app(world, PlayConfig(max_players=1))) as s:
        refusal, code, still = run_async(scenario)
    assert refusal["type"] == "error" and "full (1 players)" in refusal["message"]
    assert code == 1013 and still


def test_unknown_recording_is_404(server):
    for rec in ("0" * 32, "..%2F..%2Fetc%2Fpasswd", "abc"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server.url}recordings/{rec}.mp4", timeout=10)
        assert e.value.code == 404
    info = json.load(urllib.request.urlopen(server.url + "api/world", timeout=10))
    assert info["resolution"] == [32, 32] and info["spec"]["axes"][0]["name"] == "turn"
    assert info["hints"]["forward"] == "W / Up"


# ---------------------------------------------------------------------------
# the page, in Chromium
# ---------------------------------------------------------------------------
def test_page_shows_frames_and_hud(page, world):
    time.sleep(1.5)  # a second of frames for the client-side frame rate
    fps = float(page.inner_text("#hud-fps"))
    latency = page.inner_text("#hud-latency")
    assert fps > 0, "the HUD shows no frame rate"
    assert latency.isdigit(), f"the HUD shows no latency: {latency!r}"
    assert page.inner_text("#hud-world") == world.name
    assert int(page.inner_text("#hud-step")) >= 5
    size, opaque = page.evaluate(
        """() => { const c = document.getElementById('screen'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let drawn = 0; for (let i = 3; i < d.length; i += 4) drawn += d[i] === 255;
                   return [[c.width, c.height], drawn / (d.length / 4)]; }"""
    )
    assert size == [32, 32]
    rendering = page.evaluate("getComputedStyle(document.getElementById('screen')).imageRendering")
    assert rendering == "pixelated"
    box = page.locator("#screen").bounding_box()
    assert box["width"] >= 256, "the frame is scaled up on the page"
    assert opaque == 1.0, "frames are drawn over the whole canvas"
    print(f"\npage: {fps:.1f} fps, {latency} ms action->frame")


def _canvas_gray(page) -> np.ndarray:
    data = page.evaluate(
        "() => { const c = document.getElementById('screen'); return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"
    )
    rgba = np.array(data, np.float32).reshape(32, 32, 4)
    return rgba[..., :3].mean(-1)


def test_turn_left_reaches_the_world(page, server):
    """Hold ArrowLeft: the server must receive turn = half the range, negative (left),
    and the world must keep stepping with it."""
    hub = server.hub
    step0 = page.evaluate("nw.stats.step")
    page.keyboard.down("ArrowLeft")
    page.wait_for_function("nw.lastHeader && nw.lastHeader.action.turn === -7.5", timeout=10_000)
    grays = []
    for _ in range(8):  # consecutive displayed frames while turning
        n = page.evaluate("nw.stats.framesShown")
        page.wait_for_function(f"nw.stats.framesShown > {n}", timeout=10_000)
        grays.append(_canvas_gray(page))
    turning = [p.stats() for p in hub.players.values() if p.stats()["action"]["turn"] == -7.5]
    assert len(turning) == 1, [p.stats() for p in hub.players.values()]
    assert turning[0]["action"]["forward"] == 0.0
    header = page.evaluate("nw.lastHeader")
    assert header["action"]["turn"] == -7.5 and header["step"] > step0 + 5
    page.keyboard.up("ArrowLeft")
    page.wait_for_function("nw.lastHeader.action.turn === 0", timeout=10_000)

    # Image motion. This 20-step world cannot turn, so here the world only has to keep
    # generating while the control is held; test_shipped_world.py checks the direction
    # of the picture's motion with the trained world, on this page and on the export.
    shifts = [cv2.phaseCorrelate(a.astype(np.float64), b.astype(np.float64))[0][0] for a, b in zip(grays, grays[1:])]
    changed = [float(np.abs(a - b).mean()) for a, b in zip(grays, grays[1:])]
    print(f"\nturn left: mean horizontal image shift {np.mean(shifts):+.2f} px/frame, mean change {np.mean(changed):.2f}")
    assert all(np.isfinite(shifts))

    # the mouse maps to the same axis: dx to the right turns right, clamped to the range
    assert page.evaluate("nw.mouseDx = 30, nw.currentAction().axes.turn") == 7.5
    assert page.evaluate("nw.mouseDx = -1000, nw.currentAction().axes.turn") == -15
    # and WASD to the buttons named by the ActionSpec's hints
    page.keyboard.down("KeyW")
    page.wait_for_function("nw.lastHeader.action.forward === 1", timeout=10_000)
    page.keyboard.up("KeyW")


def test_reset_and_start_from_image(page, server, tmp_path):
    page.wait_for_function("nw.stats.step >= 20", timeout=20_000)
    page.click("#reset")
    page.wait_for_function("nw.messages.some(m => m.type === 'reset' && m.step === 0)", timeout=10_000)
    page.wait_for_function("nw.lastHeader.step < 15", timeout=10_000)  # the step count started over

    img = test_image()
    path = tmp_path / "start.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    page.set_input_files("#start-image", str(path))
    page.wait_for_function("nw.messages.some(m => m.type === 'started')", timeout=10_000)
    started = page.evaluate("nw.messages.find(m => m.type === 'started')")
    assert started["image"] == [48, 80] and started["step"] == 0
    starts = [p.start_image for p in server.hub.players.values() if p.start_image is not None]
    fitted = fit_frame(img, (32, 32)).astype(int)  # the server keeps only the frame fitted to the world
    assert len(starts) == 1 and starts[0].shape == (32, 32, 3) and np.abs(starts[0].astype(int) - fitted).max() <= 2
    assert page.evaluate("nw.errors") == []
    assert "started from a 80×48 image" in page.inner_text("#status")


def test_record_downloads_a_playable_mp4(page, server, tmp_path):
    import av

    page.click("#record")
    page.wait_for_function("document.getElementById('record').textContent === 'Stop'", timeout=10_000)
    n = page.evaluate("nw.stats.framesShown")
    page.wait_for_function(f"nw.stats.framesShown >= {n + 20}", timeout=20_000)
    assert page.is_visible("#hud-rec")
    page.click("#record")
    page.wait_for_selector("#download:not([hidden])", timeout=30_000)
    href = page.get_attribute("#download", "href")
    assert href.startswith("/recordings/") and href.endswith(".mp4")
    out = tmp_path / "rec.mp4"
    out.write_bytes(urllib.request.urlopen(server.url + href.lstrip("/"), timeout=10).read())
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) >= 20
    assert frames[0].shape == (256, 256, 3)  # 32x32 scaled by whole pixels to watchable size
    rec = page.evaluate("nw.messages.filter(m => m.type === 'recording').pop()")
    assert rec["frames"] == len(frames)


def test_backend_is_chosen_once_and_shared(world):
    from neuralworld.play.server import Hub
    from neuralworld.play.worlds import resolve_backend

    assert resolve_backend("auto") == "onnx"  # onnxruntime comes with ./setup.sh: the fastest exact path
    with pytest.raises(PlayError, match="backend must be auto or one of"):
        resolve_backend("warp-drive")
    for name in ("eager", "onnx"):
        hub = Hub(world, PlayConfig(backend=name))
        try:
            a = world.start(None, sampler="fast", backend=hub.backend)
            b = world.start(None, sampler="fast", backend=hub.backend, seed=1)
            assert a.backend is b.backend is hub.backend  # one export / one set of graphs for every player
            assert a.step(world.spec.make(forward=1)).shape == (32, 32, 3)
        finally:
            hub.close()
