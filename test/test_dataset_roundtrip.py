"""Episode dataset format: lossless round trip, atomic and non-overwriting writes, clear errors, info summary."""
import json

import numpy as np
import pytest

from gato_ros.dataset import Episode, EpisodeDataset, dataset_info, episode_paths, read_header, write_episode

META = {
    "joint_names": [f"j{i}" for i in range(7)],
    "joint_limits": [[-1.0, 1.0]] * 7,
    "control_rate_hz": 20.0,
    "image_size": 8,
    "source": "test",
}


def make_episode(rng, t=5, task="reach", success=True, seed=3, size=8, meta=META):
    obs = {
        "image": rng.integers(0, 256, size=(t, size, size, 3), dtype=np.uint8),
        "joint_pos": rng.normal(size=(t, 7)),
        "joint_vel": rng.normal(size=(t, 7)),
    }
    return Episode(obs, rng.normal(size=(t, 7)), f"do {task} {seed}", task, seed, success, dict(meta))


def test_round_trip_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    eps = [make_episode(rng, t=4 + i, task=["reach", "pick_place"][i % 2], success=i != 1, seed=i) for i in range(3)]
    for ep in eps:
        write_episode(tmp_path, ep)
    ds = EpisodeDataset(tmp_path)
    assert len(ds) == 3
    for ep, back in zip(eps, ds):
        for k in ("image", "joint_pos", "joint_vel"):
            np.testing.assert_array_equal(ep.observations[k], back.observations[k])
            assert back.observations[k].dtype == ep.observations[k].dtype
        np.testing.assert_array_equal(ep.actions, back.actions)
        assert (back.instruction, back.task, back.seed, back.success) == (ep.instruction, ep.task, ep.seed, ep.success)
        assert back.meta["joint_names"] == META["joint_names"] and back.meta["control_rate_hz"] == 20.0
        assert len(back) == len(ep)
    assert ds.joint_names == META["joint_names"] and ds.image_size == 8
    assert len(EpisodeDataset(tmp_path, tasks=["reach"])) == 2
    assert len(EpisodeDataset(tmp_path, successful_only=True)) == 2
    # No temporary files are left behind, and the files load without pickle.
    assert sorted(p.name for p in (tmp_path / "episodes").iterdir()) == [f"episode_{i:06d}.npz" for i in range(3)]
    with np.load(episode_paths(tmp_path)[0], allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["steps"] == 4


def test_info_summarises_without_loading_images(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(4):
        write_episode(tmp_path, make_episode(rng, t=10, task="reach" if i < 3 else "pick_place", success=i != 0))
    info = dataset_info(tmp_path)
    assert info["episodes"] == 4 and info["steps"] == 40 and info["fps"] == 20.0
    assert info["tasks"]["reach"] == {"episodes": 3, "steps": 30, "successes": 2, "success_rate": 2 / 3}
    assert info["tasks"]["pick_place"]["episodes"] == 1


def test_appending_never_overwrites(tmp_path):
    rng = np.random.default_rng(2)
    a = write_episode(tmp_path, make_episode(rng))
    b = write_episode(tmp_path, make_episode(rng))
    assert a != b and a.exists() and b.exists()
    # A second dataset object (another writer) appends after the existing ones.
    (tmp_path / "episodes" / "episode_000007.npz").write_bytes(a.read_bytes())
    c = write_episode(tmp_path, make_episode(rng))
    assert c.name == "episode_000008.npz"


def test_mismatched_episodes_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    write_episode(tmp_path, make_episode(rng))
    other = dict(META, joint_names=[f"k{i}" for i in range(7)])
    with pytest.raises(ValueError, match="joint_names"):
        write_episode(tmp_path, make_episode(rng, meta=other))
    with pytest.raises(ValueError, match="image_size"):
        write_episode(tmp_path, make_episode(rng, size=16))
    assert len(episode_paths(tmp_path)) == 1


@pytest.mark.parametrize("breakage,match", [
    (lambda e: e.observations.pop("joint_vel"), "joint_vel"),
    (lambda e: e.observations.__setitem__("joint_pos", np.zeros((2, 7))), "joint_pos"),
    (lambda e: e.observations.__setitem__("image", np.zeros((5, 8, 8, 3), np.float32)), "uint8"),
    (lambda e: e.actions.__setitem__((0, 0), np.inf), "non-finite"),
])
def test_invalid_episodes_name_the_field(tmp_path, breakage, match):
    ep = make_episode(np.random.default_rng(4))
    breakage(ep)
    with pytest.raises(ValueError, match=match):
        write_episode(tmp_path, ep)
    assert episode_paths(tmp_path) == []


def test_not_a_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="dataset.json is missing"):
        read_header(tmp_path)
    with pytest.raises(ValueError, match="dataset.json is missing"):
        EpisodeDataset(tmp_path)
