"""Eight players on one `neuralworld play` server for a minute: nobody starves and the
server's memory stays bounded. The server runs as a real subprocess (the CLI), so its
resident memory is read from /proc/<pid>/status. Figures print as one JSON line."""

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


PLAYERS = 8
SECONDS = 60.0
WARM_SECONDS = 10.0  # memory is compared from here on: the sessions are made and warm


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads memory from /proc (Linux)")
def test_eight_players_for_a_minute(tiny_world_run):
    import websockets

    world = tiny_world_run[1] / "world"
    port = free_port()
    cmd = [sys.executable, "-m", "neuralworld", "play", str(world), "--port", str(port), "--max-players", str(PLAYERS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                fps = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/world", timeout=2))["fps"]
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        rss = {"idle": rss_mb(proc.pid)}
        samples: list[tuple[float, float]] = []

        async def player(i: int, start: float, counts: list[int], gaps: list[float]) -> None:
            rng = random.Random(i)
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:

                async def send_actions():
                    seq = 0
                    while True:  # a restless player: hold something for a while, then change
                        seq += 1
                        action = {"buttons": {"forward": rng.random() < 0.6}, "axes": {"turn": rng.uniform(-15, 15)}}
                        await ws.send(json.dumps({"type": "action", **action, "seq": seq, "t": time.monotonic() * 1000}))
                        await asyncio.sleep(rng.uniform(0.03, 0.3))

                sender = asyncio.create_task(send_actions())
                last = None
                try:
                    while time.monotonic() - start < SECONDS:
                        raw = await asyncio.wait_for(ws.recv(), 30)
                        if isinstance(raw, bytes):
                            now = time.monotonic()
                            counts[i] += 1
                            if last is not None:
                                gaps[i] = max(gaps[i], now - last)
                            last = now
                        else:
                            assert json.loads(raw)["type"] != "error", raw
                finally:
                    sender.cancel()

        async def watch_memory(start: float) -> None:
            while time.monotonic() - start < SECONDS:
                await asyncio.sleep(1.0)
                samples.append((time.monotonic() - start, rss_mb(proc.pid)))

        async def play() -> tuple[list[int], list[float]]:
            counts, gaps = [0] * PLAYERS, [0.0] * PLAYERS
            start = time.monotonic()
            await asyncio.gather(*(player(i, start, counts, gaps) for i in range(PLAYERS)), watch_memory(start))
            return counts, gaps

        counts, gaps = asyncio.run(play())
        warm = [m for t, m in samples if t >= WARM_SECONDS]
        rss.update(warm=warm[0], end=samples[-1][1], peak=max(m for _, m in samples))
        mean = sum(counts) / PLAYERS
        figures = {
            "players": PLAYERS, "seconds": SECONDS, "world_fps": fps,
            "frames_per_player": {"min": min(counts), "mean": round(mean, 1), "max": max(counts)},
            "fps_per_player": {"min": round(min(counts) / SECONDS, 2), "mean": round(mean / SECONDS, 2)},
            "longest_gap_s": round(max(gaps), 2),
            "rss_mb": {k: round(v, 1) for k, v in rss.items()},
        }  # fmt: skip
        print("\n" + json.dumps(figures))
        assert proc.poll() is None, "the server died under load"
        assert min(counts) >= 0.5 * mean, f"a player starved: {counts}"
        assert mean >= SECONDS * 1.0, f"under one frame per second per player: {counts}"
        assert max(gaps) < 10.0, f"a player waited {max(gaps):.1f} s for a frame"
        # bounded: after warm-up, eight sessions playing a minute do not keep growing
        assert rss["end"] - rss["warm"] < 64, rss
        assert rss["peak"] - rss["idle"] < 1024, rss
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
