"""Record ViZDoom play into a dataset: frames, the actions the engine executed,
rewards, terminations, the player's pose and a few game variables, per frame.

ViZDoom (PyPI ``vizdoom``) carries the engine and the Freedoom game data and
renders headless at thousands of frames per second. Every scenario uses the
same controls, so datasets from different maps share one ActionSpec:

    buttons: forward, back, strafe_left, strafe_right, attack, use
    axis:    turn — degrees per recorded frame, positive turns right (like mouse x)

One recorded frame is ``frame_skip`` engine tics (Doom runs 35 tics/s), so the
dataset's fps is 35 / frame_skip. Episodes run in parallel worker processes,
each writing its own episodes straight into the store (see data/store.py for
why that is safe and what a killed recording leaves).
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.util
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from neuralworld.actions import ActionSpec, Axis
from neuralworld.data.flow import Camera
from neuralworld.data.store import Dataset, DatasetError, DatasetWriter
from neuralworld.record.explorer import CELL, coverage_cells, make_policy

TICS_PER_SECOND = 35
TURN_LIMIT = 15.0  # degrees per recorded frame
BUTTONS = ("forward", "back", "strafe_left", "strafe_right", "attack", "use")
POSE_NAMES = ("x", "y", "z", "angle", "eye")
"""The player's feet (x, y, z), its view's angle, and the eye's height over the feet: 41 map units
standing, bobbing about 10 either way while walking (the bob moves the whole view)."""
LEGACY_POSE_NAMES = POSE_NAMES[:4]
"""What recordings stored before the eye: appending to one keeps its columns."""
CAMERA = Camera(hfov_deg=90.0, aspect=4.0 / 3.0, depth_unit=100.0 / 14.0, depth_offset=6.2)
"""ViZDoom's view at the 4:3 resolutions ``_render_resolution`` picks; the depth buffer steps
about 14 per 100 map units (ViZDoom issue #192). Checked on recorded pairs: warping by this
camera's reprojection, then Farneback on the rest, beats Farneback alone (docs/experiments.md)."""
GAME_VARIABLES = ("health", "armor", "ammo", "kills")


@dataclass(frozen=True)
class Scenario:
    wad: str  # a scenario wad shipped with vizdoom, or an IWAD (freedoom1/2)
    map: str
    description: str
    monsters: bool = False
    iwad: bool = False  # wad is the game itself (full Freedoom maps)
    living_reward: float = 0.0  # reward per tic alive (take_cover: 1, so a step's reward is the tics survived)
    skill: int = 0  # Doom skill 1..5 as the scenario's .cfg sets it; 0: the engine's default


SCENARIOS: dict[str, Scenario] = {
    "basic": Scenario("basic.wad", "map01", "one small rectangular room (ViZDoom 'basic'), one monster", monsters=True),
    "my_way_home": Scenario("my_way_home.wad", "map01", "a small maze of connected rooms with a vest to find"),
    "freedoom_map01": Scenario("freedoom2.wad", "MAP01", "Freedoom Phase 2 MAP01, a full map: corridors, doors, rooms; no monsters", iwad=True),
    "freedoom_map02": Scenario("freedoom2.wad", "MAP02", "Freedoom Phase 2 MAP02, a full map; no monsters", iwad=True),
    "take_cover": Scenario(
        "take_cover.wad", "map01", "ViZDoom 'take_cover': dodge fireballs from monsters across the room; reward: tics survived",
        monsters=True, living_reward=1.0, skill=4,
    ),
    "freedoom_e1m1": Scenario("freedoom1.wad", "E1M1", "Freedoom Phase 1 E1M1, a full map; no monsters", iwad=True),
}


def scenario_help() -> str:
    return "\n".join(f"  doom/{k:<16} {s.description}" for k, s in SCENARIOS.items())


def parse_env(env: str) -> tuple[str, Scenario]:
    name = env.removeprefix("doom/") if env.startswith("doom/") else None
    if name is None:
        raise DatasetError(f"unknown --env {env!r}: engines available: doom/<scenario>. Scenarios:\n{scenario_help()}")
    if name not in SCENARIOS:
        raise DatasetError(f"unknown Doom scenario {name!r}. Scenarios:\n{scenario_help()}")
    return name, SCENARIOS[name]


def frame_skip_for(spec: ActionSpec) -> int:
    """The engine tics per step of a world or dataset whose controls run at ``spec.fps``."""
    return int(round(TICS_PER_SECOND / spec.fps))


def doom_action_spec(frame_skip: int) -> ActionSpec:
    return ActionSpec(
        buttons=BUTTONS,
        axes=(Axis("turn", -TURN_LIMIT, TURN_LIMIT, "deg/frame"),),
        fps=TICS_PER_SECOND / frame_skip,
        descriptions={
            "forward": "W / Up", "back": "S / Down", "strafe_left": "A", "strafe_right": "D",
            "attack": "mouse button / Ctrl", "use": "E / Space", "turn": "mouse x / Left, Right",
        },
    )


@dataclass(frozen=True)
class RecordConfig:
    env: str = "doom/freedoom_map01"
    episodes: int = 20
    workers: int = 2
    resolution: tuple[int, int] = (128, 128)
    max_steps: int = 1000
    frame_skip: int = 2
    seed: int = 0
    policy: str = "explorer"
    agent: str | None = None  # an agent folder plays instead of ``policy`` (see AgentPolicy)
    epsilon: float = 0.0  # with ``agent``: the chance a step plays a random choice of its set instead


class AgentPolicy:
    """An agent plays the recording: World Models' iterative procedure, where what the trained
    controller meets in the engine is recorded so that the next world learns those states (a
    world recorded from random play has seen few of the places a good player reaches). Each
    step, with probability ``epsilon``, a random choice of the agent's Discrete set is played
    instead, and the agent is told what was played (``played``: a controller's memory reads the
    action that led to the next frame)."""

    def __init__(self, agent: Any, seed: int, epsilon: float):
        self.agent, self.epsilon = agent, float(epsilon)
        self.rng = np.random.default_rng([seed, 7])
        self.started = False

    def act_frame(self, frame: np.ndarray) -> np.ndarray:
        """The action vector (A,) for this frame; the first call of an episode starts the agent's memory."""
        index, _ = self.agent.predict(frame[None], episode_start=np.array([not self.started]), deterministic=False)
        index, self.started = int(np.asarray(index).reshape(-1)[0]), True
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            index = int(self.rng.integers(len(self.agent.table)))
            self.agent.played(0, index)
        return np.asarray(self.agent.table[index], np.float32)


# ---------------------------------------------------------------------------
# one engine
# ---------------------------------------------------------------------------
def _render_resolution(vzd: Any, h: int, w: int) -> Any:
    """The smallest 4:3 engine resolution at least as big as the stored frame."""
    for rw, rh in ((160, 120), (200, 150), (256, 192), (320, 240), (400, 300), (512, 384), (640, 480), (800, 600), (1024, 768)):
        if rw >= w and rh >= h:
            return getattr(vzd.ScreenResolution, f"RES_{rw}X{rh}")
    return vzd.ScreenResolution.RES_1024X768


class DoomEngine:
    """A headless ViZDoom game set up for recording one scenario."""

    def __init__(self, scenario: Scenario, resolution: tuple[int, int], frame_skip: int, seed: int):
        import vizdoom as vzd

        self.vzd = vzd
        self.resolution = resolution
        self.frame_skip = frame_skip
        g = vzd.DoomGame()
        pkg = os.path.dirname(vzd.__file__)
        if scenario.iwad:
            g.set_doom_game_path(os.path.join(pkg, scenario.wad))
        else:
            g.set_doom_game_path(os.path.join(pkg, "freedoom2.wad"))
            g.set_doom_scenario_path(os.path.join(vzd.scenarios_path, scenario.wad))
        g.set_doom_map(scenario.map)
        # the engine writes its settings file; keep it out of the user's folder
        self._config_dir = tempfile.mkdtemp(prefix="neuralworld-vizdoom-")
        g.set_doom_config_path(os.path.join(self._config_dir, "_vizdoom.ini"))
        g.set_screen_resolution(_render_resolution(vzd, *resolution))
        g.set_screen_format(vzd.ScreenFormat.RGB24)
        g.set_render_hud(False)
        g.set_render_crosshair(False)
        g.set_render_weapon(True)
        g.set_render_decals(True)
        g.set_render_particles(True)
        g.set_render_messages(False)
        g.set_render_corpses(True)
        g.set_depth_buffer_enabled(True)  # the explorer steers by it; stored for the exact flow (data/flow.py)
        g.set_window_visible(False)
        g.set_sound_enabled(False)
        g.set_mode(vzd.Mode.PLAYER)
        g.set_episode_start_time(10)  # skip the tics where input is ignored
        g.set_episode_timeout(0)  # we bound episodes ourselves (max_steps)
        if not scenario.monsters:
            g.add_game_args("-nomonsters")
        if scenario.skill:
            g.set_doom_skill(scenario.skill)
        g.set_living_reward(scenario.living_reward)
        B = vzd.Button
        g.set_available_buttons([
            B.MOVE_FORWARD, B.MOVE_BACKWARD, B.MOVE_LEFT, B.MOVE_RIGHT, B.ATTACK, B.USE, B.TURN_LEFT_RIGHT_DELTA,
        ])
        V = vzd.GameVariable
        g.set_available_game_variables([
            V.POSITION_X, V.POSITION_Y, V.POSITION_Z, V.ANGLE, V.CAMERA_POSITION_Z,
            V.HEALTH, V.ARMOR, V.SELECTED_WEAPON_AMMO, V.KILLCOUNT,
        ])
        g.set_seed(int(seed) % (2**31))
        g.init()
        self.game = g

    def close(self) -> None:
        self.game.close()
        shutil.rmtree(self._config_dir, ignore_errors=True)

    def frame(self, state: Any) -> np.ndarray:
        import cv2

        img = state.screen_buffer  # (H, W, 3) uint8 RGB
        h, w = self.resolution
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(img)

    def depth(self, state: Any) -> np.ndarray:
        """The depth buffer (H, W) uint8 at the stored resolution (nearest: depths are not blended)."""
        import cv2

        d = state.depth_buffer
        h, w = self.resolution
        if d.shape != (h, w):
            d = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
        return np.ascontiguousarray(d, dtype=np.uint8)

    @staticmethod
    def clearance(state: Any) -> tuple[float, float, float]:
        """Median depth of the left, centre and right thirds of the view's middle band."""
        d = state.depth_buffer
        h, w = d.shape
        band = d[int(h * 0.4) : int(h * 0.6)]
        thirds = np.array_split(band, 3, axis=1)
        return tuple(float(np.median(t)) for t in thirds)  # type: ignore[return-value]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float]:
        """Apply one recorded frame's action; returns (executed action, reward)."""
        cmd = [float(v) for v in action[:-1]] + [float(action[-1]) / self.frame_skip]  # turn per tic
        reward = self.game.make_action(cmd, self.frame_skip)
        executed = np.asarray(self.game.get_last_action(), np.float32)
        executed[-1] *= self.frame_skip
        return executed, float(reward)


def record_episode(
    engine: DoomEngine,
    writer: DatasetWriter,
    episode_id: str,
    *,
    spec: ActionSpec,
    policy_name: str,
    seed: int,
    max_steps: int,
    env: str,
    parent_pid: int | None = None,
    progress: Any = None,
    agent: Any = None,
    epsilon: float = 0.0,
) -> dict[str, Any]:
    """Play one episode with the policy (or ``agent``, see AgentPolicy) and stream it into the store."""
    g = engine.game
    g.set_seed(int(seed) % (2**31))
    g.new_episode()
    policy = AgentPolicy(agent, seed, epsilon) if agent is not None else make_policy(policy_name, seed, TURN_LIMIT)
    ep = writer.episode(episode_id, env=env, seed=seed, policy=policy_name)
    xy = []
    total_reward = 0.0
    terminated = False
    t0 = time.perf_counter()
    try:
        for step in range(max_steps):
            if parent_pid is not None and step % 16 == 0 and os.getppid() != parent_pid:
                raise SystemExit("recorder parent died")  # orphaned: leave the episode incomplete
            state = g.get_state()
            frame = engine.frame(state)
            depth = engine.depth(state) if writer.info.camera is not None else None
            gv = np.asarray(state.game_variables, np.float32)
            pose = np.append(gv[:4], gv[4] - gv[2])[: len(writer.info.pose_names)]  # the eye over the feet
            game_vars = gv[5:]
            xy.append(pose[:2])
            if isinstance(policy, AgentPolicy):
                want = policy.act_frame(frame)
            else:
                want = spec.make(policy.act(float(pose[0]), float(pose[1]), float(pose[3]), engine.clearance(state)))
            executed, reward = engine.step(want)
            executed[-1] = np.clip(executed[-1], -TURN_LIMIT, TURN_LIMIT)
            terminated = bool(g.is_episode_finished())  # died or left the map
            total_reward += reward
            ep.add_frame(frame, executed, reward, terminated, pose, game_vars, depth=depth)
            if progress is not None:
                with progress.get_lock():
                    progress.value += 1
            if terminated:
                break
        cells = coverage_cells(np.array(xy))
        ep.save(coverage_cells=cells, terminated=terminated, total_reward=total_reward)
    except BaseException:
        ep.discard()  # an error or an orphaned worker: leave nothing half-written
        raise
    return {
        "id": episode_id,
        "frames": ep.length,
        "coverage_cells": cells,
        "terminated": terminated,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------
# parallel recording
# ---------------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _worker_init(cfg: RecordConfig, out: str, parent_pid: int, progress: Any, load_agent: Callable[[], Any] | None) -> None:
    _, scenario = parse_env(cfg.env)
    if load_agent is not None:
        import torch

        torch.set_num_threads(1)  # one engine and one agent a worker, the workers side by side
        _worker["agent"] = load_agent()
    engine = _worker["engine"] = DoomEngine(scenario, cfg.resolution, cfg.frame_skip, cfg.seed)
    mp.util.Finalize(engine, engine.close, exitpriority=10)  # runs when the pool closes cleanly
    _worker["writer"] = DatasetWriter.open(out)
    _worker["cfg"] = cfg
    _worker["parent"] = parent_pid
    _worker["progress"] = progress


def _worker_episode(task: tuple[str, int]) -> dict[str, Any]:
    episode_id, seed = task
    cfg: RecordConfig = _worker["cfg"]
    return record_episode(
        _worker["engine"], _worker["writer"], episode_id,
        spec=doom_action_spec(cfg.frame_skip), seed=seed,
        policy_name=f"agent {cfg.agent} epsilon {cfg.epsilon:g}" if cfg.agent else cfg.policy,
        max_steps=cfg.max_steps, env=cfg.env, parent_pid=_worker["parent"], progress=_worker["progress"],
        agent=_worker.get("agent"), epsilon=cfg.epsilon,
    )


def record(cfg: RecordConfig, out: str | os.PathLike, *, progress: bool = True,
           load_agent: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Record ``cfg.episodes`` episodes into the dataset at ``out`` (created or appended to).
    With ``cfg.agent``, ``load_agent`` (picklable: each worker process calls it) opens the agent
    that plays; the caller checks it fits the engine's ActionSpec and ``cfg.resolution``."""
    name, scenario = parse_env(cfg.env)
    if (cfg.agent is None) != (load_agent is None):
        raise ValueError("record: cfg.agent and load_agent go together")
    if not 0.0 <= cfg.epsilon <= 1.0:
        raise DatasetError(f"epsilon must be within [0, 1], got {cfg.epsilon}")
    try:
        import vizdoom  # noqa: F401
    except ImportError:
        raise DatasetError("ViZDoom is not installed: pip install 'neuralworld[doom]' (or run ./setup.sh)") from None
    spec = doom_action_spec(cfg.frame_skip)
    pose_names, camera = POSE_NAMES, CAMERA
    try:  # appending to a recording made before the eye or the depth's offset: its columns, its camera
        old = Dataset(out).info
        pose_names = LEGACY_POSE_NAMES if old.pose_names == LEGACY_POSE_NAMES else POSE_NAMES
        if old.camera is not None and replace(old.camera, depth_offset=CAMERA.depth_offset) == CAMERA:
            camera = old.camera
    except DatasetError:  # nothing there yet (or not a dataset: the writer says so)
        pass
    writer = DatasetWriter.create(
        out, spec, cfg.resolution, source=f"vizdoom:{name}", pose_names=pose_names, game_variables=GAME_VARIABLES,
        camera=camera, exist_ok=True,
    )
    removed = writer.remove_incomplete()
    ids = writer.next_ids(cfg.episodes)
    seeds = [cfg.seed + int(i) for i in ids]  # the id fixes the seed: an appended run never repeats one
    tasks = list(zip(ids, seeds))
    workers = max(1, min(cfg.workers, cfg.episodes))

    ctx = mp.get_context("spawn")  # the engine is not fork-safe
    counter = ctx.Value("q", 0)
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.episodes, unit="ep", desc=f"recording {cfg.env}", dynamic_ncols=True)
    with ctx.Pool(workers, initializer=_worker_init, initargs=(cfg, str(out), os.getpid(), counter, load_agent)) as pool:
        pending = pool.imap_unordered(_worker_episode, tasks)
        while len(results) < len(tasks):
            try:
                results.append(pending.next(timeout=0.5))
                if bar is not None:
                    bar.update(1)
            except mp.TimeoutError:
                pass
            if bar is not None:
                dt = time.perf_counter() - t0
                bar.set_postfix(frames=counter.value, fps=f"{counter.value / max(dt, 1e-9):.0f}")
        pool.close()
        pool.join()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    frames = sum(r["frames"] for r in results)
    cells = [r["coverage_cells"] for r in results]
    return {
        "out": str(out),
        "env": cfg.env,
        "episodes": len(results),
        "frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 1),
        "frames_per_second_per_worker": round(frames / seconds / workers, 1),
        "workers": workers,
        "coverage_cells_mean": round(float(np.mean(cells)), 1),
        "coverage_cell_size": CELL,
        "removed_incomplete": removed,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
