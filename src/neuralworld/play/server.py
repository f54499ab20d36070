"""The web player's server: one world loaded once, one ``WorldSession`` per WebSocket.

    GET  /                     the page (static/index.html, app.js, style.css)
    GET  /api/world            {"name", "resolution": [H, W], "fps", "spec": ActionSpec JSON,
                                "hints": {control: key hint}, "sampler", "pace", "max_message_bytes",
                                "max_players", "max_image_pixels"}
    GET  /world.json           the same with "format": "neuralworld-play": what the page asks for
                               first (an export's world.json says "neuralworld-web" and plays locally)
    WS   /ws                   play (below)
    GET  /recordings/<id>.mp4  a recording made with {"type": "record", "on": false}

The WebSocket protocol
    client -> server, JSON text, at most ``max_message_bytes`` (2 MB) each:
      {"type": "action", "buttons": {"forward": 1}, "axes": {"turn": -7.5}, "seq": n, "t": client_ms}
          controls not named are at rest; values are checked against the ActionSpec;
          "seq" (an integer within 2**53) and "t" (a number) are optional and echoed.
      {"type": "reset"}                          back to the start (the uploaded image, else grey)
      {"type": "reset", "seed": n}               the same, with the noise reseeded (0 <= n < 2**63):
                                                 the same seed and actions make the same frames
      {"type": "start_image", "data": "<base64 PNG/JPEG, data: URL allowed>"}
                                                 at most ``max_image_pixels`` (4096x4096), read
                                                 from the file's header before decoding
      {"type": "record", "on": true | false}     off writes an mp4 and answers with its URL
    server -> client:
      binary, one per generated frame: uint32 little-endian n, n bytes of JSON header
          {"type": "frame", "step", "seq" and "t" of the action used (t echoed, so the page
           measures action -> frame latency on its own clock), "server_ms" (action received
           -> frame encoded), "gen_ms", "server_fps", "dropped", "action": {name: value},
           "recording": frames or null, "width", "height"}, then the JPEG.
      text JSON: {"type": "hello", ...} once, {"type": "error", "message"},
          {"type": "reset" | "started", "step"}, {"type": "recording", "on", ...}.
    Who may connect: a WebSocket whose Origin is the page's own (127.0.0.1, localhost, an
    IP address: the host:port it was sent to) or one named with ``--allow-origin``; any
    other origin gets an error message and a close with code 1008 and the reason. A client
    that sends no Origin (a script, not a browser) plays (``protocol.origin_allowed``).

Why it is built this way
    * The generation loop of a connection uses the LATEST action (older ones are
      overwritten, never queued), so input never lags behind a slow world.
    * Frames leave through a slot of one: a frame not yet sent when the next is ready
      is dropped (counted in "dropped"), so a slow socket sees fresh frames, not a backlog.
    * ``WorldSession.step`` and JPEG encoding run in a thread pool (torch and OpenCV
      release the GIL), so the event loop stays free and one player cannot stall others.
    * Start images are checked by their header, then decoded and fitted to the world's
      size in a pool of ``max_image_decodes`` threads shared by all players, so uploads
      together hold at most that many full-size images; a player keeps only the fitted frame.
    * Every bad message gets an error reply (``protocol.py`` checks them); nothing a
      client sends ends the server or its own connection.
    * Every HTTP response says ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import math
import shutil
import socket
import tempfile
import threading
import uuid
import webbrowser
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from neuralworld.actions import ActionSpec
from neuralworld.backends import make_backend
from neuralworld.play.player import Player
from neuralworld.play.protocol import (
    MAX_IMAGE_PIXELS,
    MessageError,
    decode_image,
    fit_start_image,
    normalize_origin,
    origin_allowed,
    pack_frame,
    parse_action,
    parse_seed,
    unpack_frame,
)
from neuralworld.play.worlds import DEFAULT_WORLD, SHIPPED_WORLDS, PlayError, resolve_backend, resolve_world

__all__ = [  # the protocol's and the worlds' names stay importable from here
    "DEFAULT_WORLD", "SHIPPED_WORLDS", "MessageError", "PlayConfig", "PlayError", "Player", "create_app",
    "decode_image", "pack_frame", "parse_action", "parse_seed", "resolve_backend", "resolve_world", "serve",
    "unpack_frame",
]  # fmt: skip

log = logging.getLogger("neuralworld.play")

STATIC_DIR = Path(__file__).with_name("static")

PACES = ("world", "max")
PLAY_FORMAT = "neuralworld-play"
"""``/world.json``'s "format" here; a web export's says ``export.FORMAT`` ("neuralworld-web")."""


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
    max_image_pixels: int = MAX_IMAGE_PIXELS
    """largest start image (width x height, read from its header) decoded; larger ones get an error"""
    max_image_decodes: int = 2
    """start images decoded at once, all players together (the rest wait their turn): with
    ``max_image_pixels`` this bounds the memory uploads take"""
    allowed_origins: tuple[str, ...] = ()
    """origins (http://host:port) whose pages may play besides the player's own page"""
    agent: str | None = None
    """an agent folder (neuralworld agent train) the page's autopilot plays; None: no autopilot"""

    def validate(self) -> "PlayConfig":
        if self.pace not in PACES:
            raise PlayError(f"pace must be one of {PACES}, got {self.pace!r}")
        if self.max_players < 1:
            raise PlayError(f"max_players must be >= 1, got {self.max_players}")
        if not 0 <= self.jpeg_quality <= 100:
            raise PlayError(f"jpeg_quality must be 0..100, got {self.jpeg_quality}")
        if self.max_image_pixels < 1 or self.max_image_decodes < 1:
            raise PlayError("max_image_pixels and max_image_decodes must be >= 1")
        try:
            self.allowed_origins = tuple(normalize_origin(o) for o in self.allowed_origins)
        except ValueError as e:
            raise PlayError(f"--allow-origin: {e}") from None
        return self


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

        network = resolve_sampler(config.sampler, world).network  # the distilled student for "fast"
        self.backend_name = resolve_backend(config.backend, world.network(network))
        self.backend = make_backend(self.backend_name, world.network(network), 1)
        self.pool = ThreadPoolExecutor(max_workers=config.max_players + 1, thread_name_prefix="neuralworld-play")
        self.decode_pool = ThreadPoolExecutor(max_workers=config.max_image_decodes, thread_name_prefix="neuralworld-image")
        self.players: dict[int, Player] = {}
        self._next_id = 0
        self.agent = None  # the autopilot: neuralworld.agents.Agent, refused unless it acts in the world's ActionSpec
        if config.agent is not None:
            from neuralworld.agents import AgentError, load_agent

            try:
                self.agent = load_agent(config.agent, world.spec, env=world.name)
            except AgentError as e:
                raise PlayError(f"--agent: {e}") from None
        self.recordings_dir = Path(tempfile.mkdtemp(prefix="neuralworld-play-"))
        self._recordings: deque[Path] = deque()
        self._lock = threading.Lock()

    async def fit_image(self, raw: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """A checked PNG/JPEG -> (the frame fitted to the world, its uploaded (h, w)), decoded
        in the decode pool: off the event loop, ``max_image_decodes`` at a time."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decode_pool, fit_start_image, raw, tuple(self.world.resolution))

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
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.recordings_dir, ignore_errors=True)


def create_app(world: Any, config: PlayConfig | None = None):
    """The ASGI app for a loaded ``World`` (or the path of one); ``app.state.hub`` holds its state."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
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
        "max_image_pixels": config.max_image_pixels, "agent": config.agent is not None,
    }  # fmt: skip

    async def page(request):
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def world_info(request):
        return JSONResponse(info)

    async def world_manifest(request):  # the page asks for world.json first: "play me over /ws"
        return JSONResponse({"format": PLAY_FORMAT, **info}, headers={"Cache-Control": "no-cache"})

    async def recording(request):
        rec_id = request.path_params["rec_id"]
        path = hub.recordings_dir / f"{rec_id}.mp4"
        if len(rec_id) != 32 or not all(c in "0123456789abcdef" for c in rec_id) or not path.is_file():
            return Response("no such recording", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type="video/mp4", filename=f"neuralworld-{rec_id[:8]}.mp4")

    async def play(ws: WebSocket):
        origin = ws.headers.get("origin")
        if not origin_allowed(origin, ws.headers.get("host"), config.allowed_origins):
            await _refuse_origin(ws, origin)
            return
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
                await player.handle_text(text)
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
            Route("/world.json", world_manifest),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(NoSniff)],
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app


async def _refuse_origin(ws: Any, origin: str) -> None:
    """An error message, then a close with code 1008 (policy violation) and the reason."""
    shown = origin if len(origin) <= 60 else origin[:59] + "…"
    reason = f"origin {shown} may not play here; allow it with neuralworld play --allow-origin"
    log.info("refused a WebSocket from origin %r", origin)
    await ws.accept()
    await ws.send_text(json.dumps({"type": "error", "message": reason}))
    await ws.close(code=1008, reason=reason.encode()[:123].decode(errors="ignore"))  # a close reason: 123 bytes at most


class NoSniff:
    """ASGI middleware: every HTTP response says ``X-Content-Type-Options: nosniff``."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_nosniff(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_nosniff)


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
    from neuralworld.play.export import is_previous_export
    from neuralworld.play.static_server import StaticServer

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
                 f"{resolve_backend(config.backend, loaded)}) at {url}  (Ctrl+C stops)")
    if open_browser:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server.run(sockets=[sock])
