"""The player's servers against careless and hostile clients, on 127.0.0.1 (issue 18).

Both servers run as the real command (``neuralworld play``) in a subprocess, so the play
server's memory is its own resident set (/proc/<pid>/status) and nothing in this
process muddies it. The world is the tiny preset with random weights: nothing here
needs a trained world, only frames that keep coming. Figures print as JSON lines.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

from neuralworld.actions import ActionSpec, Axis
from neuralworld.cli import build_parser
from neuralworld.model.config import ConfigError, WorldConfig, preset as config_preset
from neuralworld.record.doom import doom_action_spec
from neuralworld.play.protocol import (
    MessageError,
    decode_image,
    normalize_origin,
    origin_allowed,
    parse_action,
    parse_echo,
    parse_message,
    read_start_image,
    unpack_frame,
)

SPEC = ActionSpec(buttons=("forward", "attack"), axes=(Axis("turn", -15, 15),), fps=20)
FRIEND = "http://friend.example:3000"  # the server below is told --allow-origin FRIEND


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def blank_png(width: int, height: int) -> bytes:
    """A black RGB PNG of any size, compressed row by row (16000x16000: 0.75 MB, never
    768 MB in this process)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


class Command:
    """``neuralworld ARGS --port P`` in a subprocess until ``url`` answers; stopped on exit."""

    def __init__(self, *args: str, ready_path: str = "/"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "neuralworld", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                urllib.request.urlopen(self.url + ready_path.lstrip("/"), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def raw_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A GET of ``path`` exactly as written (urllib would tidy it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.headers), r.read()
    finally:
        conn.close()


async def recv_until(ws, pred, timeout: float = 30.0) -> list:
    """Messages until pred(msg) holds (frames as (header, jpeg), text as dicts)."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        msg = unpack_frame(raw) if isinstance(raw, bytes) else json.loads(raw)
        seen.append(msg)
        if pred(msg):
            return seen


def is_frame(m) -> bool:
    return isinstance(m, tuple)


def is_error(m) -> bool:
    return isinstance(m, dict) and m.get("type") == "error"


# ---------------------------------------------------------------------------
# the play server
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world_path(tmp_path_factory):
    import torch

    from neuralworld.bundle import build_networks, save_bundle
    from neuralworld.model.config import preset

    torch.manual_seed(0)
    cfg = preset("tiny", spec=SPEC, resolution=(64, 64))
    ae, dyn = build_networks(cfg)
    return save_bundle(tmp_path_factory.mktemp("world") / "tiny", cfg, ae, dyn, name="random-tiny")


@pytest.fixture(scope="module")
def play_server(world_path):
    pytest.importorskip("websockets")
    if not os.path.exists("/proc/self/status"):
        pytest.skip("reads the server's memory from /proc (Linux)")
    server = Command("play", str(world_path), "--backend", "eager", "--allow-origin", FRIEND + "/", ready_path="/api/world")
    try:
        yield server
    finally:
        out = server.stop()
        assert "Traceback" not in out, out


def test_a_huge_start_image_is_refused_by_its_header_and_others_keep_playing(play_server):
    """A 16000x16000 PNG (0.75 MB, 1.0 MB as base64: under the message limit) is refused
    before a pixel is decoded; 4096x4096 ones (the largest allowed) are decoded off the
    event loop, two players at once. Another player's frames keep coming all along, and
    the server's memory stays within 300 MB of where it was."""
    import websockets

    huge = base64.b64encode(blank_png(16000, 16000)).decode()
    largest = base64.b64encode(blank_png(4096, 4096)).decode()
    pid, samples, stop, phase = play_server.proc.pid, [], threading.Event(), ["huge"]

    def watch_memory():
        while not stop.is_set():
            samples.append((phase[0], rss_mb(pid)))
            time.sleep(0.02)

    async def scenario():
        url = f"ws://127.0.0.1:{play_server.port}/ws"
        async with websockets.connect(url, max_size=None) as a, websockets.connect(url, max_size=None) as b, \
                websockets.connect(url, max_size=None) as c:  # fmt: skip
            for ws in (a, b, c):
                await recv_until(ws, is_frame)
            await asyncio.sleep(1.0)  # the sessions are made and warm
            before = rss_mb(pid)
            watcher = threading.Thread(target=watch_memory, daemon=True)
            watcher.start()
            gaps, done = [], asyncio.Event()

            async def watch_frames():  # player A only plays
                last = time.monotonic()
                while not done.is_set():
                    raw = await asyncio.wait_for(a.recv(), 10)
                    if isinstance(raw, bytes):
                        now = time.monotonic()
                        gaps.append(now - last)
                        last = now

            async def upload(ws, images):
                replies = []
                for data in images:
                    await ws.send(json.dumps({"type": "start_image", "data": data}))
                    got = await recv_until(ws, lambda m: isinstance(m, dict) and m.get("type") in ("error", "started"))
                    replies.append(got[-1])
                return replies + [(await recv_until(ws, is_frame))[-1][0]]  # and it still plays

            watcher_task = asyncio.create_task(watch_frames())
            t0 = time.monotonic()
            b_replies, c_replies = await asyncio.gather(upload(b, [huge]), upload(c, [huge]))  # two at once
            phase[0] = "largest"
            more_b, more_c = await asyncio.gather(upload(b, [largest, huge]), upload(c, [largest, largest]))
            b_replies, c_replies = b_replies[:1] + more_b, c_replies[:1] + more_c
            seconds = time.monotonic() - t0
            await asyncio.sleep(0.5)
            done.set()
            await watcher_task
            stop.set()
            watcher.join()
            return before, gaps, b_replies, c_replies, seconds

    before, gaps, b_replies, c_replies, seconds = asyncio.run(scenario())
    peak = {p: max([m for q, m in samples if q == p], default=before) for p in ("huge", "largest")}
    figures = {
        "uploads_s": round(seconds, 2), "other_player_frames": len(gaps), "other_player_worst_gap_s": round(max(gaps), 3),
        "rss_mb": {"before": round(before, 1), **{f"growth_{p}": round(m - before, 1) for p, m in peak.items()}},
    }  # fmt: skip
    print("\n" + json.dumps(figures))
    for refused in (b_replies[0], c_replies[0], b_replies[2]):
        assert refused["type"] == "error" and "over the limit of 16,777,216 pixels" in refused["message"], refused
    for started in (b_replies[1], *c_replies[1:3]):
        assert started["type"] == "started" and started["image"] == [4096, 4096], started
    assert b_replies[-1]["type"] == "frame" and c_replies[-1]["type"] == "frame"  # both still play
    assert max(gaps) < 1.0, figures
    assert max(peak.values()) - before < 300, figures


def test_out_of_range_integers_and_deep_json_get_error_replies(play_server):
    """A 401-digit integer in buttons, axes or t, and JSON nested 100,000 levels: an error
    reply each, short, and the same connection keeps receiving frames and obeying actions."""
    import websockets

    big = "1" + "0" * 400  # 401 digits
    bad = [
        ('{"type": "action", "buttons": {"forward": %s}}' % big, "button 'forward' is out of range"),
        ('{"type": "action", "axes": {"turn": %s}}' % big, "axis 'turn' is out of range"),
        ('{"type": "action", "axes": {"turn": -%s}}' % big, "axis 'turn' is out of range"),
        ('{"type": "action", "t": %s}' % big, '"t" is out of range'),
        ('{"type": "action", "seq": %s}' % big, '"seq" must be an integer'),
        ('{"type": "reset", "seed": %s}' % big, 'reset "seed" must be an integer'),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"type": "action", "buttons": ' + '{"a": ' * 100_000 + "0" + "}" * 100_000 + "}", "nested too deeply"),
        ('{"type": "action", "axes": {"spin": 1}}', "this world's axes are ['turn']"),
    ]

    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{play_server.port}/ws", max_size=None) as ws:
            await recv_until(ws, is_frame)
            replies = []
            for message, _ in bad:
                await ws.send(message)
                replies.append((await recv_until(ws, is_error))[-1]["message"])
            await ws.send(json.dumps({"type": "action", "axes": {"turn": 7.5}, "seq": 9, "t": 1.5}))
            header, _ = (await recv_until(ws, lambda m: is_frame(m) and m[0]["seq"] == 9))[-1]
            frames = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:
                frames += isinstance(await asyncio.wait_for(ws.recv(), 10), bytes)
            return replies, header, frames

    replies, header, frames = asyncio.run(scenario())
    for reply, (_, why) in zip(replies, bad):
        assert why in reply and len(reply) < 300, (why, reply)
    assert header["action"]["turn"] == 7.5 and header["t"] == 1.5
    assert frames >= 5, f"{frames} frames in the second after"


def test_websockets_from_other_origins_are_refused(play_server):
    """A page elsewhere may not open a session on the local player: evil.example gets an
    error and a close 1008 with the reason; the page's own origin (127.0.0.1 and localhost)
    and an origin named with --allow-origin play."""
    import websockets

    port = play_server.port

    async def try_origin(origin, host="127.0.0.1"):
        async with websockets.connect(f"ws://{host}:{port}/ws", origin=origin, max_size=None) as ws:
            first = await recv_until(ws, lambda m: is_frame(m) or is_error(m))
            if is_frame(first[-1]):
                return "plays", None
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as e:
                return first[-1]["message"], (e.rcvd.code, e.rcvd.reason)
            raise AssertionError("a refused socket stayed open")

    async def scenario():
        return {o: await try_origin(o, h) for o, h in [
            ("http://evil.example", "127.0.0.1"), (f"http://127.0.0.1:{port + 1}", "127.0.0.1"), ("null", "127.0.0.1"),
            (f"http://127.0.0.1:{port}", "127.0.0.1"), (f"http://localhost:{port}", "localhost"), (FRIEND, "127.0.0.1"),
        ]}  # fmt: skip

    results = asyncio.run(scenario())
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null"):
        message, (code, reason) = results[origin]
        assert code == 1008 and origin in reason and "--allow-origin" in reason, (origin, code, reason)
        assert "may not play here" in message
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", FRIEND):
        assert results[origin] == ("plays", None), origin


def test_play_server_headers_and_world_json(play_server):
    """nosniff on every response; world.json (what the page asks for first) answers 200
    with "neuralworld-play", so the page logs no 404; a bad static path is a 404."""
    for path, status in [("", 200), ("api/world", 200), ("world.json", 200), ("static/app.js", 200),
                         ("static/nope.js", 404), ("static/%00", 404), ("recordings/x.mp4", 404)]:  # fmt: skip
        code, headers, body = raw_get(play_server.port, "/" + path)
        assert code == status, (path, code)
        assert headers.get("x-content-type-options") == "nosniff", (path, headers)
    manifest = json.loads(get(play_server.url + "world.json")[2])
    assert manifest["format"] == "neuralworld-play" and manifest["name"] == "random-tiny"
    assert manifest["spec"] == SPEC.to_json_dict() and manifest["max_image_pixels"] == 4096 * 4096


# ---------------------------------------------------------------------------
# the export server (neuralworld play EXPORT_DIR)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export_server(tmp_path_factory):
    """A folder that looks like a web export to ``play`` (its world.json), with a secret
    beside it and symlinks planted inside it, served by the command."""
    root = tmp_path_factory.mktemp("export-server")
    site, outside = root / "site", root / "outside"
    (site / "static").mkdir(parents=True)
    (site / "ort").mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("the secret")
    (site / "index.html").write_text("<!doctype html><title>page</title>")
    (site / "world.json").write_text(json.dumps({"format": "neuralworld-web", "name": "fake"}))
    (site / "static" / "app.js").write_text("console.log('app');")
    (site / "ort" / "ort.wasm").write_bytes(b"\x00asm\x01\x00\x00\x00")
    (site / "passwd").symlink_to("/etc/passwd")
    (site / "secret.txt").symlink_to(outside / "secret.txt")
    (site / "outside").symlink_to(outside, target_is_directory=True)
    (site / "static" / "again.js").symlink_to(site / "static" / "app.js")  # inside, and still not followed
    server = Command("play", str(site))
    try:
        yield server
    finally:
        out = server.stop()
        assert "Traceback" not in out, out


def test_export_server_serves_regular_files_under_its_root_only(export_server):
    port = export_server.port
    code, headers, body = raw_get(port, "/")
    assert code == 200 and body.startswith(b"<!doctype html>")
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    for path, ctype in [("/static/app.js", "text/javascript"), ("/ort/ort.wasm", "application/wasm"), ("/world.json", "application/json")]:
        code, headers, _ = raw_get(port, path)
        assert code == 200 and headers["Content-type"] == ctype and headers["X-Content-Type-Options"] == "nosniff", path

    refused = {
        "/passwd": 404, "/secret.txt": 404, "/outside/secret.txt": 404, "/outside/": 404, "/static/again.js": 404,
        "/static/": 404, "/ort/": 404, "/../outside/secret.txt": 404, "/static/../../outside/secret.txt": 404,
        "/%2e%2e/outside/secret.txt": 404, "/static/%00": 400, "/%00": 400, "/static/app.js%00.html": 400, "/%ff": 400,
        "/nope": 404,
    }  # fmt: skip
    for path, status in refused.items():
        code, headers, body = raw_get(port, path)
        assert code == status, (path, code, body[:200])
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert b"root:" not in body and b"the secret" not in body and b"app.js" not in body, (path, body[:200])
        assert body.lstrip().lower().startswith(b"<!doctype html"), (path, body[:80])  # an error page, not a dropped connection
    code, headers, _ = raw_get(port, "/static")
    assert code == 301 and headers["Location"] == "/static/"
    assert raw_get(port, "/static/app.js")[0] == 200  # it still serves after all that


# ---------------------------------------------------------------------------
# pieces, without a server
# ---------------------------------------------------------------------------
def test_origin_rules():
    allowed = (normalize_origin(FRIEND + "/"),)
    assert allowed == ("http://friend.example:3000",)
    yes = [(None, "127.0.0.1:8000"), ("http://127.0.0.1:8000", "127.0.0.1:8000"), ("http://localhost:8000", "localhost:8000"),
           ("http://[::1]:8000", "[::1]:8000"), ("http://192.168.1.5:8000", "192.168.1.5:8000"), ("HTTP://LOCALHOST:8000", "localhost:8000"),
           ("http://127.0.0.1", "127.0.0.1:80"), (FRIEND, "127.0.0.1:8000")]  # fmt: skip
    no = [("http://evil.example", "127.0.0.1:8000"), ("http://localhost:8001", "localhost:8000"), ("null", "127.0.0.1:8000"),
          ("http://evil.example:8000", "evil.example:8000"),  # DNS rebinding: the names match, but a name is not the page's
          ("http://127.0.0.1:8000", None), ("http://127.0.0.1:8000", "127.0.0.1:8000:9"), ("file://", "127.0.0.1:8000")]  # fmt: skip
    for origin, host in yes:
        assert origin_allowed(origin, host, allowed), (origin, host)
    for origin, host in no:
        assert not origin_allowed(origin, host, allowed), (origin, host)
    for bad in ("evil.example", "http://x/path", "ftp://x", "http://x:99999"):
        with pytest.raises(ValueError):
            normalize_origin(bad)


def test_message_checks():
    with pytest.raises(MessageError, match="nested too deeply"):
        parse_message("[" * 100_000 + "]" * 100_000, 2**21)
    with pytest.raises(MessageError, match="over the limit"):
        parse_message(" " * 11, 10)
    with pytest.raises(MessageError, match="malformed JSON"):
        parse_message('{"type": "action", "t": ' + "9" * 5000 + "}", 2**21)  # past Python's int parsing limit
    with pytest.raises(MessageError, match=r"axis 'turn' is out of range: 1000000000.*…"):
        parse_action(SPEC, {"axes": {"turn": 10**400}})
    with pytest.raises(MessageError, match="this world's axes are"):
        parse_action(SPEC, {"axes": {"spin": 1}})
    assert parse_echo({"seq": 3, "t": 12.5}) == (3, 12.5) and parse_echo({}) == (None, None)
    for bad in ({"seq": 2**53 + 1}, {"seq": 1.5}, {"seq": True}, {"t": "now"}, {"t": float("nan")}, {"t": 10**400}):
        with pytest.raises(MessageError):
            parse_echo(bad)


def test_start_images_are_measured_before_they_are_decoded():
    with pytest.raises(MessageError, match="of 10000x9000 pixels is over the limit of 16,777,216 pixels"):
        read_start_image(base64.b64encode(blank_png(10000, 9000)).decode())
    with pytest.raises(MessageError, match="of more than 178,956,970 pixels is over the limit of 16,777,216 pixels"):
        read_start_image(base64.b64encode(blank_png(16000, 16000)).decode())  # over Pillow's own guard too
    with pytest.raises(MessageError, match="over the limit of 100 pixels"):
        read_start_image(base64.b64encode(blank_png(11, 10)).decode(), max_pixels=100)
    gif = base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").decode()
    with pytest.raises(MessageError, match="send a PNG or JPEG"):
        read_start_image(gif)
    assert read_start_image(base64.b64encode(blank_png(30, 20)).decode())[1] == (20, 30)
    img = decode_image(base64.b64encode(blank_png(300, 100)).decode(), resolution=(64, 64))  # fitted: the only copy kept
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.max() == 0


def test_a_config_value_of_the_wrong_type_names_its_field():
    d = json.loads(json.dumps(config_preset("small", doom_action_spec(2), (64, 64)).to_dict()))
    WorldConfig.from_dict(d)  # a world's config as config.json holds it passes the type checks
    for section, key, value, says in [
        ("dynamics", "n_layers", "four", "dynamics config key 'n_layers' must be int, got 'four'"),
        ("dynamics", "n_layers", 4.0, "must be int"),
        ("dynamics", "prev_frame", 1, "'prev_frame' must be bool"),
        ("autoencoder", "encoder_channels", [16, "32"], "'encoder_channels' must be tuple[int, ...]"),
        (None, "resolution", [64], "'resolution' must be tuple[int, int]"),
    ]:
        bad = json.loads(json.dumps(d))
        (bad[section] if section else bad)[key] = value
        with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            WorldConfig.from_dict(bad)
    ok = json.loads(json.dumps(d))
    ok["dynamics"]["mlp_ratio"] = 3  # an int where a float is annotated is fine
    assert WorldConfig.from_dict(ok).dynamics.mlp_ratio == 3


def test_play_help_shows_the_default_port(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["play", "--help"])
    out = capsys.readouterr().out
    assert "(default 8000)" in out and "--allow-origin URL" in out
