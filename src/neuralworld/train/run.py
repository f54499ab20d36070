"""A run from start to finish, as a world and the baseline both have it: processes, the
dataset and its split, the run folder checked and recorded (run.json), the logger; at
the end the bundle in RUN/world and summary.json."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from neuralworld.bundle import save_bundle
from neuralworld.model.config import ConfigError
from neuralworld.state_io import StateError, atomic_write_json, read_json
from neuralworld.train.config import TrainConfig, TrainingError
from neuralworld.train.data import TrainData, open_training_data, start_context
from neuralworld.train.loop import Dist, Logger, RunFolder, setup_distributed


@dataclass
class TrainingRun:
    """What a run's stages are given, and what it reports."""

    data: TrainData
    world: Any
    """The network config the run builds (``WorldConfig``, or the baseline's), bound to the dataset."""
    d: Dist
    folder: RunFolder
    summary: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.folder.path

    def save_world(self, autoencoder: torch.nn.Module, dynamics: torch.nn.Module, *, training: dict[str, Any],
                   **bundle: Any) -> None:
        """Rank 0 writes the bundle (RUN/world) with the start frames a session shows when given nothing."""
        if not self.d.main:
            return
        start_frames, start_actions = start_context(self.data, self.world.dynamics.memory_frames)
        save_bundle(self.path / "world", self.world, autoencoder, dynamics, name=self.path.name,
                    start_frames=start_frames, start_actions=start_actions, training=training, **bundle)
        self.summary["bundle"] = str(self.path / "world")


@contextmanager
def training_run(data: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig, *, resume: bool, progress: bool,
                 network_config: Callable[..., Any], model: str | None = None) -> Iterator[TrainingRun]:
    """Open a run: ``network_config(cfg.preset, spec=, resolution=)`` makes its network
    config for the dataset; ``model`` names a model other than our world in run.json and
    the summary. On leaving without an error the summary gets its time and is written."""
    d = setup_distributed(cfg.device)
    ds = open_training_data(data)
    try:
        world = network_config(cfg.preset, spec=ds.spec, resolution=ds.resolution).validate()
    except ConfigError as e:
        raise TrainingError(f"{'baseline ' if model else ''}preset {cfg.preset!r} does not fit {data}: {e}") from None
    named = {"model": model} if model else {}
    record = {"data": str(data), **named, "action_spec": ds.spec.to_json_dict(), "resolution": list(ds.resolution),
              "world": world.to_dict(), "train": cfg.to_dict(), "world_size": d.world_size}
    path = Path(out)
    _start_run(path, record, resume, d, type(world))
    train_eps, held_eps = ds.split(cfg.held_out)
    logger = Logger(path, d.main)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"run": str(path), **named, "world_size": d.world_size, "device": str(d.device),
                               "train_episodes": len(train_eps), "held_out_episodes": len(held_eps)}
    run = TrainingRun(TrainData(ds, train_eps, held_eps), world, d, RunFolder(path, logger, progress), summary)
    try:
        yield run
    finally:
        logger.close()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["ranks_identical"] = True if d.world_size > 1 else None
    if d.main:
        atomic_write_json(path / "summary.json", summary)


def _check_run(run: Path, record: dict[str, Any], resume: bool, config_cls: Any = None) -> None:
    path = run / "run.json"
    if not resume:
        if run.exists() and any(run.iterdir()):
            raise TrainingError(f"{run} already holds a run: add --resume to continue it, or choose another --out")
        return
    if not path.exists():
        raise TrainingError(f"--resume: {run} holds no run (no run.json)")
    try:
        old = read_json(path, "run record")
    except StateError as e:
        raise TrainingError(str(e)) from None
    problems = []
    if old.get("action_spec") != record["action_spec"]:
        problems.append("the dataset's ActionSpec differs from the run's")
    if old.get("resolution") != record["resolution"]:
        problems.append(f"the dataset's resolution {record['resolution']} differs from the run's {old.get('resolution')}")
    old_world = old.get("world")
    if config_cls is not None and isinstance(old_world, dict):  # settings added since the run began read as their defaults
        try:
            old_world = config_cls.from_dict(old_world).to_dict()
        except ConfigError:
            pass
    if old_world != record["world"]:
        problems.append("the model config differs (another --preset?)")
    if problems:
        raise TrainingError(f"cannot resume {run}: " + "; ".join(problems))


def _start_run(run: Path, record: dict[str, Any], resume: bool, d: Dist, config_cls: Any = None) -> None:
    """Rank 0 checks the run folder against ``record`` and writes run.json once; all ranks wait."""
    if d.main:
        _check_run(run, record, resume, config_cls)
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "run.json").exists():
            atomic_write_json(run / "run.json", record)
    d.barrier()
