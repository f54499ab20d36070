"""A controller trained by CMA-ES inside a recurrent world's dream (World Models' C).

The controller is linear: the world's code of the current frame and its memory, [z, h]
(``MemoryRNN.features``; ``features="zhc"`` adds the LSTM's cell state c, as World Models' Doom
controller read), give one score per action of a Discrete set, and it plays the best
score. CMA-ES (the ``cma`` library; we write no optimiser) searches its weights: every
generation, each of ``population`` candidates plays ``rollouts`` dreams (at ``temperature``), all of them advancing
together in one batched ``WorldSession`` that decodes no pixels; a dream's return is the reward
head's sum over its steps alive, and it ends when the termination head passes ``threshold``, or
with ``sample_deaths`` at each step with the head's probability (or at ``max_steps``). The dreams of a generation are seeded by (seed, generation).

Playing the real game, the controller sees through the same world: each real frame is encoded
and remembered by the world's session with the action that led to it, so [z, h] mean what they
meant in the dream. An agent folder::

    AGENT/
      controller.safetensors  weight (latent + hidden, n) and bias (n): CMA-ES's favourite (its mean)
      action_spec.json        the ActionSpec it acts in
      agent.json              {"format": "neuralworld-agent", "algorithm": "CMA-ES", "combinations",
                               "resolution", "world": the world it was trained in (or doom/<scenario>), "config",
                               "generations", "timesteps": dream steps played, "created"}
      world/                  a copy of the recurrent world's bundle: how the controller sees and remembers
      es.pickle               CMA-ES's state after the last generation (--resume goes on from it)
      tensorboard/            per generation: the candidates' best, mean and worst return, sigma
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from neuralworld.actions import ActionSpec
from neuralworld.agent_folder import FORMAT, META_FILE, SPEC_FILE, AgentError
from neuralworld.agent_folder import check_spec as _check_spec
from neuralworld.state_io import atomic_write_json

ALGORITHM = "CMA-ES"
WEIGHTS_FILE = "controller.safetensors"
STATE_FILE = "es.pickle"
WORLD_DIR = "world"


@dataclass(frozen=True)
class ControllerConfig:
    """How ``train_controller`` searches (World Models used 64 candidates x 16 dreams)."""

    generations: int = 100
    steps: int | None = None
    """a budget of environment steps (dream or real): no generation starts once it is spent (the
    real-engine row of issue 16 gets as many real steps as the dream's world was recorded from)"""
    population: int = 32
    rollouts: int = 8  # dreams per candidate per generation
    max_steps: int = 1000  # steps per dream before it is cut
    termination_threshold: float = 0.5
    sample_deaths: bool = False
    """a dream ends at each step with the termination head's probability (a seeded draw), rather than
    when it passes ``termination_threshold``: a head trained by cross-entropy is calibrated, not
    confident, and a death it gives 0.3 a step still comes about as often as in the recording"""
    sigma: float = 0.1  # CMA-ES's first step size
    seed: int = 0
    temperature: float | None = None
    """the dream's temperature (``RNNNetConfig.temperature``; World Models trained Doom's controller at
    1.15: a dream a little wilder than the recording is harder to cheat); None: the world's own"""
    features: str = "zh"
    """what the controller reads: "zh", the code and the LSTM's output [z, h] (World Models' car),
    or "zhc", with its cell state c too (World Models' Doom controller: 64 + 512 + 512 numbers)"""
    death_scale: float = 1.0
    """with ``sample_deaths``: each step's death probability is multiplied by it (at most 1). A world
    trained on a good player's long episodes can learn that deaths are rarer than they are; this
    calibrates its dream against the engine (``scripts/dream_survival.py``: random play should live
    in the dream as long as in the engine)"""


def _cma() -> Any:
    try:
        import cma
    except ImportError:
        raise AgentError("cma is not installed: pip install 'neuralworld[agents]' (or run ./setup.sh)") from None
    return cma


FEATURES = ("zh", "zhc")


def _features(world: Any, features: str = "zh") -> int:
    """The numbers a controller reading ``features`` of ``world`` sees."""
    dyn = world.dynamics
    if not hasattr(dyn, "features"):
        raise AgentError(f"{world.path or world.name}: a {world.model} world has no code and memory to read; a CMA-ES "
                         "controller plays a recurrent world (neuralworld train --model rnn)")
    if features not in FEATURES:
        raise AgentError(f"a controller reads one of {', '.join(FEATURES)}, got {features!r}")
    return int(dyn.config.latent + dyn.config.hidden * (2 if features == "zhc" else 1))


def dream(world: Any, choose: Callable[[Any], np.ndarray], *, batch_size: int, max_steps: int, threshold: float, seed: int,
          sample_deaths: bool = False, death_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` dreams from the world's start frames, ``choose(session)`` giving each step's
    action vectors (B, A): returns each dream's return and length (B,). A dream ends when the
    termination head passes ``threshold``, or with ``sample_deaths`` at each step with its
    probability (times ``death_scale``, at most 1), or at ``max_steps``."""
    B = batch_size
    session = world.start(batch_size=B, seed=seed, backend="eager", pixels=False)
    alive = np.ones(B, bool)
    total, length = np.zeros(B), np.zeros(B, np.int64)
    fate = np.random.default_rng([seed, 1])
    with torch.no_grad():
        for _ in range(max_steps):
            session.step(choose(session))
            total += np.where(alive, session.last_reward, 0.0)
            length += alive
            p = session.last_termination
            alive &= (fate.random(B) >= np.minimum(p * death_scale, 1.0)) if sample_deaths else (p <= threshold)
            if not alive.any():
                break
    return total, length


def dream_returns(world: Any, weight: np.ndarray, bias: np.ndarray, table: np.ndarray, *, rollouts: int, max_steps: int,
                  threshold: float, seed: int, sample_deaths: bool = False, death_scale: float = 1.0,
                  cell: bool = False) -> tuple[np.ndarray, int]:
    """Candidates' weights (P, D, n) and biases (P, n) playing ``rollouts`` dreams each (``dream``),
    the Discrete action i being ``table[i]``: returns their mean returns (P,) and the dream steps played."""
    P = weight.shape[0]
    W = torch.from_numpy(np.repeat(weight, rollouts, 0)).float()  # (B, D, n)
    b = torch.from_numpy(np.repeat(bias, rollouts, 0)).float()  # (B, n)
    actions = np.asarray(table, np.float32)

    def choose(session: Any) -> np.ndarray:
        f = world.dynamics.features(session.cache, cell).float()  # (B, D)
        return actions[(torch.einsum("bd,bdn->bn", f, W) + b).argmax(1).numpy()]

    total, length = dream(world, choose, batch_size=P * rollouts, max_steps=max_steps, threshold=threshold, seed=seed,
                          sample_deaths=sample_deaths, death_scale=death_scale)
    return total.reshape(P, rollouts).mean(1), int(length.sum())


def real_returns(engines: list[Any], world: Any, weight: np.ndarray, bias: np.ndarray, table: np.ndarray, *, rollouts: int,
                 seed: int, cell: bool = False) -> tuple[np.ndarray, int]:
    """As ``dream_returns``, in the real game: ``engines`` (the real twin, ``envs.doom.DoomEnv``)
    play the candidates' episodes in lockstep, each frame seen through ``world`` (encoded and
    remembered with the action that led to it, as ``ControllerAgent`` sees), one batched call a
    step for all engines. Returns the mean real returns (P,) and the engine steps played."""
    P, E = weight.shape[0], len(engines)
    jobs = [(p, r) for p in range(P) for r in range(rollouts)]
    total = np.zeros(len(jobs))
    session = world.start(batch_size=E, backend="eager", pixels=False)
    frames = np.zeros((E, 1, *world.resolution, 3), np.uint8)
    acts = np.zeros((E, 1, table.shape[1]), np.float32)
    job = np.full(E, -1)
    queue = iter(range(len(jobs)))
    W, b = torch.from_numpy(weight).float(), torch.from_numpy(bias).float()
    played = 0

    def start(i: int) -> None:
        job[i] = next(queue, -1)
        if job[i] >= 0:
            frames[i, 0] = engines[i].reset(seed=seed + int(job[i]))[0]
            acts[i, 0] = world.spec.noop()
            session.cache.reset(torch.tensor([i]))  # a new episode: the element forgets, its first frame starts it

    with torch.inference_mode():  # the session's cache is made of inference tensors
        for i in range(E):
            start(i)
        while (job >= 0).any():
            session.observe(frames, actions=acts)
            f = world.dynamics.features(session.cache, cell).float()  # (E, D)
            for i in np.flatnonzero(job >= 0):
                p = jobs[job[i]][0]
                choice = int((f[i] @ W[p] + b[p]).argmax())
                obs, reward, terminated, truncated, _ = engines[i].step(table[choice])
                total[job[i]] += reward
                played += 1
                frames[i, 0], acts[i, 0] = obs, table[choice]
                if terminated or truncated:
                    start(i)
    return total.reshape(P, rollouts).mean(1), played


def train_controller(world_path: str | os.PathLike, out: str | os.PathLike, cfg: ControllerConfig = ControllerConfig(), *,
                     combos: list[dict[str, float]] | None = None, resume: bool = False, progress: bool = False,
                     sees_through: str | os.PathLike | None = None, resolution: tuple[int, int] | None = None,
                     frame_skip: int = 2, engines: int = 8) -> dict[str, Any]:
    """CMA-ES over a linear controller in the recurrent world at ``world_path`` (see the module
    docstring); the agent lands in ``out``. ``resume`` goes on from ``out/es.pickle``.

    ``world_path`` = ``doom/<scenario>``: the same search in the real game (``engines`` copies in
    lockstep, at ``resolution`` and ``frame_skip``), each frame seen through the recurrent world
    ``sees_through`` (the row a dream-trained controller is measured against: the same V and M,
    real experience instead of dreams)."""
    cma = _cma()
    from torch.utils.tensorboard import SummaryWriter

    from neuralworld.bundle import load_bundle
    from neuralworld.envs import combination_table, default_combinations, heads_problem

    if cfg.death_scale <= 0 or (cfg.death_scale != 1.0 and not cfg.sample_deaths):
        raise AgentError(f"the death scale multiplies sampled deaths' probabilities: it needs sample_deaths and must be > 0, "
                         f"got {cfg.death_scale}")
    if cfg.generations < 1 or cfg.population < 2 or cfg.rollouts < 1 or cfg.max_steps < 1 or (cfg.steps or 1) < 1:
        raise AgentError("generations, steps, rollouts and max_steps must be >= 1, population >= 2")
    real = str(world_path).startswith("doom/")
    if real and cfg.death_scale != 1.0:
        raise AgentError(f"the death scale calibrates a dream's deaths; {world_path}'s are the engine's own")
    if real and sees_through is None:
        raise AgentError(f"a controller in {world_path} sees through a recurrent world: give it one (--world WORLD)")
    world = load_bundle(sees_through if real else world_path)
    if not real and heads_problem(world):
        raise AgentError(f"{world_path}: {heads_problem(world)}: there is no reward to learn from")
    doom: list[Any] = []
    if real:
        from neuralworld.envs.doom import DoomEnv
        from neuralworld.record.doom import doom_action_spec

        _check_spec(world.spec, doom_action_spec(frame_skip), str(sees_through), f"{world_path} at frame skip {frame_skip}")
        if resolution is not None and tuple(resolution) != tuple(world.resolution):
            raise AgentError(f"{sees_through} sees {world.resolution} frames; --resolution asks for {tuple(resolution)}")
        doom = [DoomEnv(str(world_path), resolution=tuple(world.resolution), frame_skip=frame_skip, max_steps=cfg.max_steps)
                for _ in range(max(1, engines))]
    D = _features(world, cfg.features)
    cell = cfg.features == "zhc"
    if cfg.temperature is not None:
        if cfg.temperature <= 0:
            raise AgentError(f"the dream's temperature must be > 0, got {cfg.temperature}")
        world.dynamics.config.temperature = float(cfg.temperature)
    spec = world.spec
    combos = combos or default_combinations(spec)
    table = combination_table(spec, combos)
    n = len(combos)
    out = Path(out)
    state = out / STATE_FILE
    if resume and state.is_file():
        _check_spec(ActionSpec.from_json((out / SPEC_FILE).read_text()), spec, str(out), str(world_path))
        saved = pickle.loads(state.read_bytes())
        if saved["combinations"] != combos:
            raise AgentError(f"{out} was trained with actions {saved['combinations']}; this run asks for {combos}")
        if saved.get("features", "zh") != cfg.features:
            raise AgentError(f"{out} was trained reading {saved.get('features', 'zh')}; this run asks for {cfg.features}")
        es, generation, timesteps = saved["es"], saved["generation"], saved["timesteps"]
    else:
        if (out / WEIGHTS_FILE).exists() or state.exists():
            raise AgentError(f"{out} already holds an agent: choose another --out, or --resume to continue it")
        es = cma.CMAEvolutionStrategy(np.zeros(D * n + n), cfg.sigma,
                                      {"popsize": cfg.population, "seed": cfg.seed + 1, "verbose": -9})
        generation = timesteps = 0
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC_FILE).write_text(spec.to_json())
    _copy_world(world.path, out)
    writer = SummaryWriter(str(out / "tensorboard"))
    try:
        while generation < cfg.generations and (cfg.steps is None or timesteps < cfg.steps):
            t0 = time.perf_counter()
            xs = np.asarray(es.ask())  # (P, D * n + n)
            if real:
                returns, played = real_returns(doom, world, xs[:, : D * n].reshape(-1, D, n), xs[:, D * n :], table,
                                               rollouts=cfg.rollouts, seed=(cfg.seed * 100_003 + generation) * 10_007, cell=cell)
            else:
                returns, played = dream_returns(world, xs[:, : D * n].reshape(-1, D, n), xs[:, D * n :], table,
                                                rollouts=cfg.rollouts, max_steps=cfg.max_steps, threshold=cfg.termination_threshold,
                                                seed=cfg.seed * 100_003 + generation, sample_deaths=cfg.sample_deaths,
                                                death_scale=cfg.death_scale, cell=cell)
            es.tell(list(xs), list(-returns))  # cma minimises
            generation += 1
            timesteps += played
            figures = {"best": float(returns.max()), "mean": float(returns.mean()), "worst": float(returns.min()),
                       "sigma": float(es.sigma), "seconds": time.perf_counter() - t0}
            for k, v in figures.items():
                writer.add_scalar(f"cma/{k}", v, generation)
            if progress:
                print(f"[cma] generation {generation}/{cfg.generations}: return best {figures['best']:.1f} "
                      f"mean {figures['mean']:.1f} sigma {figures['sigma']:.3f} ({figures['seconds']:.1f} s)", flush=True)
            _save(out, np.asarray(es.result.xfavorite), D, n, spec, combos, world_path=str(world_path), resolution=world.resolution,
                  cfg=cfg, generation=generation, timesteps=timesteps)
            tmp = state.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps({"es": es, "generation": generation, "timesteps": timesteps, "combinations": combos,
                                      "features": cfg.features}))
            os.replace(tmp, state)
    finally:
        writer.close()
        for env in doom:
            env.close()
    return {"agent": str(out), "world": str(world_path), "generations": generation, "timesteps": timesteps}


def _copy_world(world: str | os.PathLike, out: Path) -> None:
    """The world a controller sees through, copied into its folder once (whole, or not at all)."""
    if not (out / WORLD_DIR).is_dir():
        shutil.copytree(world, out / (WORLD_DIR + ".tmp"), dirs_exist_ok=True)
        os.replace(out / (WORLD_DIR + ".tmp"), out / WORLD_DIR)


def _save(out: Path, x: np.ndarray, D: int, n: int, spec: ActionSpec, combos: list[dict[str, float]], *, world_path: str,
          resolution: tuple[int, int], cfg: ControllerConfig, generation: int, timesteps: int) -> None:
    from neuralworld.state_io import save_tensors

    save_tensors(out / WEIGHTS_FILE, {"weight": torch.from_numpy(x[: D * n].reshape(D, n).astype(np.float32)),
                                      "bias": torch.from_numpy(x[D * n :].astype(np.float32))}, {"format": FORMAT})
    atomic_write_json(out / META_FILE, {
        "format": FORMAT, "algorithm": ALGORITHM, "combinations": combos, "observation": "frame",
        "resolution": list(resolution), "world": world_path, "config": dataclasses.asdict(cfg),
        "generations": generation, "timesteps": timesteps,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })  # fmt: skip


def vote(choices: torch.Tensor) -> int:
    """The action most members chose (choices (K,): each member's best); a tie goes to the
    earliest member's choice among the tied."""
    counts = torch.bincount(choices)
    for c in choices.tolist():
        if counts[c] == counts.max():
            return int(c)
    raise AssertionError("unreachable")


class ControllerAgent:
    """A loaded controller: it sees each frame through its world (encoded, remembered with the
    action that led to it) and plays the action whose score is highest; an ensemble
    (``combine_controllers``) plays the action most of its members chose (``vote``). ``predict`` has SB3's
    signature (``episode_start`` starts an element's memory afresh), so ``evaluate`` scores it as
    it scores PPO; ``act`` is the autopilot's one-frame call (a new frame goes on the same memory)."""

    def __init__(self, path: str | os.PathLike, spec: ActionSpec, combinations: list[dict[str, float]], features: str = "zh"):
        from neuralworld.bundle import BundleError, load_bundle
        from neuralworld.envs import combination_table
        from neuralworld.state_io import StateError, load_tensors

        self.path, self.spec, self.combinations = str(path), spec, combinations
        try:
            self.world = load_bundle(Path(path) / WORLD_DIR)
            tensors, _ = load_tensors(Path(path) / WEIGHTS_FILE, what="controller weights")
        except (BundleError, StateError) as e:
            raise AgentError(f"{path}: {e}") from None
        weight, bias = tensors["weight"].float(), tensors["bias"].float()
        self.weight, self.bias = (weight, bias) if weight.dim() == 3 else (weight[None], bias[None])  # (K, D, n), (K, n)
        D = _features(self.world, features)
        self.cell = features == "zhc"
        K = self.weight.shape[0]
        if self.weight.shape[1:] != (D, len(combinations)) or self.bias.shape != (K, len(combinations)):
            raise AgentError(f"{path}: controller weights {tuple(weight.shape)} do not fit {D} features x {len(combinations)} actions")
        self.table = combination_table(spec, combinations)
        self.resolution = tuple(self.world.resolution)
        self._sessions: dict[int, Any] = {}
        self._last: dict[int, np.ndarray] = {}
        self.codes = "mean"
        """How a real frame's code is read: "mean" (the VAE's posterior mean) or "sample" (a draw from
        the posterior, as the codes the MDN-LSTM learnt from and the dream's are drawn)."""
        self._noise = torch.Generator().manual_seed(0)

    def seed(self, seed: int, codes: str | None = None) -> None:
        """Seed the draws of ``codes="sample"`` (and set ``codes``)."""
        if codes is not None:
            if codes not in ("mean", "sample"):
                raise AgentError(f"codes must be 'mean' or 'sample', got {codes!r}")
            self.codes = codes
        self._noise.manual_seed(int(seed))

    def _choose(self, i: int, frame: np.ndarray, start: bool) -> int:
        if start or i not in self._sessions:
            self._sessions[i] = self.world.start(frame, backend="eager", pixels=False)
        else:
            self._sessions[i].observe(frame[None], actions=self._last[i][None])
        with torch.inference_mode():  # the session's cache is made in inference mode
            if self.codes == "sample":  # the remembered code (the mean) becomes a draw from the posterior
                from neuralworld.model.autoencoder import frames_to_tensor

                mean, log_var = self.world.autoencoder.posterior(frames_to_tensor(np.ascontiguousarray(frame)[None]))
                noise = torch.randn(mean.shape, generator=self._noise)
                self._sessions[i].cache.z.copy_(mean + (0.5 * log_var).exp() * noise)
            f = self.world.dynamics.features(self._sessions[i].cache, self.cell)[0].float()
            index = vote((torch.einsum("d,kdn->kn", f, self.weight) + self.bias).argmax(1))
        self._last[i] = self.table[index]
        return index

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True) -> Any:
        obs = np.asarray(observation)
        starts = np.ones(len(obs), bool) if episode_start is None else np.asarray(episode_start, bool)
        return np.array([self._choose(i, obs[i], bool(starts[i])) for i in range(len(obs))]), None

    def played(self, i: int, index: int) -> None:
        """Element ``i`` played Discrete action ``index``, not its own choice (a recorder exploring):
        its memory reads that action with the next frame."""
        self._last[i] = self.table[index]

    def act(self, frame: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """The action vector (A,) for the next frame of the playthrough it is watching."""
        return self.table[self._choose(0, np.asarray(frame), False)]

    def reset(self) -> None:
        """Forget the playthrough: the next frame starts a new memory."""
        self._sessions.clear()
        self._last.clear()


def load_controller(path: str | os.PathLike, meta: dict[str, Any]) -> ControllerAgent:
    return ControllerAgent(path, ActionSpec.from_json((Path(path) / SPEC_FILE).read_text()), meta.get("combinations") or [],
                           features=(meta.get("config") or {}).get("features", "zh"))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / META_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def combine_controllers(members: list[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """An ensemble of controllers searched in the same world (other seeds, say): one agent whose
    members each choose from the same [z, h] and which plays the action most of them chose
    (``vote``). Each member must be a CMA-ES controller of the same world (its weights byte for
    byte), action set, features and ActionSpec. Nothing is learnt: it is a fixed rule over
    policies each trained only where they were."""
    from neuralworld.state_io import StateError, load_tensors, save_tensors

    if len(members) < 2:
        raise AgentError("an ensemble needs at least two controllers")
    out = Path(out)
    if (out / WEIGHTS_FILE).exists():
        raise AgentError(f"{out} already holds an agent: choose another --out")
    metas, weights, biases = [], [], []
    for m in members:
        meta = read_meta(m)
        if meta.get("algorithm") != ALGORITHM or meta.get("format") != FORMAT:
            raise AgentError(f"{m} is not a CMA-ES controller (agent train --algorithm cma writes one)")
        try:
            t, _ = load_tensors(Path(m) / WEIGHTS_FILE, what="controller weights")
        except StateError as e:
            raise AgentError(f"{m}: {e}") from None
        w, b = t["weight"].float(), t["bias"].float()
        weights.append(w if w.dim() == 3 else w[None])
        biases.append(b if b.dim() == 2 else b[None])
        metas.append(meta)
    first = Path(members[0])
    same = {
        "actions": lambda p, meta: meta.get("combinations"),
        "features": lambda p, meta: (meta.get("config") or {}).get("features", "zh"),
        "ActionSpec": lambda p, meta: (Path(p) / SPEC_FILE).read_text(),
        "world": lambda p, meta: (Path(p) / WORLD_DIR / "model.safetensors").read_bytes(),
    }
    for what, get in same.items():
        for m, meta in zip(members[1:], metas[1:]):
            if get(m, meta) != get(first, metas[0]):
                raise AgentError(f"{m} and {first} differ in their {what}: an ensemble's members choose the same way from "
                                 "the same world")
    weight, bias = torch.cat(weights), torch.cat(biases)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(first / SPEC_FILE, out / SPEC_FILE)
    _copy_world(first / WORLD_DIR, out)
    save_tensors(out / WEIGHTS_FILE, {"weight": weight.contiguous(), "bias": bias.contiguous()}, {"format": FORMAT})
    meta = {k: metas[0][k] for k in ("combinations", "observation", "resolution", "world", "config") if k in metas[0]}
    atomic_write_json(out / META_FILE, {
        "format": FORMAT, "algorithm": ALGORITHM, **meta, "members": [
            {"agent": str(m), "seed": (mm.get("config") or {}).get("seed"), "generations": mm.get("generations"),
             "command": mm.get("command")} for m, mm in zip(members, metas)],
        "generations": max(int(mm.get("generations", 0)) for mm in metas),
        "timesteps": sum(int(mm.get("timesteps", 0)) for mm in metas),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })  # fmt: skip
    return {"agent": str(out), "members": len(weight)}
