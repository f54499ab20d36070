"""The web player's server: one world loaded once, one ``WorldSession`` per WebSocket.

    GET  /                     the page (static/index.html, app.js, style.css)
    GET  /api/world            {"name", "resolution": [H, W], "fps", "spec": ActionSpec JSON,
                                "hints": {control: key hint}, "sampler", "pace", "max_message_bytes"}
    WS   /ws                   play (below)
    GET  /recordings/<id>.mp4  a recording made with {"type": "record", "on": false}

The WebSocket protocol
    client -> server, JSON text, at most ``max_message_bytes`` (2 MB) each:
      {"type": "action", "buttons": {"forward": 1}, "axes": {"turn": -7.5}, "seq": n, "t": client_ms}
          controls not named are at rest; values are checked against the ActionSpec.
      {"type": "reset"}                          back to the start (the uploaded image, else grey)
      {"type": "reset", "seed": n}               the same, with the noise reseeded (0 <= n < 2**63):
                                                 the same seed and actions make the same frames
      {"type": "start_image", "data": "<base64 PNG/JPEG, data: URL allowed>"}
      {"type": "record", "on": true | false}     off writes an mp4 and answers with its URL
    server -> client:
      binary, one per generated frame: uint32 little-endian n, n bytes of JSON header
          {"type": "frame", "step", "seq" and "t" of the action used (t echoed, so the page
           measures action -> frame latency on its own clock), "server_ms" (action received
           -> frame encoded), "gen_ms", "server_fps", "dropped", "action": {name: value},
           "recording": frames or null, "width", "height"}, then the JPEG.
      text JSON: {"type": "hello", ...} once, {"type": "error", "message"},
          {"type": "reset" | "started", "step"}, {"type": "recording", "on", ...}.

Why it is built this way
    * The generation loop of a connection uses the LATEST action (older ones are
      overwritten, never queued), so input never lags behind a slow world.
    * Frames leave through a slot of one: a frame not yet sent when the next is ready
      is dropped (counted in "dropped"), so a slow socket sees fresh frames, not a backlog.
    * ``WorldSession.step`` and JPEG encoding run in a thread pool (torch and OpenCV
      release the GIL), so the event loop stays free and one player cannot stall others.
    * Every bad message gets an error reply; nothing a client sends ends the server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import functools
import json
import logging
import math
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
import webbrowser
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from neuralworld.actions import ActionError, ActionSpec
from neuralworld.backends import make_backend

log = logging.getLogger("neuralworld.play")

STATIC_DIR = Path(__file__).with_name("static")
SHIPPED_WORLDS = Path(__file__).resolve().parents[3] / "worlds"
"""Where shipped worlds live in a checkout (``worlds/<name>``); ``play NAME`` looks there."""
DEFAULT_WORLD: str | None = "freedoom-map01"
"""The world ``neuralworld play`` opens with no argument (worlds/freedoom-map01, see README)."""

PACES = ("world", "max")


class PlayError(Exception):
    """A world or an address the player cannot use; the message says what to do."""


class MessageError(ValueError):
    """A client message the server will not act on; answered with {"type": "error"}."""


@dataclass
class PlayConfig:
    """How the server plays a world."""

    sampler: str = "fast"
    """sampler preset of every session ("fast" or "quality")"""
    backend: str = "auto"
    """execution path of every session (backends.PATHS); "auto": ONNX Runtime when it is
    installed (the fastest exact path measured on a 2-core CPU), else eager PyTorch"""
    pace: str = "world"
    """"world": one frame per 1/fps of the world; "max": as fast as the machine makes them"""
    max_players: int = 8
    """WebSocket sessions at once; one more is refused with a message"""
    max_message_bytes: int = 2 * 1024 * 1024
    """largest client message acted on (a start image included); larger ones get an error"""
    jpeg_quality: int = 90
    """quality of the streamed frames (0-100)"""
    max_recording_frames: int = 9000
    """a recording stops and is written after this many frames (bounds memory)"""
    max_recordings: int = 32
    """mp4 files kept for download; the oldest goes first"""

    def validate(self) -> "PlayConfig":
        if self.pace not in PACES:
            raise PlayError(f"pace must be one of {PACES}, got {self.pace!r}")
        if self.max_players < 1:
            raise PlayError(f"max_players must be >= 1, got {self.max_players}")
        if not 0 <= self.jpeg_quality <= 100:
            raise PlayError(f"jpeg_quality must be 0..100, got {self.jpeg_quality}")
        return self


# ---------------------------------------------------------------------------
# finding the world
# ---------------------------------------------------------------------------
def resolve_backend(name: str) -> str:
    from neuralworld.backends import PATHS

    if name == "auto":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "eager"
        return "onnx"
    if name not in PATHS:
        raise PlayError(f"backend must be auto or one of {list(PATHS)}, got {name!r}")
    return name


def resolve_world(world: str | None) -> Path:
    """A bundle folder, a run folder (RUN/world), or the name of a shipped world -> bundle path."""
    if world is None:
        if DEFAULT_WORLD is None:
            raise PlayError("no world given: neuralworld play WORLD (a world bundle, or a run folder from neuralworld train)")
        world = DEFAULT_WORLD
    p = Path(world)
    if not p.exists() and "/" not in str(world) and (SHIPPED_WORLDS / str(world)).exists():
        p = SHIPPED_WORLDS / str(world)
    if (p / "config.json").is_file():
        return p
    if (p / "world" / "config.json").is_file():
        return p / "world"
    if p.exists():
        raise PlayError(f"{p} is neither a world bundle (config.json) nor a run folder with a finished world (world/config.json)")
    raise PlayError(f"{world}: no such world")


# ---------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------
def parse_action(spec: ActionSpec, msg: dict[str, Any]) -> np.ndarray:
    """{"buttons": {...}, "axes": {...}} -> a validated action vector; MessageError says why not."""
    buttons, axes = msg.get("buttons", {}), msg.get("axes", {})
    if not isinstance(buttons, dict) or not isinstance(axes, dict):
        raise MessageError('an action has "buttons" and "axes" objects, e.g. {"buttons": {"forward": 1}, "axes": {"turn": 0}}')
    axis_names = [a.name for a in spec.axes]
    values: dict[str, float] = {}
    for group, given, known in (("button", buttons, spec.buttons), ("axis", axes, axis_names)):
        for name, v in given.items():
            if name not in known:
                raise MessageError(f"unknown {group} {name!r}; this world's {group}s are {list(known)}")
            if isinstance(v, bool) and group == "button":
                v = float(v)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise MessageError(f"{group} {name!r} must be a number, got {v!r}")
            values[name] = float(v)
    try:
        return spec.make(values)
    except ActionError as e:
        raise MessageError(str(e)) from None


def parse_seed(seed: Any) -> int | None:
    """A reset's optional "seed": None (the noise stream goes on) or an int in [0, 2**63)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise MessageError(f'reset "seed" must be an integer from 0 to 2**63 - 1, got {seed!r}')
    return seed


def decode_image(data: Any) -> np.ndarray:
    """Base64 PNG/JPEG (or a data: URL) -> uint8 RGB (h, w, 3)."""
    if not isinstance(data, str) or not data:
        raise MessageError('start_image needs "data": a base64 PNG or JPEG')
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError("start_image data is not valid base64") from None
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
    if img is None:
        raise MessageError("start_image data does not decode as an image (send a PNG or JPEG)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def pack_frame(header: dict[str, Any], jpeg: bytes) -> bytes:
    """The binary frame message: uint32 LE header length, JSON header, JPEG."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + jpeg


def unpack_frame(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Inverse of ``pack_frame`` (for clients and tests)."""
    (n,) = struct.unpack_from("<I", data)
    return json.loads(data[4 : 4 + n]), data[4 + n :]


# ---------------------------------------------------------------------------
# one connection
# ---------------------------------------------------------------------------
class Player:
    """One WebSocket: a session, the latest action, a one-frame outbox and a generation loop."""

    def __init__(self, hub: "Hub", websocket: Any, player_id: int):
        self.hub, self.ws, self.id = hub, websocket, player_id
        spec = hub.world.spec
        self.spec = spec
        self.session: Any = None
        self.action = spec.noop()  # the latest action: written by the receiver, read by the loop
        self.action_seq: int | None = None
        self.action_t: float | None = None
        self.action_received = time.monotonic()
        self.actions_received = 0
        self.start_image: np.ndarray | None = None
        self.requests: deque[tuple[str, Any]] = deque()  # reset / start / record, applied between steps
        self.recording: list[np.ndarray] | None = None
        self.control: deque[dict[str, Any]] = deque(maxlen=64)  # JSON replies, sent before frames
        self.frame_slot: bytes | None = None  # the outbox: at most one frame waits
        self.wake = asyncio.Event()
        self.frames_made = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self._made_at: deque[float] = deque(maxlen=64)
        self.closed = False

    # -- outgoing -----------------------------------------------------------
    def reply(self, msg: dict[str, Any]) -> None:
        self.control.append(msg)
        self.wake.set()

    def error(self, message: str) -> None:
        self.reply({"type": "error", "message": message})

    def offer_frame(self, data: bytes) -> None:
        if self.frame_slot is not None:
            self.frames_dropped += 1  # the socket has not taken the last one: it is stale now
        self.frame_slot = data
        self.wake.set()

    async def run_sender(self) -> None:
        while not self.closed:
            await self.wake.wait()
            self.wake.clear()
            while self.control:
                await self.ws.send_text(json.dumps(self.control.popleft()))
            if self.frame_slot is not None:
                data, self.frame_slot = self.frame_slot, None
                await self.ws.send_bytes(data)
                self.frames_sent += 1

    # -- incoming -----------------------------------------------------------
    def handle_text(self, text: str) -> None:
        limit = self.hub.config.max_message_bytes
        if len(text) > limit:
            raise MessageError(f"message of {len(text)} bytes is over the limit of {limit} bytes")
        try:
            msg = json.loads(text)
        except ValueError as e:
            raise MessageError(f"malformed JSON: {e}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise MessageError('a message is a JSON object with a "type": action, reset, start_image or record')
        kind = msg["type"]
        if kind == "action":
            action = parse_action(self.spec, msg)
            seq, t = msg.get("seq"), msg.get("t")
            self.action = action
            self.action_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            self.action_t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) else None
            self.action_received = time.monotonic()
            self.actions_received += 1
        elif kind == "reset":
            self._request("reset", parse_seed(msg.get("seed")))
        elif kind == "start_image":
            self._request("start", decode_image(msg.get("data")))
        elif kind == "record":
            on = msg.get("on")
            if not isinstance(on, bool):
                raise MessageError('record needs "on": true or false')
            self._request("record", on)
        else:
            raise MessageError(f"unknown message type {kind!r}; expected action, reset, start_image or record")

    def _request(self, kind: str, payload: Any) -> None:
        if len(self.requests) >= 8:
            raise MessageError(f"too many requests waiting; {kind} ignored")
        self.requests.append((kind, payload))

    # -- generation (runs in the hub's thread pool) ----------------------------
    def _open(self) -> None:
        self.session = self.hub.world.start(None, sampler=self.hub.config.sampler, seed=self.id, backend=self.hub.backend)

    def _apply(self, kind: str, payload: Any) -> dict[str, Any]:
        s = self.session
        if kind == "reset":
            s.reset(self.start_image, seed=payload)
            return {"type": "reset", "step": s.step_index}
        if kind == "start":
            self.start_image = payload
            s.reset(payload)
            h, w = payload.shape[:2]
            return {"type": "started", "step": s.step_index, "image": [h, w]}
        if kind == "record":
            if payload:
                self.recording = [s.frame.copy()]
                return {"type": "recording", "on": True}
            return self._finish_recording()
        raise AssertionError(kind)

    def _finish_recording(self, note: str = "") -> dict[str, Any]:
        frames, self.recording = self.recording, None
        if not frames:
            return {"type": "recording", "on": False, "url": None, "frames": 0, "note": "nothing was recording"}
        rec_id = self.hub.write_recording(frames)
        return {"type": "recording", "on": False, "url": f"/recordings/{rec_id}.mp4", "frames": len(frames), "note": note}

    def _generate(self, action: np.ndarray) -> tuple[np.ndarray, bytes, float]:
        t0 = time.perf_counter()
        frame = self.session.step(action)  # (H, W, 3) uint8
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.hub.config.jpeg_quality])
        assert ok, "JPEG encoding failed"
        if self.recording is not None:
            self.recording.append(frame.copy())
        return frame, jpeg.tobytes(), (time.perf_counter() - t0) * 1000.0

    async def run_generation(self) -> None:
        hub = self.hub
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(hub.pool, self._open)
        H, W = self.session.resolution
        self.reply({"type": "hello", "player": self.id, "world": hub.world.name, "resolution": [H, W], "fps": self.spec.fps})
        interval = 1.0 / self.spec.fps if hub.config.pace == "world" else 0.0
        next_at = loop.time()
        while not self.closed:
            while self.requests:
                kind, payload = self.requests.popleft()
                self.reply(await loop.run_in_executor(hub.pool, self._apply, kind, payload))
            action, seq, t, received = self.action, self.action_seq, self.action_t, self.action_received
            _, jpeg, gen_ms = await loop.run_in_executor(hub.pool, self._generate, action)
            now = time.monotonic()
            self.frames_made += 1
            self._made_at.append(now)
            span = self._made_at[-1] - self._made_at[0]
            header = {
                "type": "frame", "step": self.session.step_index, "seq": seq, "t": t,
                "server_ms": round((now - received) * 1000.0, 2), "gen_ms": round(gen_ms, 2),
                "server_fps": round((len(self._made_at) - 1) / span, 2) if span > 0 else None,
                "dropped": self.frames_dropped, "action": self.spec.to_dict(action),
                "recording": len(self.recording) if self.recording is not None else None,
                "width": W, "height": H,
            }  # fmt: skip
            self.offer_frame(pack_frame(header, jpeg))
            if self.recording is not None and len(self.recording) >= hub.config.max_recording_frames:
                note = f"stopped at the limit of {hub.config.max_recording_frames} frames"
                self.reply(await loop.run_in_executor(hub.pool, self._finish_recording, note))
            if interval:
                next_at += interval
                delay = next_at - loop.time()
                if delay < 0:  # behind: do not bank time and then burst
                    next_at, delay = loop.time(), 0.0
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let the receiver and sender run

    def stats(self) -> dict[str, Any]:
        return {
            "player": self.id, "step": self.session.step_index if self.session is not None else None,
            "frames_made": self.frames_made, "frames_sent": self.frames_sent, "frames_dropped": self.frames_dropped,
            "actions_received": self.actions_received, "action": self.spec.to_dict(self.action), "seq": self.action_seq,
        }  # fmt: skip


# ---------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------
class Hub:
    """What every connection shares: the world, the thread pool, the recordings folder."""

    def __init__(self, world: Any, config: PlayConfig):
        self.world = world
        self.config = config
        # built once and shared: a backend holds no per-session state (each session owns its cache)
        from neuralworld.session import resolve_sampler

        self.backend_name = resolve_backend(config.backend)
        network = resolve_sampler(config.sampler, world).network  # the distilled student for "fast"
        self.backend = make_backend(self.backend_name, world.network(network), 1)
        self.pool = ThreadPoolExecutor(max_workers=config.max_players + 1, thread_name_prefix="neuralworld-play")
        self.players: dict[int, Player] = {}
        self._next_id = 0
        self.recordings_dir = Path(tempfile.mkdtemp(prefix="neuralworld-play-"))
        self._recordings: deque[Path] = deque()
        self._lock = threading.Lock()

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def write_recording(self, frames: list[np.ndarray]) -> str:
        """Frames -> an mp4 in the recordings folder (scaled up by whole pixels to >= 256 on
        the short side, so it is watchable); returns its id."""
        from neuralworld.data.view import write_video

        H, W = frames[0].shape[:2]
        k = max(1, math.ceil(256 / min(H, W)))
        scaled = (cv2.resize(f, (W * k, H * k), interpolation=cv2.INTER_NEAREST) if k > 1 else f for f in frames)
        rec_id = uuid.uuid4().hex
        path = self.recordings_dir / f"{rec_id}.mp4"
        write_video(scaled, path, fps=self.world.spec.fps)
        with self._lock:
            self._recordings.append(path)
            while len(self._recordings) > self.config.max_recordings:
                self._recordings.popleft().unlink(missing_ok=True)
        return rec_id

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.recordings_dir, ignore_errors=True)


def create_app(world: Any, config: PlayConfig | None = None):
    """The ASGI app for a loaded ``World`` (or the path of one); ``app.state.hub`` holds its state."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect

    if isinstance(world, (str, Path)):
        from neuralworld.bundle import load_bundle

        world = load_bundle(resolve_world(str(world)))
    config = (config or PlayConfig()).validate()
    from neuralworld.session import resolve_sampler

    resolve_sampler(config.sampler)  # an unknown preset fails here, not in the first connection
    hub = Hub(world, config)
    spec: ActionSpec = world.spec
    H, W = world.resolution
    info = {
        "name": world.name, "resolution": [H, W], "fps": spec.fps, "spec": spec.to_json_dict(),
        "hints": dict(spec.descriptions), "sampler": config.sampler, "pace": config.pace,
        "max_message_bytes": config.max_message_bytes, "max_players": config.max_players,
    }  # fmt: skip

    async def page(request):
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def world_info(request):
        return JSONResponse(info)

    async def recording(request):
        rec_id = request.path_params["rec_id"]
        path = hub.recordings_dir / f"{rec_id}.mp4"
        if len(rec_id) != 32 or not all(c in "0123456789abcdef" for c in rec_id) or not path.is_file():
            return Response("no such recording", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type="video/mp4", filename=f"neuralworld-{rec_id[:8]}.mp4")

    async def play(ws: WebSocket):
        await ws.accept()
        if len(hub.players) >= config.max_players:
            await ws.send_text(json.dumps({"type": "error", "message": f"the server is full ({config.max_players} players); try again later"}))
            await ws.close(code=1013)  # try again later
            return
        player = Player(hub, ws, hub.new_id())
        hub.players[player.id] = player
        sender = asyncio.create_task(player.run_sender())
        generator = asyncio.create_task(player.run_generation())
        receiver = asyncio.create_task(_receive(ws, player))
        try:
            done, _ = await asyncio.wait({sender, generator, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, (WebSocketDisconnect, RuntimeError, ConnectionError)):
                    log.error("player %d: %r", player.id, exc, exc_info=exc)
                    try:
                        await ws.send_text(json.dumps({"type": "error", "message": f"the session failed: {exc}"}))
                    except Exception:
                        pass
        finally:
            player.closed = True
            for task in (sender, generator, receiver):
                task.cancel()
            await asyncio.gather(sender, generator, receiver, return_exceptions=True)
            hub.players.pop(player.id, None)
            try:
                await ws.close()
            except Exception:
                pass

    async def _receive(ws: WebSocket, player: Player) -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            try:
                if text is None:
                    raise MessageError("binary messages are not understood here: send JSON text")
                player.handle_text(text)
            except MessageError as e:
                player.error(str(e))

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            hub.close()

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/world", world_info),
            Route("/recordings/{rec_id}.mp4", recording),
            WebSocketRoute("/ws", play),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app


# ---------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or a PlayError that says the port is taken."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise PlayError(f"cannot listen on {host!r}: {e.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: reuse TIME_WAIT, never a live listener
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PlayError(f"port {port} on {host} is taken (another server is listening there): choose another with --port") from None
        raise PlayError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def serve(
    world: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: PlayConfig | None = None,
    open_browser: bool = False,
    announce: Callable[[str], None] | None = functools.partial(print, flush=True),
    log_level: str = "warning",
) -> None:
    """Load the world, listen on host:port and serve the player until interrupted.

    ``world`` may also be a folder from ``export --web``: it is then served as static
    files, cross-origin isolated so the page's WebAssembly may use threads, and the
    browser runs the world."""
    import uvicorn

    from neuralworld.bundle import BundleError, load_bundle
    from neuralworld.play.export import StaticServer, is_previous_export

    config = (config or PlayConfig()).validate()
    if world is not None and is_previous_export(Path(world)):
        bind_socket(host, port).close()  # the same clear message as below when the port is taken
        with StaticServer(world, host=host, port=port, isolated=True) as static:
            if announce is not None:
                announce(f"neuralworld play: the web export {world} at {static.url}  (the browser runs the world; Ctrl+C stops)")
            if open_browser:
                threading.Timer(0.5, webbrowser.open, (static.url,)).start()
            try:
                static.thread.join()
            except KeyboardInterrupt:
                pass
        return
    try:
        loaded = load_bundle(resolve_world(world))
    except BundleError as e:
        raise PlayError(str(e)) from None
    sock = bind_socket(host, port)
    port = sock.getsockname()[1]
    app = create_app(loaded, config)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level=log_level, lifespan="on",
        ws_max_size=max(16 * 1024 * 1024, 4 * config.max_message_bytes),  # beyond this the socket closes; below it, an error reply
    ))  # fmt: skip
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    if announce is not None:
        H, W = loaded.resolution
        announce(f"neuralworld play: {loaded.name} ({H}x{W} @ {loaded.spec.fps:g} fps, {config.sampler}, "
                 f"{resolve_backend(config.backend)}) at {url}  (Ctrl+C stops)")
    if open_browser:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server.run(sockets=[sock])
