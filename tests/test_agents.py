"""neuralworld.agents and `neuralworld agent train|eval`: SB3 PPO in a world, scored in a world and the real twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from neuralworld.agents import AgentConfig, AgentError, load_agent, save_agent  # noqa: E402
from neuralworld.cli import main  # noqa: E402
from neuralworld.record.doom import doom_action_spec  # noqa: E402


@pytest.fixture(scope="module")
def warp_world(tmp_path_factory) -> Path:
    """A warp world of random weights in ViZDoom's controls (frame skip 2), 64x64."""
    import torch

    from neuralworld import bundle
    from neuralworld.model.warp import warp_preset

    torch.manual_seed(0)
    cfg = warp_preset("tiny", doom_action_spec(2))
    return bundle.save_bundle(tmp_path_factory.mktemp("agents") / "warp-tiny", cfg, *bundle.build_networks(cfg))


def untrained_agent(world: Path, out: Path) -> Path:
    """An agent folder as train_agent writes it, without learning (seconds)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from neuralworld.envs import DiscreteActions, WorldEnv, default_combinations

    env = DiscreteActions(WorldEnv(world, termination_threshold=1.0))
    model = PPO("CnnPolicy", DummyVecEnv([lambda: env]), n_steps=16, batch_size=16, seed=0, device="cpu")
    out.mkdir(parents=True)
    save_agent(model, out, env.spec_actions, default_combinations(env.spec_actions), world=str(world), resolution=(64, 64), config=AgentConfig())
    return out


def test_agent_folder_and_spec_check(warp_world, tmp_path):
    path = untrained_agent(warp_world, tmp_path / "agent")
    assert {p.name for p in path.iterdir()} >= {"agent.zip", "action_spec.json", "agent.json"}
    agent = load_agent(path, doom_action_spec(2))
    action = agent.act(np.zeros((64, 64, 3), np.uint8))
    assert action.shape == (7,) and agent.spec.validate(action) is not None
    other = doom_action_spec(4)  # the same controls at another frame rate
    with pytest.raises(AgentError, match=r"acts in 7 controls @ 17.5 fps.*takes 7 controls @ 8.75 fps"):
        load_agent(path, other, env="a world at 8.75 fps")
    with pytest.raises(AgentError, match="not an agent"):
        load_agent(tmp_path)


def test_agent_cli_refuses_bad_input(warp_world, tmp_path, capsys):
    from neuralworld.bundle import save_bundle, build_networks
    from neuralworld.model.unet import baseline_preset

    cfg = baseline_preset("tiny", doom_action_spec(2))
    unet = save_bundle(tmp_path / "unet", cfg, *build_networks(cfg))
    assert main(["agent", "train", str(unet), "--out", str(tmp_path / "a"), "--steps", "8"]) == 2
    assert "no reward or termination heads" in capsys.readouterr().err
    assert main(["agent", "eval", str(tmp_path / "nothing"), "--env", str(warp_world), "--episodes", "1"]) == 2
    assert "not an agent" in capsys.readouterr().err


def test_agent_train_and_eval_cli(warp_world, tmp_path, capsys):
    """PPO for a few hundred steps in a tiny world, then scored in the world and in real ViZDoom."""
    out = tmp_path / "agent"
    common = ["--max-steps", "20", "--threshold", "1.0"]
    assert main(["agent", "train", str(warp_world), "--out", str(out), "--steps", "256", "--envs", "2",
                 "--checkpoint-every", "128", "--quiet", *common]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["timesteps"] >= 256 and (out / "agent.zip").is_file() and list((out / "tensorboard").iterdir())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["agent_128_steps.zip", "agent_256_steps.zip"]
    assert main(["agent", "train", str(warp_world), "--out", str(out), "--steps", "256", "--quiet"]) == 2  # no overwrite
    capsys.readouterr()
    assert main(["agent", "eval", str(out), "--env", str(warp_world), "--episodes", "2", "--all", *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 2 and result["lengths"] == [20, 20]
    pytest.importorskip("vizdoom")
    for agent in (str(out), "random"):
        assert main(["agent", "eval", agent, "--env", "doom/take_cover", "--episodes", "1", "--max-steps", "30",
                     "--resolution", "64x64"]) == 0  # fmt: skip
        real = json.loads(capsys.readouterr().out)
        assert 0 < real["mean_return"] <= 60 and real["mean_length"] <= 30  # 2 tics a step while alive


def test_world_vec_env_resets_in_the_same_step(warp_world):
    """SB3's VecEnv over one batched session: an element that ends returns its start frame at
    once (the last frame in terminal_observation); the next call restarts it in the session,
    which pays nothing and shows the start frame again."""
    from neuralworld.envs.sb3 import WorldVecEnv

    venv = WorldVecEnv(warp_world, 3, max_steps=2, termination_threshold=1.0)  # never dies: truncates at 2
    venv.seed(5)
    venv.set_options({"frames": np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)})
    start = venv.reset()
    assert start.shape == (3, 64, 64, 3) and start.dtype == np.uint8
    obs, reward, done, infos = venv.step(np.array([0, 1, 2]))
    assert not done.any() and "terminal_observation" not in infos[0]
    obs, reward, done, infos = venv.step(np.array([0, 1, 2]))
    assert done.all() and all(i["TimeLimit.truncated"] for i in infos)
    assert all(i["terminal_observation"].shape == (64, 64, 3) for i in infos)
    np.testing.assert_array_equal(obs, start)  # the reset observation, in the same step
    obs, reward, done, infos = venv.step(np.array([3, 4, 5]))  # the restart call: start frame held, nothing paid
    np.testing.assert_array_equal(obs, start)
    assert not done.any() and (reward == 0).all()
    obs, reward, done, infos = venv.step(np.array([0, 0, 0]))
    assert not done.any() and not np.array_equal(obs, start)  # playing again
    dying = WorldVecEnv(warp_world, 2, termination_threshold=0.0)  # every frame is a death
    dying.reset()
    obs, reward, done, infos = dying.step(np.array([0, 0]))
    assert done.all() and not any(i["TimeLimit.truncated"] for i in infos)
    venv.close()
    dying.close()


def test_agent_train_in_the_real_game(tmp_path, capsys):
    """The baseline row: PPO in real ViZDoom with the same controls, resolution and frame skip."""
    pytest.importorskip("vizdoom")
    out = tmp_path / "real"
    assert main(["agent", "train", "doom/take_cover", "--out", str(out), "--steps", "128", "--envs", "2",
                 "--resolution", "64x64", "--max-steps", "40", "--checkpoint-every", "0", "--quiet"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["timesteps"] >= 128 and summary["world"] == "doom/take_cover"
    agent = load_agent(out, doom_action_spec(2))
    assert agent.resolution == (64, 64)
    assert main(["agent", "train", "doom/no_such_map", "--out", str(tmp_path / "x"), "--steps", "8", "--quiet"]) == 2
    assert "no_such_map" in capsys.readouterr().err


def test_autopilot_in_the_play_server(warp_world, tmp_path):
    """`neuralworld play WORLD --agent AGENT`: the page's autopilot toggle lets the agent play;
    every frame carries the heads' reward and termination for the HUD."""
    import asyncio
    import threading
    import time

    import uvicorn
    import websockets

    from neuralworld.play.protocol import unpack_frame
    from neuralworld.play.server import PlayConfig, PlayError, bind_socket, create_app

    agent = untrained_agent(warp_world, tmp_path / "agent")
    app = create_app(str(warp_world), PlayConfig(backend="eager", agent=str(agent), pace="max"))
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    async def client() -> list:
        async with websockets.connect(f"ws://127.0.0.1:{sock.getsockname()[1]}/ws") as ws:
            seen: list = []

            async def until(pred):
                while True:
                    raw = await asyncio.wait_for(ws.recv(), 20)
                    msg = unpack_frame(raw)[0] if isinstance(raw, bytes) else json.loads(raw)
                    seen.append(msg)
                    if pred(msg):
                        return msg

            await ws.send(json.dumps({"type": "autopilot", "on": True}))
            await until(lambda m: m.get("type") == "autopilot")
            await until(lambda m: m.get("type") == "frame" and m["autopilot"])
            await ws.send(json.dumps({"type": "autopilot", "on": "yes"}))
            await until(lambda m: m.get("type") == "error")
            return seen

    try:
        seen = asyncio.run(client())
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    frames = [m for m in seen if m.get("type") == "frame"]
    assert all(isinstance(m["reward"], float) and 0 <= m["termination"] <= 1 for m in frames)
    assert any(m["autopilot"] for m in frames)
    errors = [m["message"] for m in seen if m.get("type") == "error"]
    assert errors and "autopilot needs" in errors[0]
    other = tmp_path / "other"
    from neuralworld import bundle
    from neuralworld.model.warp import warp_preset

    cfg = warp_preset("tiny", doom_action_spec(4))
    bundle.save_bundle(other, cfg, *bundle.build_networks(cfg))
    with pytest.raises(PlayError, match="--agent: agent .* acts in 7 controls @ 17.5 fps"):
        create_app(str(other), PlayConfig(backend="eager", agent=str(agent)))
