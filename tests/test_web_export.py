"""``neuralworld export --web``: the folder, its graphs against PyTorch, and the page in
headless Chromium served by a plain static server with every other request refused.

The page's loop (static/world-worker.js) is mirrored here in Python twice: on ONNX
Runtime with numpy rings (what the page feeds its graphs) and on the PyTorch modules
(the reference), with the page's noise generator (mulberry32 + Box-Muller) ported
exactly, so frames made in the browser are checked against PyTorch pixel for pixel.

Browser tests skip only where /usr/bin/chromium is absent (.ci/run installs it)."""

import contextlib
import json
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import neuralworld  # noqa: E402
from neuralworld.actions import ActionSpec  # noqa: E402
from neuralworld.cli import main as cli_main  # noqa: E402
from neuralworld.model.autoencoder import frames_to_tensor  # noqa: E402
from neuralworld.play.export import (  # noqa: E402
    ENCODER_FILE,
    MANIFEST_FILE,
    ORT_ENV,
    ORT_FILES,
    ORT_WEB_VERSION,
    START_FILE,
    ExportError,
    StaticServer,
    export_web,
    find_onnxruntime_web,
)
from test_play import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (one browser setup for both pages)

try:
    find_onnxruntime_web()
    HAVE_ORT_WEB = True
except ExportError:
    HAVE_ORT_WEB = False
needs_ort_web = pytest.mark.skipif(not HAVE_ORT_WEB, reason="onnxruntime-web is not installed (npm ci; ./setup.sh does)")


# ---------------------------------------------------------------------------
# the page's loop, in Python
# ---------------------------------------------------------------------------
M32 = 0xFFFFFFFF


def _imul(a: int, b: int) -> int:
    return (a * b) & M32


class PageNoise:
    """world-worker.js's ``makeRng``, bit for bit: mulberry32 uniforms, Box-Muller pairs."""

    def __init__(self, seed: int):
        self.s = seed & M32

    def uniform(self) -> float:
        self.s = (self.s + 0x6D2B79F5) & M32
        z = self.s
        z = _imul(z ^ (z >> 15), z | 1)
        z ^= (z + _imul(z ^ (z >> 7), z | 61)) & M32
        return ((z ^ (z >> 14)) & M32) / 4294967296

    def normal(self, n: int) -> np.ndarray:
        out = np.empty(n, np.float32)
        for i in range(0, n, 2):
            u1, u2 = 1 - self.uniform(), self.uniform()
            r, a = math.sqrt(-2 * math.log(u1)), 2 * math.pi * u2
            out[i] = r * math.cos(a)
            if i + 1 < n:
                out[i + 1] = r * math.sin(a)
        return out


def page_rollout(step_fn, append_fn, decode_fn, manifest, start, actions, seed):
    """session.py's loop as the page runs it: prime from the start context, then per action
    noise -> sampler -> context noise + append -> decode. Returns (latents, frames)."""
    shape = (1, *manifest["latent_shape"])
    n = int(np.prod(shape))
    sampler = manifest["sampler"]
    level = sampler["context_level"]
    noise = PageNoise(seed)

    def remember(z, a):
        if level > 0:
            z = ((1 - level) * z + level * noise.normal(n).reshape(shape)).astype(np.float32)
        append_fn(z, level, a)

    for z, a in zip(*start):
        remember(z[None], a[None])
    latents, frames = [], []
    ts = sampler["flow_times"]
    for a in actions:
        a = np.asarray(a, np.float32)[None]
        x = noise.normal(n).reshape(shape)
        for t, tn in zip(ts[:-1], ts[1:]):
            v = step_fn(x, t, a)
            if sampler["method"] == "heun" and tn > 0:
                x = (x + 0.5 * (tn - t) * (v + step_fn((x + (tn - t) * v).astype(np.float32), tn, a))).astype(np.float32)
            else:
                x = (x + (tn - t) * v).astype(np.float32)
        remember(x, a)
        latents.append(x)
        frames.append(decode_fn(x))
    return latents, frames


def to_pixels(frame: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) ~[-1, 1] -> uint8 (H, W, 3), rounded as the page rounds."""
    return np.floor((np.clip(frame[0], -1, 1) + 1) * 127.5 + 0.5).astype(np.uint8).transpose(1, 2, 0)


class OnnxPage:
    """The exported graphs driven as world-worker.js drives them: feeds by the manifest's
    names, rings as typed arrays (DynamicsCache.push by hand)."""

    def __init__(self, folder: Path):
        import onnxruntime as ort

        self.m = json.loads((folder / MANIFEST_FILE).read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        g = self.m["graphs"]
        self.step_s, self.decoder_s, self.encoder_s = (
            ort.InferenceSession(str(folder / g[k]["file"]), opts, providers=["CPUExecutionProvider"]) for k in ("step", "decoder", "encoder")
        )
        self.inputs = g["step"]["inputs"]
        dt = {"float32": np.float32, "int64": np.int64, "bool": np.bool_}
        self.cache = {k: np.zeros(s, dt[d]) for k, (s, d) in self.inputs.items() if k not in ("latent", "noise_level", "action")}
        for kind in ("full", "pooled"):
            self.cache[f"{kind}_age"][:] = np.arange(1, len(self.cache[f"{kind}_age"]) + 1)
        self.next = {"full": 0, "pooled": 0}
        start = np.fromfile(folder / START_FILE, "<f4")
        st = self.m["start"]
        nl = int(np.prod(st["latents"]["shape"]))
        self.start = (start[:nl].reshape(st["latents"]["shape"]), start[nl:].reshape(st["actions"]["shape"]))
        assert st["actions"]["offset"] == nl * 4

    def run(self, x, level, a, outputs):
        feed = {"latent": x, "noise_level": np.array([level], np.float32), "action": a, **self.cache}
        return self.step_s.run(outputs, feed)

    def step(self, x, level, a):
        return self.run(x, level, a, ["velocity"])[0]

    def append(self, z, level, a):
        out = dict(zip(self.m["graphs"]["step"]["outputs"], self.run(z, level, a, self.m["graphs"]["step"]["outputs"])))
        if "prev_latent" in self.cache:
            self.cache["prev_latent"][...] = z
        for kind in ("full", "pooled"):
            ring_k, age = self.cache[f"{kind}_k"], self.cache[f"{kind}_age"]
            S = ring_k.shape[3]
            if S == 0:
                continue
            s = self.next[kind]
            ring_k[:, :, :, s] = out[f"new_{kind}_k"]
            self.cache[f"{kind}_v"][:, :, :, s] = out[f"new_{kind}_v"]
            age += 1
            age[s] = 1
            np.minimum(age, self.m["memory"]["memory_frames"], out=age)
            self.cache[f"{kind}_valid"][:, s] = True
            self.next[kind] = (s + 1) % S

    def decode(self, z):
        return self.decoder_s.run(["frame"], {"latent": z})[0]


class TorchPage:
    """The same loop on the world's PyTorch modules (the network the manifest's sampler
    drives: the dynamics, or its distilled student): the reference."""

    def __init__(self, world, manifest):
        world = world.network(manifest["sampler"]["network"])
        self.dyn, self.ae = world.dynamics, world.autoencoder
        self.cache = self.dyn.new_cache(1)

    @torch.inference_mode()
    def step(self, x, level, a):
        return self.dyn.step(torch.from_numpy(x), float(level), torch.from_numpy(a), self.cache).velocity.numpy()

    @torch.inference_mode()
    def append(self, z, level, a):
        self.dyn.append(torch.from_numpy(np.ascontiguousarray(z)), float(level), torch.from_numpy(a), self.cache)

    @torch.inference_mode()
    def decode(self, z):
        return self.ae.decode(self.ae.denormalize_latents(torch.from_numpy(z))).numpy()


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world_path(tiny_world_run):
    return tiny_world_run[1] / "world"


@pytest.fixture(scope="module")
def world(world_path):
    return neuralworld.load(world_path)


@pytest.fixture(scope="module")
def site(world_path, tmp_path_factory):
    if not HAVE_ORT_WEB:
        pytest.skip("onnxruntime-web is not installed (npm ci; ./setup.sh does)")
    return export_web(world_path, tmp_path_factory.mktemp("web") / "site")


def turn_actions(manifest, n: int, turn: float) -> list[list[float]]:
    """n normalised actions: no-op, with the turn axis at ``turn`` (its own units)."""
    spec = ActionSpec.from_json_dict(manifest["spec"])
    return [list(map(float, spec.normalize(spec.make(turn=turn))))] * n


# ---------------------------------------------------------------------------
# the folder and its graphs
# ---------------------------------------------------------------------------
@needs_ort_web
def test_folder_and_manifest(site, world):
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert {"index.html", MANIFEST_FILE, START_FILE, ENCODER_FILE, "dynamics_step.onnx", "decoder.onnx",
            "static/app.js", "static/local.js", "static/world-worker.js", "static/style.css"} <= names  # fmt: skip
    assert {f"ort/{f}" for f in ORT_FILES} <= names
    assert not [n for n in names if "jsep" in n or "webgpu" in n or "webgl" in n], "only the WASM (CPU) build is copied"
    m = json.loads((site / MANIFEST_FILE).read_text())
    assert m["format"] == "neuralworld-web" and m["name"] == world.name and m["resolution"] == [32, 32]
    fast = world.start(None, sampler="fast").sampler  # what `neuralworld play` plays: the page plays the same
    assert (m["sampler"]["method"], m["sampler"]["steps"], m["sampler"]["shift"]) == (fast.method, fast.steps, fast.shift)
    assert m["sampler"]["context_level"] == fast.context_level > 0
    assert m["sampler"]["network"] == fast.network
    assert m["memory"]["memory_frames"] == world.dynamics.config.memory_frames
    assert m["memory"]["prev_frame"] == ("prev_latent" in m["graphs"]["step"]["inputs"])
    # the page normalises with scale * value + offset: the same numbers as ActionSpec.normalize
    spec = world.spec
    a = spec.make(forward=1, turn=-7.5)
    page = np.array(m["action"]["normalize"]["scale"]) * a + np.array(m["action"]["normalize"]["offset"])
    assert np.allclose(page, spec.normalize(a)) and np.allclose(m["action"]["noop"], spec.normalize(spec.noop()))
    # the page is the server's page, byte for byte
    static = Path(neuralworld.__file__).parent / "play" / "static"
    for name in ("app.js", "local.js", "world-worker.js"):
        assert (site / "static" / name).read_bytes() == (static / name).read_bytes()
    assert (site / "index.html").read_bytes() == (static / "index.html").read_bytes()


@needs_ort_web
def test_graphs_driven_as_the_page_drives_them_equal_pytorch(site, world):
    """Start latents, encoder, then 12 frames (the rings wrap: K-1 = 1 and M-1 = 7 slots in
    tiny) of the page's loop on ONNX Runtime against the same loop on PyTorch, same noise."""
    page = OnnxPage(site)
    ae = world.autoencoder
    with torch.inference_mode():
        ref_start = ae.normalize_latents(ae.encode(frames_to_tensor(world.start_frames))).numpy()
    assert np.allclose(page.start[0], ref_start, atol=1e-5), "start.bin holds the start frames' latents"
    assert np.allclose(page.start[1], world.spec.normalize(world.start_actions))

    image = np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32)).astype(np.float32) / 127.5 - 1
    got = page.encoder_s.run(["latent"], {"frame": image})[0]
    with torch.inference_mode():
        want = ae.normalize_latents(ae.encode(torch.from_numpy(image))).numpy()
    assert np.abs(got - want).max() < 1e-4

    actions = turn_actions(page.m, 6, -7.5) + turn_actions(page.m, 6, 10.0)
    ref = TorchPage(world, page.m)
    got_l, got_f = page_rollout(page.step, page.append, page.decode, page.m, page.start, actions, seed=3)
    ref_l, ref_f = page_rollout(ref.step, ref.append, ref.decode, page.m, page.start, actions, seed=3)
    for t, (a, b, fa, fb) in enumerate(zip(got_l, ref_l, got_f, ref_f)):
        assert np.abs(a - b).max() < 1e-3, f"latent {t}: {np.abs(a - b).max()}"
        assert np.abs(fa - fb).max() < 1e-3, f"frame {t}: {np.abs(fa - fb).max()}"
    # and the loop is the session's: the frames move (the world is not decoding one latent)
    assert np.abs(got_f[0] - got_f[-1]).mean() > 1e-4


@needs_ort_web
def test_int8_export_ships_one_smaller_step_graph_near_the_float_one(site, world_path, world, tmp_path):
    out = export_web(world_path, tmp_path / "int8", int8=True)
    m = json.loads((out / MANIFEST_FILE).read_text())
    assert m["graphs"]["step"]["int8"] and m["graphs"]["step"]["file"] == "dynamics_step.int8.onnx"
    assert not (out / "dynamics_step.onnx").exists(), "only the graph the page loads is shipped"
    assert (out / m["graphs"]["step"]["file"]).stat().st_size < 0.5 * (site / "dynamics_step.onnx").stat().st_size
    fp32, int8 = OnnxPage(site), OnnxPage(out)
    actions = turn_actions(m, 4, 5.0)
    _, want = page_rollout(fp32.step, fp32.append, fp32.decode, fp32.m, fp32.start, actions, seed=1)
    _, got = page_rollout(int8.step, int8.append, int8.decode, int8.m, int8.start, actions, seed=1)
    err = max(float(np.abs(a - b).mean()) for a, b in zip(got, want))
    print(f"\nint8 step graph: frames differ from float32 by {err:.4f} on average (of a [-1, 1] range)")
    assert err < 0.05, "an approximation, not another world"


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
def test_errors_say_what_to_do(world_path, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "no-ort"
    empty.mkdir()
    with pytest.raises(ExportError, match="onnxruntime-web is not installed .*npm ci.*npm install onnxruntime-web@1.30.0"):
        export_web(world_path, tmp_path / "a", onnxruntime_web=empty)
    package = json.loads((Path(__file__).parents[1] / "package.json").read_text())
    assert package["dependencies"]["onnxruntime-web"] == ORT_WEB_VERSION, "the message names the pinned version"
    monkeypatch.setenv(ORT_ENV, str(empty))
    with pytest.raises(ExportError, match=ORT_ENV):
        export_web(world_path, tmp_path / "a")
    monkeypatch.delenv(ORT_ENV)
    if not HAVE_ORT_WEB:
        return
    with pytest.raises(ExportError, match="no such world"):
        export_web(tmp_path / "missing", tmp_path / "a")
    with pytest.raises(ExportError, match="unknown sampler"):
        export_web(world_path, tmp_path / "a", sampler="warp")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("do not delete")
    with pytest.raises(ExportError, match="not empty and is not a previous web export.*--force"):
        export_web(world_path, busy)
    assert (busy / "thesis.tex").read_text() == "do not delete"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder is left behind"

    # a previous export is replaced without --force; anything else only with it
    out = export_web(world_path, tmp_path / "site")
    (out / "stale.txt").write_text("old")
    export_web(world_path, out, sampler="quality")
    assert not (out / "stale.txt").exists()
    assert json.loads((out / MANIFEST_FILE).read_text())["sampler"]["method"] == "heun"
    export_web(world_path, busy, force=True)
    assert (busy / MANIFEST_FILE).is_file() and not (busy / "thesis.tex").exists()

    # the command: one line per error, exit 2
    assert cli_main(["export", "--web", str(tmp_path / "missing"), str(tmp_path / "b")]) == 2
    assert cli_main(["export", "--web", str(world_path), str(tmp_path / "b"), "--onnxruntime-web", str(empty)]) == 2
    assert cli_main(["export", str(world_path), str(tmp_path / "b")]) == 2
    assert cli_main(["export", "--web", str(world_path), str(tmp_path / "c")]) == 0
    captured = capsys.readouterr()
    assert f"play it with neuralworld play {tmp_path / 'c'}" in captured.out  # the server that serves it right
    err = captured.err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("neuralworld export: error: ") for line in err), err
    assert "no such world" in err[0] and "npm ci" in err[1] and "--web" in err[2]


# ---------------------------------------------------------------------------
# the page, in Chromium, with the network cut
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(site):
    with StaticServer(site) as s:
        yield s


@contextlib.contextmanager
def _browser_page(url: str, tmp_path: Path):
    """Chromium on ``url`` with the network cut (only that server answers); checks on exit
    that the page and its workers logged no error and reached nothing else."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; .ci/run does): the page is not tested")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 900, "height": 760}, accept_downloads=True,
        )  # fmt: skip
        refused: list[str] = []
        allowed: list[str] = []

        def gate(route):  # the network is cut: only the static server answers
            if route.request.url.startswith(url):
                allowed.append(route.request.url)
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        ctx.route("**/*", gate)
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("worker", lambda w: w.on("console", lambda m: errors.append(m.text) if m.type == "error" else None))
            page.goto(url)
            page.wait_for_function("window.nw && nw.stats.framesShown >= 5", timeout=60_000)
            yield page
            assert not errors, errors
            assert page.evaluate("nw.errors") == []
            assert not refused, f"the page tried to reach beyond its server: {refused}"
            # the gate saw the workers' requests too (graphs, WebAssembly), so it gated everything
            assert any(u.endswith(".onnx") for u in allowed) and any(u.endswith(".wasm") for u in allowed), allowed
        finally:
            ctx.close()


@pytest.fixture
def page(served, tmp_path):
    with _browser_page(served.url, tmp_path) as page:
        yield page


def test_play_serves_an_export_folder(site):
    """``neuralworld play EXPORT_DIR``: the folder as static files, cross-origin isolated,
    no model loaded in the server; Ctrl+C (SIGINT) stops it cleanly."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = Path(sys.executable).parent / "neuralworld"
    proc = subprocess.Popen([str(cli), "play", str(site), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "web export" in line and f":{port}/" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as r:
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert r.read() == (site / "index.html").read_bytes()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


@needs_ort_web
def test_cross_origin_isolated_serving_plays_too(site, tmp_path):
    """What ``neuralworld play EXPORT_DIR`` serves: COOP/COEP headers, so the page may use
    WebAssembly threads (one per two cores, up to 4); every file still loads under them."""
    import urllib.request

    with StaticServer(site, isolated=True) as server:
        with urllib.request.urlopen(server.url + "world.json") as r:
            assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with _browser_page(server.url, tmp_path) as page:
            assert page.evaluate("self.crossOriginIsolated") is True
            cores = page.evaluate("navigator.hardwareConcurrency")
            threads = page.evaluate("nw.messages.find(m => m.type === 'hello').threads")
            assert threads == max(1, min(4, cores // 2))


def _canvas(page) -> np.ndarray:
    data = page.evaluate(
        "() => { const c = document.getElementById('screen'); return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"
    )
    return np.array(data, np.uint8).reshape(32, 32, 4)


@needs_ort_web
def test_page_plays_with_no_server_and_no_network(page, world, site, tmp_path):
    assert "in this browser" in page.inner_text("#status")
    assert page.inner_text("#hud-world") == world.name
    a = _canvas(page)
    step0 = int(page.inner_text("#hud-step"))
    time.sleep(1.5)  # a second of frames for the page's frame rate
    fps = float(page.inner_text("#hud-fps"))
    assert fps > 0, "the HUD shows no frame rate"
    assert page.inner_text("#hud-latency").isdigit(), "the HUD shows no action-to-frame latency"
    assert int(page.inner_text("#hud-step")) > step0 + 5, "the step counter rises"
    b = _canvas(page)
    assert (a[..., 3] == 255).all() and np.abs(a.astype(int) - b).mean() > 0, "frames are drawn and change"
    page.screenshot(path=str(tmp_path / "web-export.png"))
    print(f"\nexported page: {fps:.1f} fps (paced to the world's {world.spec.fps:g}), screenshot {tmp_path / 'web-export.png'}")

    # a held key reaches the world in the worker (ArrowLeft: turn to half its range, left)
    page.keyboard.down("ArrowLeft")
    page.wait_for_function("nw.lastHeader && nw.lastHeader.action.turn === -7.5", timeout=10_000)
    n = page.evaluate("nw.stats.framesShown")
    page.wait_for_function(f"nw.stats.framesShown > {n + 3}", timeout=10_000)
    page.keyboard.up("ArrowLeft")
    page.wait_for_function("nw.lastHeader.action.turn === 0", timeout=10_000)

    # Turning changes what the world makes, against no-op from the same seed and start.
    # This 20-step world barely reads its actions (its latents move ~1e-6 with a full turn,
    # below a pixel's rounding), so only the plumbing can be asserted: the action gets into
    # the graphs and changes the latents. Which way the picture moves is asserted only on a
    # trained world, which we do not have yet.
    m = json.loads((site / MANIFEST_FILE).read_text())
    rollout = "(a) => nw.transport.rollout(a, 7).then(r => [r.frames.map(f => Array.from(f)), r.latents.map(z => Array.from(z))])"

    def run(turn):
        frames, latents = page.evaluate(rollout, turn_actions(m, 6, turn))
        return np.array(frames, np.uint8).reshape(6, 32, 32, 4), np.array(latents, np.float32)

    (noop, noop_z), (again, again_z), (left, left_z) = run(0.0), run(0.0), run(-15.0)
    assert np.array_equal(noop, again) and np.array_equal(noop_z, again_z), "same seed, same actions: same frames"
    assert np.abs(noop_z - left_z).max() > 0, "a turn changes what the world makes against no-op"

    # the browser's latents and frames are PyTorch's (the noise generator is ported exactly)
    ref = TorchPage(world, m)
    latents, frames = page_rollout(ref.step, ref.append, ref.decode, m, OnnxPage(site).start, turn_actions(m, 6, -15.0), seed=7)
    z_diff = np.abs(left_z - np.stack(latents).reshape(left_z.shape)).max()
    diff = np.abs(left[..., :3].astype(int) - np.stack([to_pixels(f) for f in frames]))
    print(f"browser vs PyTorch over 6 frames: latents max {z_diff:.2e}, pixels max {diff.max()} mean {diff.mean():.4f} (uint8)")
    assert z_diff < 1e-3 and diff.max() <= 2 and diff.mean() < 0.05
    page.evaluate("nw.transport.resume()")
    n = page.evaluate("nw.stats.framesShown")
    page.wait_for_function(f"nw.stats.framesShown > {n + 2}", timeout=10_000)


@needs_ort_web
def test_reset_start_from_image_and_record(page, tmp_path):
    page.wait_for_function("nw.stats.step >= 20", timeout=30_000)
    page.click("#reset")
    page.wait_for_function("nw.messages.some(m => m.type === 'reset' && m.step === 0)", timeout=10_000)
    page.wait_for_function("nw.lastHeader.step < 15", timeout=10_000)

    img = np.zeros((48, 80, 3), np.uint8)
    img[:, :40] = (220, 40, 40)
    img[:, 40:] = (40, 200, 60)
    cv2.imwrite(str(tmp_path / "start.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    page.set_input_files("#start-image", str(tmp_path / "start.png"))
    page.wait_for_function("nw.messages.some(m => m.type === 'started')", timeout=20_000)
    started = page.evaluate("nw.messages.find(m => m.type === 'started')")
    assert started["image"] == [48, 80] and started["step"] == 0  # the browser ran the encoder graph
    assert "started from a 80×48 image" in page.inner_text("#status")

    page.click("#record")
    page.wait_for_function("document.getElementById('record').textContent === 'Stop'", timeout=10_000)
    n = page.evaluate("nw.stats.framesShown")
    page.wait_for_function(f"nw.stats.framesShown >= {n + 15}", timeout=20_000)
    assert page.is_visible("#hud-rec") and int(page.inner_text("#hud-rec-frames")) >= 15
    page.click("#record")
    page.wait_for_selector("#download:not([hidden])", timeout=20_000)
    assert page.get_attribute("#download", "href").startswith("blob:")
    with page.expect_download() as dl:
        page.click("#download")
    video = tmp_path / dl.value.suggested_filename
    dl.value.save_as(video)
    assert video.suffix in (".webm", ".mp4") and video.stat().st_size > 1000
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    assert ok and first.shape[:2] == (256, 256), "frames recorded scaled by whole pixels to >= 256"
