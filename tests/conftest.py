import os

# Tests share two cores with everything else: keep torch and BLAS to one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


import pytest  # noqa: E402


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
