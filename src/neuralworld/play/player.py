"""One WebSocket connection of ``neuralworld play``: a ``WorldSession``, the latest action,
a one-frame outbox and a generation loop (the protocol and why it is built this way:
``server.py``'s docstring; the message checks: ``protocol.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

import cv2
import numpy as np

from neuralworld.play.protocol import (
    MESSAGE_TYPES,
    MessageError,
    pack_frame,
    parse_action,
    parse_echo,
    parse_message,
    parse_seed,
    read_start_image,
)


class Player:
    """One WebSocket: a session, the latest action, a one-frame outbox and a generation loop."""

    def __init__(self, hub: Any, websocket: Any, player_id: int):  # hub: server.Hub
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
        self.autopilot = False  # the hub's agent plays instead of the latest action

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
    async def handle_text(self, text: str) -> None:
        """Act on one client message; MessageError says why not. Awaits only a start
        image's decoding (in the hub's decode pool): this player's next messages wait
        for it, the event loop and the other players do not."""
        msg = parse_message(text, self.hub.config.max_message_bytes)
        kind = msg["type"]
        if kind == "action":
            action = parse_action(self.spec, msg)
            self.action_seq, self.action_t = parse_echo(msg)
            self.action = action
            self.action_received = time.monotonic()
            self.actions_received += 1
        elif kind == "reset":
            self._request("reset", parse_seed(msg.get("seed")))
        elif kind == "start_image":
            self._request("start", None, check_only=True)  # refuse before decoding, not after
            raw, _ = read_start_image(msg.get("data"), self.hub.config.max_image_pixels)
            self._request("start", await self.hub.fit_image(raw))
        elif kind == "record":
            on = msg.get("on")
            if not isinstance(on, bool):
                raise MessageError('record needs "on": true or false')
            self._request("record", on)
        elif kind == "autopilot":
            on = msg.get("on")
            if not isinstance(on, bool):
                raise MessageError('autopilot needs "on": true or false')
            if on and self.hub.agent is None:
                raise MessageError("this server has no agent: neuralworld play WORLD --agent AGENT")
            if on and not self.autopilot and hasattr(self.hub.agent, "reset"):
                self.hub.agent.reset()  # an agent with memory (a controller) starts watching afresh
            self.autopilot = on
            self.reply({"type": "autopilot", "on": on})
        else:
            raise MessageError(f"unknown message type {kind[:40]!r}; expected {MESSAGE_TYPES}")

    def _request(self, kind: str, payload: Any, check_only: bool = False) -> None:
        if len(self.requests) >= 8:
            raise MessageError(f"too many requests waiting; {kind} ignored")
        if not check_only:
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
            frame, (h, w) = payload  # fitted to the world's size; (h, w) as uploaded
            self.start_image = frame
            s.reset(frame)
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
            autopilot = self.autopilot and hub.agent is not None
            if autopilot:  # the agent looks at the frame on screen, as a player does
                action = await loop.run_in_executor(hub.pool, hub.agent.act, self.session.frame)
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
                "width": W, "height": H, "autopilot": autopilot,
                # the heads: reward for this step, and the probability that the episode ended here
                "reward": round(float(self.session.last_reward), 4), "termination": round(float(self.session.last_termination), 4),
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
