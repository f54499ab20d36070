import os
from pathlib import Path

# Tests share two cores with everything else: keep torch and BLAS to one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


import pytest  # noqa: E402

# The two lanes (README): `pytest -m "not slow"` is the fast lane, `pytest` the whole suite.
# A test is slow when it records with ViZDoom, trains, opens a browser or runs a real command
# for minutes; it is marked here, once, by what it uses, never test by test.
RECORDS_OR_TRAINS = {"tiny_world_run", "data32", "doom32"}
"""Fixtures that record a dataset with ViZDoom or train a world for real (directly or through
another fixture: a test that needs one of these, at any depth, is slow)."""
OPENS_A_BROWSER = {"browser", "page"}
"""Fixtures that start Chromium through Playwright."""
SLOW_TESTS = {
    "test_record.py": {  # `neuralworld record` and record() for real (the CLI's argument errors stay fast)
        "test_record_info_show", "test_explorer_covers_more_than_random",
        "test_kill_9_keeps_finished_episodes_and_appends", "test_append_with_other_resolution_is_refused",
        "test_an_agent_plays_the_recording_with_exploration",
    },
    "test_shipped_world.py": {"test_turn_left_on_the_play_page", "test_turn_left_on_the_exported_page"},  # Chromium
    "test_eval_bars.py": {"test_cli_bars_on_the_shipped_world"},  # records a 12k-frame map, then `neuralworld eval --report`
    "test_envs.py": {"test_doom_twin"},  # starts ViZDoom
    "test_agents.py": {"test_agent_train_and_eval_cli"},  # trains PPO, starts ViZDoom
    "test_rnn.py": {"test_controller_in_the_real_game"},  # starts ViZDoom
}
"""Tests that record, open a browser or run a real command for minutes with no fixture to
tell: by module, by function name."""


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    checked = set()
    for item in items:
        module = item.path.name
        named = SLOW_TESTS.get(module, set())
        if module in SLOW_TESTS and module not in checked:
            checked.add(module)
            gone = sorted(n for n in named if not hasattr(item.module, n))
            if gone:
                raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names tests that {module} no longer has: {gone}")
        uses = set(getattr(item, "fixturenames", ()))
        if uses & (RECORDS_OR_TRAINS | OPENS_A_BROWSER) or getattr(item, "originalname", item.name) in named:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def onnx_export_cache(tmp_path_factory):
    """ONNX exports go to this test session's own cache (onnx_export.cached_export), not the user's."""
    os.environ["NEURALWORLD_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["NEURALWORLD_CACHE"])


@pytest.fixture(scope="session")
def tiny_world_run(tmp_path_factory):
    """(dataset, run) of a tiny 32x32 world recorded and trained for real in seconds
    (needs ViZDoom): built once per test session, shared by every test file."""
    pytest.importorskip("vizdoom")
    from neuralworld.record.doom import RecordConfig, record
    from neuralworld.train import train, train_config

    root = tmp_path_factory.getbasetemp()
    data, run = root / "tiny_data", root / "tiny_run"
    if not (run / "world" / "config.json").is_file():
        record(RecordConfig(env="doom/freedoom_map01", episodes=3, workers=2, resolution=(32, 32), max_steps=40), data, progress=False)
        cfg = train_config(
            "tiny", clip_frames=4, precision="fp32", device="cpu", log_every=10,
            **{"autoencoder.steps": 20, "dynamics.steps": 20, "distill.steps": 10, "autoencoder.batch_size": 8, "dynamics.batch_size": 4},
        )  # fmt: skip
        train(data, run, cfg, progress=False)
    return data, run
