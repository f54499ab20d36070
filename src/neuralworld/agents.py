"""Agents that learn inside a world: Stable-Baselines3 PPO over ``neuralworld.envs``.

The learning algorithm is the library's (we write none): ``train_agent`` plays
``DiscreteActions(WorldEnv(world))`` in ``cfg.envs`` copies sharing one world's
networks, with SB3's seeds, callbacks (checkpoints) and TensorBoard log; ``evaluate``
scores an agent over episodes of a world or of the real game (``doom/<scenario>``,
``envs.DoomEnv``) with SB3's ``evaluate_policy``. An agent is a folder::

    AGENT/
      agent.zip           the SB3 PPO model (policy and optimiser), PPO.load reads it
      action_spec.json    the ActionSpec the agent acts in: checked against every env it plays
      agent.json          {"format": "neuralworld-agent", "algorithm": "PPO", "combinations":
                           the Discrete action set, "observation", "resolution", "world",
                           "config": AgentConfig, "timesteps", "created"}
      checkpoints/        agent_<steps>_steps.zip (SB3 CheckpointCallback); --resume continues
                          from the newest
      tensorboard/        PPO_1/... (tensorboard --logdir AGENT/tensorboard)

An agent is refused by an env whose ActionSpec differs, with both specs named.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuralworld.actions import ActionSpec
from neuralworld.agent_folder import FORMAT, META_FILE, SPEC_FILE, AgentError
from neuralworld.agent_folder import check_spec as _check_spec
from neuralworld.record.doom import frame_skip_for
from neuralworld.state_io import atomic_write_json

MODEL_FILE = "agent.zip"
RANDOM = "random"
"""Not a folder: ``evaluate("random", ...)`` scores a uniformly random choice of the Discrete set."""
MIN_SIDE = 36  # SB3's NatureCNN (CnnPolicy) shrinks a frame by 8/4, 4/2, 3/1: it needs 36 pixels a side


@dataclass(frozen=True)
class AgentConfig:
    """How ``train_agent`` trains (PPO's defaults from SB3's Atari settings, smaller)."""

    steps: int = 100_000  # environment steps in all (every copy's steps count)
    envs: int = 4  # copies of the world played at once (SB3 n_envs)
    seed: int = 0  # seeds PPO, the policy's sampling and the worlds' noise
    max_steps: int = 1000  # steps per episode before truncation
    termination_threshold: float = 0.5  # the termination head's probability that ends an episode
    n_steps: int = 128  # PPO rollout steps per env between updates
    batch_size: int = 64  # PPO minibatch
    n_epochs: int = 4  # PPO epochs per update
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    ent_coef: float = 0.01
    checkpoint_every: int = 10_000
    """environment steps between checkpoints (0: none)"""
    sampler: str = "fast"
    """the world's sampler preset (WorldSession)"""
    backend: str = "eager"
    """how the world's networks run (backends.PATHS)"""


def _sb3() -> Any:
    try:
        import stable_baselines3
    except ImportError:
        raise AgentError("Stable-Baselines3 is not installed: pip install 'neuralworld[agents]' (or run ./setup.sh)") from None
    return stable_baselines3


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def _world_envs(world: Any, cfg: AgentConfig, combos: list[dict[str, float]]) -> Any:
    """``cfg.envs`` playthroughs of the world in one batched network call (``envs.sb3.WorldVecEnv``)."""
    from stable_baselines3.common.vec_env import VecMonitor

    from neuralworld.envs.sb3 import WorldVecEnv

    venv = WorldVecEnv(world, cfg.envs, combos, max_steps=cfg.max_steps, termination_threshold=cfg.termination_threshold,
                       sampler=cfg.sampler, backend=cfg.backend)
    venv.seed(cfg.seed)
    return VecMonitor(venv)


def _doom_envs(env: str, cfg: AgentConfig, combos: list[dict[str, float]], resolution: tuple[int, int], frame_skip: int) -> Any:
    """``cfg.envs`` copies of the real game (``envs.doom.DoomEnv``), one after another in this process."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from neuralworld.envs import DiscreteActions
    from neuralworld.envs.doom import DoomEnv

    def make() -> Any:
        return Monitor(DiscreteActions(DoomEnv(env, resolution=resolution, frame_skip=frame_skip, max_steps=cfg.max_steps), combos))

    venv = DummyVecEnv([make for _ in range(cfg.envs)])
    venv.seed(cfg.seed)
    return venv


def _latest_checkpoint(folder: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in folder.glob("agent_*_steps.zip") if (m := re.fullmatch(r"agent_(\d+)_steps\.zip", p.name))]
    return max(found)[1] if found else None


def train_agent(world_path: str | os.PathLike, out: str | os.PathLike, cfg: AgentConfig = AgentConfig(), *,
                resume: bool = False, progress: bool = False, verbose: int = 0,
                resolution: tuple[int, int] | None = None, frame_skip: int = 2,
                combos: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """Train PPO in the world at ``world_path`` for ``cfg.steps`` environment steps; the
    agent is written to ``out`` (see the module docstring). ``resume`` continues from
    ``out/checkpoints``' newest checkpoint. ``world_path`` may be ``doom/<scenario>``: PPO
    in the real game (at ``resolution``, default 64x64, and ``frame_skip``), the row a
    dream-trained agent is measured against."""
    sb3 = _sb3()
    from stable_baselines3.common.callbacks import CheckpointCallback

    from neuralworld.envs import default_combinations

    if cfg.steps < 1 or cfg.envs < 1:
        raise AgentError(f"steps and envs must be >= 1, got {cfg.steps} and {cfg.envs}")
    source = str(world_path)
    real = source.startswith("doom/")
    if real:  # the real game: the baseline row of an experiment
        from neuralworld.record.doom import doom_action_spec

        H, W = resolution or (64, 64)
        spec = doom_action_spec(frame_skip)
    else:
        from neuralworld.bundle import load_bundle
        from neuralworld.envs import heads_problem

        world = load_bundle(world_path)  # one set of networks for every copy
        if heads_problem(world):
            raise AgentError(f"{world_path}: {heads_problem(world)}: there is no reward to learn from")
        (H, W), spec = world.resolution, world.spec
    if min(H, W) < MIN_SIDE:
        raise AgentError(f"{world_path} is {H}x{W}: PPO's CnnPolicy needs frames of at least {MIN_SIDE}x{MIN_SIDE}")
    out = Path(out)
    checkpoints = out / "checkpoints"
    combos = combos or default_combinations(spec)
    venv = _doom_envs(source, cfg, combos, (H, W), frame_skip) if real else _world_envs(world, cfg, combos)
    start = _latest_checkpoint(checkpoints) if resume else None
    if start is not None:
        _check_spec(ActionSpec.from_json((out / SPEC_FILE).read_text()), spec, str(out), str(world_path))
        model = sb3.PPO.load(start, env=venv, device="cpu", tensorboard_log=str(out / "tensorboard"))
    else:
        if (out / MODEL_FILE).exists() and not resume:
            raise AgentError(f"{out} already holds an agent: choose another --out, or --resume to continue it")
        model = sb3.PPO(
            "CnnPolicy", venv, learning_rate=cfg.learning_rate, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
            n_epochs=cfg.n_epochs, gamma=cfg.gamma, ent_coef=cfg.ent_coef, seed=cfg.seed, device="cpu",
            tensorboard_log=str(out / "tensorboard"), verbose=verbose,
        )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC_FILE).write_text(spec.to_json())  # before the first checkpoint: a resume checks it
    callbacks = []
    if cfg.checkpoint_every > 0:
        callbacks.append(CheckpointCallback(max(1, cfg.checkpoint_every // cfg.envs), str(checkpoints), name_prefix="agent"))
    remaining = cfg.steps - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=callbacks, progress_bar=progress, reset_num_timesteps=start is None, tb_log_name="PPO")
    save_agent(model, out, spec, combos, world=source, resolution=(H, W), config=cfg)
    venv.close()
    return {"agent": str(out), "world": str(world_path), "timesteps": int(model.num_timesteps), "resumed_from": str(start) if start else None}


def save_agent(model: Any, out: Path, spec: ActionSpec, combos: list[dict[str, float]], *, world: str,
               resolution: tuple[int, int], config: AgentConfig) -> None:
    """The agent folder: the SB3 model (written to a temp file, then renamed), its ActionSpec, agent.json."""
    tmp = out / "agent.tmp.zip"
    model.save(tmp)
    os.replace(tmp, out / MODEL_FILE)
    (out / SPEC_FILE).write_text(spec.to_json())
    atomic_write_json(out / META_FILE, {
        "format": FORMAT, "algorithm": "PPO", "combinations": combos, "observation": "frame",
        "resolution": list(resolution), "world": world, "config": dataclasses.asdict(config),
        "timesteps": int(model.num_timesteps), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })  # fmt: skip


# ---------------------------------------------------------------------------
# loading and playing
# ---------------------------------------------------------------------------
@dataclass
class Agent:
    """A loaded agent: the SB3 model, its ActionSpec and Discrete action set."""

    model: Any
    spec: ActionSpec
    combinations: list[dict[str, float]]
    resolution: tuple[int, int]
    path: str = ""

    def __post_init__(self) -> None:
        from neuralworld.envs import combination_table

        self.table = combination_table(self.spec, self.combinations)  # (n, A): Discrete action -> vector

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True) -> Any:
        return self.model.predict(observation, state, episode_start, deterministic)

    def played(self, i: int, index: int) -> None:
        """Element ``i`` played ``index`` instead of the policy's choice: a PPO policy keeps no memory of it."""

    def act(self, frame: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """The action vector (A,) in the spec's units for one frame (H, W, 3): what a player's autopilot plays."""
        index, _ = self.model.predict(frame, deterministic=deterministic)
        return self.table[int(index)]


class RandomAgent:
    """Uniformly random choices of a Discrete set (SB3's ``predict`` signature): the baseline row."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.rng = n, np.random.default_rng(seed)

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True) -> Any:
        batch = np.asarray(observation).shape[0]
        return self.rng.integers(self.n, size=batch), None


def load_agent(path: str | os.PathLike, spec: ActionSpec | None = None, *, env: str = "this env") -> Agent:
    """Open an agent folder; with ``spec``, refuse it unless it acts in that ActionSpec."""
    path = Path(path)
    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}
    if meta.get("algorithm") == "CMA-ES" and meta.get("format") == FORMAT:  # a controller of a recurrent world
        from neuralworld.controller import load_controller

        if spec is not None:
            _check_spec(ActionSpec.from_json((path / SPEC_FILE).read_text()), spec, str(path), env)
        return load_controller(path, meta)  # type: ignore[return-value]
    sb3 = _sb3()
    if not (path / MODEL_FILE).is_file() or not (path / SPEC_FILE).is_file():
        raise AgentError(f"{path} is not an agent (needs {MODEL_FILE} and {SPEC_FILE}: neuralworld agent train writes them)")
    agent_spec = ActionSpec.from_json((path / SPEC_FILE).read_text())
    if meta.get("format", FORMAT) != FORMAT:
        raise AgentError(f"{path / META_FILE} is not a neuralworld agent")
    if spec is not None:
        _check_spec(agent_spec, spec, str(path), env)
    model = sb3.PPO.load(path / MODEL_FILE, device="cpu")
    combos = meta.get("combinations") or []
    if len(combos) != model.action_space.n:
        raise AgentError(f"{path}: agent.json lists {len(combos)} actions, the policy chooses among {model.action_space.n}")
    resolution = tuple(meta.get("resolution") or model.observation_space.shape[1:])
    return Agent(model, agent_spec, combos, resolution, str(path))  # type: ignore[arg-type]


def make_eval_env(env: str, *, resolution: tuple[int, int] | None, frame_skip: int | None,
                  max_steps: int, termination_threshold: float = 0.5) -> Any:
    """The env an agent is scored in: a world folder, or ``doom/<scenario>`` (the real twin)."""
    from neuralworld.envs import WorldEnv

    if env.startswith("doom/"):
        from neuralworld.envs.doom import DoomEnv

        return DoomEnv(env, resolution=resolution, frame_skip=frame_skip, max_steps=max_steps)
    return WorldEnv(env, max_steps=max_steps, termination_threshold=termination_threshold)


def evaluate(agent_path: str, env: str, *, episodes: int = 100, seed: int = 0, max_steps: int = 1000,
             deterministic: bool = False, termination_threshold: float = 0.5, resolution: tuple[int, int] | None = None,
             frame_skip: int | None = None, combos: list[dict[str, float]] | None = None,
             codes: str | None = None) -> dict[str, Any]:
    """Score an agent (a folder, or ``"random"``) over ``episodes`` episodes of ``env``:
    returns per-episode returns and lengths, their mean and standard deviation. ``combos``:
    the random baseline's Discrete set (an agent plays its own). ``codes``: how a CMA-ES
    controller reads a frame's code, "mean" or "sample" (``ControllerAgent.codes``)."""
    _sb3()
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    from neuralworld.envs import DiscreteActions

    if episodes < 1:
        raise AgentError(f"episodes must be >= 1, got {episodes}")
    agent: Any
    if agent_path == RANDOM:
        agent, spec, res = None, None, resolution
    else:
        agent = load_agent(agent_path)  # the spec is checked below, against the env as made
        if hasattr(agent, "seed"):  # a controller: its code draws are seeded too
            agent.seed(seed, codes)
        elif codes is not None:
            raise AgentError(f"--codes is for a CMA-ES controller; {agent_path} is not one")
        spec, res = agent.spec, resolution or agent.resolution
    skip = frame_skip or (frame_skip_for(spec) if spec is not None else None)
    raw = make_eval_env(env, resolution=res, frame_skip=skip, max_steps=max_steps, termination_threshold=termination_threshold)
    try:
        if agent is not None:
            _check_spec(agent.spec, raw.spec_actions, agent_path, env)
            if raw.observation_space.shape[:2] != tuple(agent.resolution):
                raise AgentError(f"agent {agent_path} sees {agent.resolution} frames; {env} gives {raw.observation_space.shape[:2]}")
        wrapped = DiscreteActions(raw, agent.combinations if agent is not None else combos)
        player = agent if agent is not None else RandomAgent(int(wrapped.action_space.n), seed)
        vec = _seeded_vec(Monitor(wrapped), seed)
        returns, lengths = evaluate_policy(player, vec, n_eval_episodes=episodes, deterministic=deterministic,
                                           return_episode_rewards=True, warn=False)
    finally:
        raw.close()
    r, n = np.asarray(returns, float), np.asarray(lengths, int)
    return {
        "agent": agent_path, "env": env, "episodes": episodes, "seed": seed, "deterministic": deterministic,
        **({"codes": agent.codes} if hasattr(agent, "codes") else {}),
        "mean_return": round(float(r.mean()), 3), "std_return": round(float(r.std()), 3),
        "mean_length": round(float(n.mean()), 2), "returns": [round(float(v), 3) for v in r], "lengths": n.tolist(),
    }  # fmt: skip


def _seeded_vec(env: Any, seed: int) -> Any:
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec = DummyVecEnv([lambda: env])
    vec.seed(seed)
    return vec
