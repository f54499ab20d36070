import json
import shutil

import numpy as np
import pytest

from neuralworld.actions import ActionSpec, Axis
from neuralworld.data.store import Dataset, DatasetError, DatasetWriter, WindowSampler

SPEC = ActionSpec(buttons=("forward", "attack"), axes=(Axis("turn", -10, 10),), fps=10)
RES = (16, 24)


def write_episode(writer, n, offset=0, save=True, key=None):
    key = key if key is not None else writer.next_ids(1)[0]
    ep = writer.episode(key)
    for t in range(n):
        frame = np.full((*RES, 3), (offset + t) % 256, np.uint8)
        action = np.array([t % 2, 0, (t % 21) - 10], np.float32)
        ep.add_frame(frame, action, reward=float(t), terminated=(t == n - 1), pose=[t, -t, 0, 90], game_vars=[100])
    if save:
        ep.save(note="hi")
    return ep


@pytest.fixture
def store(tmp_path):
    return DatasetWriter.create(tmp_path / "d", SPEC, RES, source="test", game_variables=("health",))


def test_write_read_round_trip(store, tmp_path):
    write_episode(store, 70, offset=0)  # crosses chunk boundaries (32)
    write_episode(store, 5, offset=100)
    ds = Dataset(tmp_path / "d")
    assert ds.num_episodes == 2 and ds.num_frames == 75
    assert ds.spec == SPEC and ds.resolution == RES and ds.fps == 10
    assert ds.info.game_variables == ("health",)
    ep = ds.episode(0)
    data = ep.load()
    assert data["frames"].shape == (70, *RES, 3) and data["frames"].dtype == np.uint8
    assert data["frames"][69, 0, 0, 0] == 69
    assert data["actions"][3].tolist() == [1, 0, -7]
    assert data["rewards"][10] == 10 and data["terminated"].sum() == 1 and data["terminated"][-1]
    assert data["poses"][5].tolist() == [5, -5, 0, 90]
    assert ep.attrs["note"] == "hi" and ep.attrs["complete"] is True
    assert ds.episode(-1).load()["frames"][0, 0, 0, 0] == 100
    assert ds.nbytes_stored() > 0


def test_incomplete_episode_is_invisible_and_cleaned(store, tmp_path):
    write_episode(store, 40)
    write_episode(store, 50, save=False)  # a writer killed mid-episode leaves this
    ds = Dataset(tmp_path / "d")
    assert ds.num_episodes == 1 and ds.incomplete == ["000001"]
    again = DatasetWriter.open(tmp_path / "d")
    assert again.next_ids(2) == ["000002", "000003"]  # never reuse an id that was in flight
    assert again.remove_incomplete() == ["000001"]
    write_episode(again, 10)  # once its remains are gone, the id is free again
    ds = Dataset(tmp_path / "d")
    assert ds.ids == ["000000", "000001"] and ds.lengths == [40, 10] and ds.incomplete == []


def test_episode_folder_without_metadata_is_ignored(store, tmp_path):
    write_episode(store, 8)
    (tmp_path / "d" / "episodes" / "000001").mkdir()  # killed before its first write
    ds = Dataset(tmp_path / "d")
    assert ds.num_episodes == 1
    w = DatasetWriter.open(tmp_path / "d")
    assert w.next_ids(1) == ["000002"]
    assert "000001" in w.remove_incomplete()


def test_append_refuses_other_spec_or_resolution(store, tmp_path):
    write_episode(store, 3)
    other = ActionSpec(buttons=("forward",), fps=10)
    with pytest.raises(DatasetError, match="ActionSpec differs"):
        DatasetWriter.create(tmp_path / "d", other, RES, source="x", game_variables=("health",), exist_ok=True)
    with pytest.raises(DatasetError, match="resolution is 16x24, not 32x32"):
        DatasetWriter.create(tmp_path / "d", SPEC, (32, 32), source="x", game_variables=("health",), exist_ok=True)
    ok = DatasetWriter.create(tmp_path / "d", SPEC, RES, source="x", game_variables=("health",), exist_ok=True)
    assert ok.next_ids(1) == ["000001"]
    assert Dataset(tmp_path / "d").num_frames == 3  # nothing lost


def test_bad_frames_and_actions_are_refused(store):
    ep = store.episode("000000")
    with pytest.raises(DatasetError, match="frame must be uint8"):
        ep.add_frame(np.zeros((8, 8, 3), np.uint8), np.zeros(3))
    with pytest.raises(DatasetError, match="button 'forward' is 0.5"):
        ep.add_frame(np.zeros((*RES, 3), np.uint8), [0.5, 0, 0])
    with pytest.raises(DatasetError, match="pose needs 4 values"):
        ep.add_frame(np.zeros((*RES, 3), np.uint8), [0, 0, 0], pose=[1, 2])
    with pytest.raises(DatasetError, match="no frames"):
        ep.save()


@pytest.mark.parametrize("damage", ["missing", "file", "empty_dir", "not_ours", "garbage_json", "newer"])
def test_open_errors_are_specific(tmp_path, damage):
    p = tmp_path / "d"
    if damage == "file":
        p.write_text("hello")
    elif damage == "empty_dir":
        p.mkdir()
    elif damage in ("not_ours", "garbage_json", "newer"):
        DatasetWriter.create(p, SPEC, RES, source="t")
        meta = json.loads((p / "zarr.json").read_text())
        if damage == "not_ours":
            meta["attributes"] = {}
            (p / "zarr.json").write_text(json.dumps(meta))
        elif damage == "newer":
            meta["attributes"]["neuralworld"]["version"] = 99
            (p / "zarr.json").write_text(json.dumps(meta))
        else:
            (p / "zarr.json").write_text("{ this is not json")
    expected = {
        "missing": "no such dataset",
        "file": "is a file",
        "empty_dir": "no zarr.json",
        "not_ours": "not a neuralworld dataset",
        "garbage_json": "cannot open dataset",
        "newer": "upgrade",
    }[damage]
    with pytest.raises(DatasetError, match=expected):
        Dataset(p)


def test_create_refuses_non_empty_or_unwritable(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not an empty folder"):
        DatasetWriter.create(tmp_path / "full", SPEC, RES, source="t")
    assert (tmp_path / "full" / "x.txt").read_text() == "keep me"
    # /proc refuses new folders even to root, so this holds however the tests run
    with pytest.raises(DatasetError, match="cannot write to /proc/neuralworld-test"):
        DatasetWriter.create("/proc/neuralworld-test", SPEC, RES, source="t")


def test_create_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DatasetError, match="cannot write"):
        DatasetWriter.create(tmp_path / "afile" / "d", SPEC, RES, source="t")


def test_window_sampler(store, tmp_path):
    write_episode(store, 12, offset=0)
    write_episode(store, 3, offset=50)  # too short for a window of 5: skipped
    write_episode(store, 8, offset=100)
    ds = Dataset(tmp_path / "d")
    s = WindowSampler(ds, length=5, seed=1)
    assert s.num_windows == (12 - 4) + (8 - 4)
    assert s.window(0) == (0, 0) and s.window(7) == (0, 7) and s.window(8) == (2, 0)
    b = s.sample(16)
    assert b.frames.shape == (16, 5, *RES, 3) and b.actions.shape == (16, 5, 3)
    for i in range(16):
        # frames and actions come from the same consecutive steps
        first = b.frames[i, 0, 0, 0, 0]
        offset = 0 if b.episode[i] == 0 else 100
        assert first == offset + b.start[i]
        np.testing.assert_array_equal(b.frames[i, :, 0, 0, 0], first + np.arange(5))
        np.testing.assert_array_equal(b.poses[i, :, 0], b.start[i] + np.arange(5))
    with pytest.raises(DatasetError, match="no episode has 50 frames"):
        WindowSampler(ds, length=50)


def test_split_is_by_episode_and_stable(store, tmp_path):
    for _ in range(30):
        write_episode(store, 2)
    ds = Dataset(tmp_path / "d")
    train, held = ds.split(0.2)
    assert set(train).isdisjoint(held) and sorted(train + held) == list(range(30))
    assert 1 <= len(held) <= 15
    held_ids = {ds.ids[i] for i in held}
    for _ in range(10):
        write_episode(store, 2)
    ds2 = Dataset(tmp_path / "d")
    _, held2 = ds2.split(0.2)
    assert held_ids <= {ds2.ids[i] for i in held2}  # adding episodes never moves old ones


def test_split_with_two_episodes_has_both_sides(store, tmp_path):
    write_episode(store, 2)
    write_episode(store, 2)
    train, held = Dataset(tmp_path / "d").split(0.1)
    assert len(train) == 1 and len(held) == 1


def test_fsspec_url_store():
    # the same code writes to object storage: fsspec's in-memory filesystem stands in for s3://
    url = "memory://neuralworld-test/d"
    w = DatasetWriter.create(url, SPEC, RES, source="t", game_variables=("health",), exist_ok=True)
    write_episode(w, 40)
    w2 = DatasetWriter.create(url, SPEC, RES, source="t", game_variables=("health",), exist_ok=True)
    assert w2.next_ids(1) == ["000001"]
    write_episode(w2, 5, save=False)  # an unfinished episode stays invisible there too
    ds = Dataset(url)
    assert ds.num_episodes == 1 and ds.num_frames == 40 and ds.incomplete == ["000001"]
    assert WindowSampler(ds, 4).sample(2).frames.shape == (2, 4, *RES, 3)


def test_video_without_pyav_falls_back_to_opencv(tmp_path, monkeypatch):
    import builtins

    from neuralworld.data.view import write_video

    real_import = builtins.__import__

    def no_av(name, *a, **k):
        if name == "av":
            raise ImportError("no PyAV here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_av)
    frames = [np.full((32, 48, 3), i * 20, np.uint8) for i in range(10)]
    out = write_video(iter(frames), tmp_path / "v.mp4", fps=10)
    with pytest.raises(DatasetError, match="needs PyAV"):
        write_video(iter(frames), tmp_path / "v.gif", fps=10)
    monkeypatch.undo()
    import cv2

    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 10 and not list(tmp_path.glob(".*partial*"))
