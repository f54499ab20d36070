"""Gymnasium environments: a world bundle (``WorldEnv``), B of its playthroughs in one
batched call (``WorldVectorEnv``) and the real ViZDoom twin of a recorded world
(``DoomEnv``). Importing this package registers them::

    import gymnasium, neuralworld.envs
    env = gymnasium.make("neuralworld/World-v0", world="runs/doom/world")   # a world with reward heads
    envs = gymnasium.make_vec("neuralworld/World-v0", num_envs=64, vectorization_mode="vector_entry_point", world=...)
    real = gymnasium.make("neuralworld/Doom-v0", env="doom/take_cover", world="worlds/take-cover")

(``gymnasium.make("neuralworld.envs:neuralworld/World-v0", ...)`` imports it for you.)
"""

import gymnasium as gym

from neuralworld.envs.world import (
    DiscreteActions, EnvError, WorldEnv, action_space, combination_table, default_combinations, heads_problem,
    parse_combinations,
)  # fmt: skip
from neuralworld.envs.vector import DiscreteVectorActions, WorldVectorEnv

__all__ = [
    "DiscreteActions", "DiscreteVectorActions", "DoomEnv", "EnvError", "WorldEnv", "WorldVectorEnv",
    "action_space", "combination_table", "default_combinations", "heads_problem", "parse_combinations",
]  # fmt: skip

WORLD_ID = "neuralworld/World-v0"
DOOM_ID = "neuralworld/Doom-v0"

if WORLD_ID not in gym.registry:
    gym.register(
        WORLD_ID, entry_point="neuralworld.envs.world:WorldEnv", vector_entry_point="neuralworld.envs.vector:WorldVectorEnv",
        disable_env_checker=True,  # check_env passes (tests/test_envs.py); the passive checker would only add warnings
    )
if DOOM_ID not in gym.registry:
    gym.register(DOOM_ID, entry_point="neuralworld.envs.doom:DoomEnv", disable_env_checker=True)


def __getattr__(name: str):
    if name == "DoomEnv":  # lazy: ViZDoom's import is not needed to play a world
        from neuralworld.envs.doom import DoomEnv

        return DoomEnv
    raise AttributeError(f"module 'neuralworld.envs' has no attribute {name!r}")
