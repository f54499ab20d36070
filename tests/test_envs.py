"""neuralworld.envs: the world as a Gymnasium env, the batched vector env, the real twin."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import neuralworld
import neuralworld.envs as envs
from neuralworld import ActionError, bundle
from neuralworld.envs import DiscreteActions, DiscreteVectorActions, EnvError, WorldEnv, WorldVectorEnv
from neuralworld.model.config import preset as latent_preset
from neuralworld.model.unet import baseline_preset
from neuralworld.model.warp import warp_preset
from neuralworld.record.doom import doom_action_spec
from neuralworld.session import SessionError

NEVER = 1.0  # a termination threshold no probability passes: random heads would end every step


def tiny_world(path: Path, preset=warp_preset) -> Path:
    """A world with random weights, in the recorder's controls (ViZDoom at frame skip 2)."""
    torch.manual_seed(0)
    cfg = preset("tiny", doom_action_spec(2))
    bundle.save_bundle(path, cfg, *bundle.build_networks(cfg), name=path.name)
    return path


@pytest.fixture(scope="module")
def warp_world(tmp_path_factory) -> Path:
    return tiny_world(tmp_path_factory.mktemp("envs") / "warp-tiny")


@pytest.fixture(scope="module")
def latent_world(tmp_path_factory) -> Path:
    """The transformer world (random weights, tiny preset) at 64x64."""
    return tiny_world(tmp_path_factory.mktemp("envs") / "latent-tiny", lambda name, spec: latent_preset(name, spec, (64, 64)))


def test_registered_and_check_env(warp_world, latent_world):
    for world in (warp_world, latent_world):
        env = gym.make("neuralworld/World-v0", world=world)
        check_env(env.unwrapped, skip_render_check=False)
        obs, info = env.reset(seed=3)
        assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3) and obs.shape == env.observation_space.shape
        assert isinstance(env.action_space, gym.spaces.Dict) and env.action_space["buttons"].n == 6


def test_episode_from_heads_and_step_limit(warp_world):
    env = WorldEnv(warp_world, max_steps=3, termination_threshold=NEVER)
    env.reset(seed=0)
    done = [env.step(env.action_space.sample())[2:4] for _ in range(3)]
    assert done == [(False, False), (False, False), (False, True)]
    env = WorldEnv(warp_world, termination_threshold=0.0)  # any probability above 0 ends it
    _, reward, terminated, _, info = env.step(env.spec_actions.make(forward=1))
    assert terminated and 0 < info["termination_probability"] < 1 and isinstance(reward, float)
    assert reward == pytest.approx(env.session.last_reward)


def test_reset_from_frames_and_latent_observations(warp_world):
    env = WorldEnv(warp_world, observation="latent", termination_threshold=NEVER)
    image = np.full((30, 50, 3), 200, np.uint8)
    obs, _ = env.reset(seed=1, options={"frames": image})
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape == (3, 64, 64)
    np.testing.assert_array_equal(env.session.frame, np.full((64, 64, 3), 200, np.uint8))
    with pytest.raises(EnvError, match="reset options"):
        env.reset(options={"frame": image})


def test_bad_actions_are_refused_and_change_nothing(warp_world):
    env = WorldEnv(warp_world, termination_threshold=NEVER)
    env.reset(seed=0)
    before, index = env.session.frame.copy(), env.session.step_index
    bad = [
        {"buttons": np.array([0, 2, 0, 0, 0, 0]), "axes": np.array([0.0], np.float32)},  # a button at 2
        {"buttons": np.zeros(6, np.int8), "axes": np.array([40.0], np.float32)},  # turn beyond 15
        {"buttons": np.zeros(6, np.int8)},  # a key missing
        np.zeros(5, np.float32),  # a vector of the wrong size
        "forward",
    ]
    for action in bad:
        with pytest.raises(ActionError):
            env.step(action)
    assert env.session.step_index == index and np.array_equal(env.session.frame, before)
    env.step(env.spec_actions.make(forward=1, turn=-5))  # a flat vector in the spec's units plays


def test_world_without_heads_is_refused(tmp_path, latent_world):
    unet = tiny_world(tmp_path / "unet-tiny", baseline_preset)
    with pytest.raises(EnvError, match="U-Net baseline .* no reward or termination heads"):
        gym.make("neuralworld/World-v0", world=unet)
    env = WorldEnv(unet, require_heads=False, max_steps=2)  # asked for: reward 0, the step limit ends it
    env.reset(seed=0)
    assert env.step(env.action_space.sample())[1] == 0.0
    assert envs.heads_problem(neuralworld.load(unet)) and not envs.heads_problem(neuralworld.load(latent_world))


def test_discrete_actions(warp_world):
    env = DiscreteActions(WorldEnv(warp_world, termination_threshold=NEVER))
    check_env(env, skip_render_check=True)
    spec = env.spec_actions
    assert env.action_space.n == len(env.table) == 1 + 6 + 2 + 2
    np.testing.assert_array_equal(env.table[-1], spec.make(forward=1, turn=7.5))
    with pytest.raises(ActionError, match="outside Discrete"):
        env.step(99)


def test_combinations_as_typed():
    combos = envs.parse_combinations("noop; strafe_left ;forward,turn=-5")
    assert combos == [{}, {"strafe_left": 1.0}, {"forward": 1.0, "turn": -5.0}]
    table = envs.combination_table(doom_action_spec(2), combos)
    np.testing.assert_array_equal(table[2], doom_action_spec(2).make(forward=1, turn=-5))
    with pytest.raises(EnvError, match="'turn=left' is not NAME or NAME=NUMBER"):
        envs.parse_combinations("noop;turn=left")


def test_session_restarts_some_elements(warp_world):
    """``step(restart=mask)``: restarted elements hold their start frame, the others play
    exactly as without the restart."""
    world = neuralworld.load(warp_world)
    start = np.random.default_rng(0).integers(0, 256, (3, 2, 64, 64, 3), dtype=np.uint8)
    a = np.stack([world.spec.make(forward=1), world.spec.make(turn=5), world.spec.make(back=1)])
    plain, restarted = (world.start(start, backend="eager", seed=7) for _ in range(2))
    for s in (plain, restarted):
        s.step(a)
    mask = np.array([False, True, False])
    f_plain, f_restart = plain.step(a), restarted.step(a, restart=mask)
    np.testing.assert_array_equal(f_restart[[0, 2]], f_plain[[0, 2]])
    np.testing.assert_array_equal(f_restart[1], start[1, -1])
    np.testing.assert_array_equal(plain.step(a)[[0, 2]], restarted.step(a)[[0, 2]])
    with pytest.raises(SessionError, match="bool mask of shape"):
        restarted.step(a, restart=np.array([1, 0]))


def test_vector_env_autoresets_next_step(warp_world):
    B = 3
    venv = WorldVectorEnv(warp_world, B, max_steps=2, termination_threshold=NEVER)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, _ = venv.reset(seed=0)
    start = obs.copy()
    assert obs.shape == (B, 64, 64, 3) and venv.observation_space.contains(obs)
    trunc = [venv.step(venv.action_space.sample())[3] for _ in range(2)]
    assert not trunc[0].any() and trunc[1].all()
    obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())  # the autoreset step
    np.testing.assert_array_equal(obs, start)
    assert not reward.any() and not terminated.any() and not truncated.any() and not info["step"].any()
    with pytest.raises(ActionError):
        venv.step(np.zeros((B, 5), np.float32))
    discrete = DiscreteVectorActions(WorldVectorEnv(warp_world, B, termination_threshold=NEVER))
    discrete.reset(seed=0)
    assert discrete.step(np.array([0, 1, 10]))[0].shape == (B, 64, 64, 3)
    one = gym.make_vec("neuralworld/World-v0", num_envs=1, vectorization_mode="vector_entry_point", world=warp_world)
    assert one.reset(seed=0)[0].shape == (1, 64, 64, 3)


def test_vector_env_matches_single_envs(warp_world):
    """Element i of the batched env plays as a single env with the same actions (one step;
    the noise streams of B sessions and one batched session differ after that)."""
    venv = WorldVectorEnv(warp_world, 2, termination_threshold=NEVER)
    venv.reset(seed=0)
    actions = np.stack([doom_action_spec(2).make(forward=1), doom_action_spec(2).make(turn=-10)])
    batched = venv.step(actions)[0]
    for i in range(2):
        env = WorldEnv(warp_world, termination_threshold=NEVER)
        env.reset(seed=0)
        np.testing.assert_allclose(env.step(actions[i])[0].astype(int), batched[i].astype(int), atol=1)


def test_doom_twin(warp_world):
    pytest.importorskip("vizdoom")
    twin = gym.make("neuralworld/Doom-v0", env="doom/take_cover", world=warp_world, max_steps=5)
    world_env = WorldEnv(warp_world)
    assert twin.action_space == world_env.action_space and twin.observation_space == world_env.observation_space
    check_env(twin.unwrapped, skip_render_check=True)
    obs, _ = twin.reset(seed=0)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = twin.step(twin.unwrapped.spec_actions.make(strafe_left=1))
        total, done = total + reward, terminated or truncated
    assert obs.shape == (64, 64, 3) and total == 10.0  # 5 steps x 2 tics alive
    twin.close()
    with pytest.raises(EnvError, match="Doom scenario"):
        envs.DoomEnv("doom/nowhere")
