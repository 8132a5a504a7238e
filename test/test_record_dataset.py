"""Bags -> episode datasets, on the committed tiny bag (a real MCAP recording of the sim) and synthetic bags."""
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gato_ros.bag_dataset import convert_bags, infer_task
from gato_ros.bags import BagWriter, episode_marker
from gato_ros.dataset import EpisodeDataset, dataset_info
from gato_ros.sim.env import JOINT_NAMES

from pathlib import Path

TINY_BAG = Path(__file__).parent / "data" / "tiny_bag"


def test_tiny_bag_converts_with_markers_encodings_and_shuffled_joints(tmp_path):
    report = convert_bags([TINY_BAG], tmp_path / "ds")
    assert report.episodes_written == 2 and report.discarded == 1  # episode 1 was discarded by its marker
    ds = EpisodeDataset(tmp_path / "ds")
    assert [ep.success for ep in ds] == [True, False]
    for ep in ds:
        assert ep.task == "reach" and ep.instruction.startswith("reach the")
        assert ep.observations["image"].shape[1:] == (64, 64, 3)
        assert ep.meta["joint_names"] == list(JOINT_NAMES)
        assert 10 <= len(ep) <= 12
    # The bag's joint states are shuffled with an extra joint; matched by name, the positions must follow the
    # commands (the expert moves toward its targets), and images must be RGB again (the bag has bgr8).
    ep = ds[0]
    err_before = np.abs(ep.actions[:-1] - ep.observations["joint_pos"][:-1]).sum()
    err_after = np.abs(ep.actions[:-1] - ep.observations["joint_pos"][1:]).sum()
    assert err_after < err_before
    info = dataset_info(tmp_path / "ds")
    assert info["source"] == "rosbag" and info["episodes"] == 2 and set(info) >= {"episodes", "steps", "tasks", "fps"}


def test_bag_and_collected_datasets_report_the_same_structure(tmp_path):
    convert_bags([TINY_BAG], tmp_path / "from_bag")
    out = subprocess.run(
        [sys.executable, "-m", "gato_ros.cli", "collect", "--task", "reach", "--episodes", "1", "--out",
         str(tmp_path / "collected"), "--seed", "11"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    a, b = dataset_info(tmp_path / "from_bag"), dataset_info(tmp_path / "collected")
    assert set(a) == set(b)
    assert set(a["tasks"]["reach"]) == set(b["tasks"]["reach"])
    assert a["joint_names"] == b["joint_names"] and a["image_size"] == b["image_size"] and a["fps"] == b["fps"]
    ea, eb = EpisodeDataset(tmp_path / "from_bag")[0], EpisodeDataset(tmp_path / "collected")[0]
    for key in ("image", "joint_pos", "joint_vel"):
        assert ea.observations[key].dtype == eb.observations[key].dtype
        assert ea.observations[key].shape[1:] == eb.observations[key].shape[1:]
    assert ea.actions.shape[1:] == eb.actions.shape[1:]


def _synthetic_bag(path, storage="mcap", with_commands=True, compressed_images=False, markers=False, gap=False,
                   names_in_burst=None, image_delay_ns=None):
    """Two bursts of 1 s at 20 Hz; joint i moves linearly; the command is the next position.
    names_in_burst: {burst: joint names} replaces the joint names of that burst's /joint_states.
    image_delay_ns: images carry their real header stamp and reach the bag this much later (a busy recorder)."""
    w = BagWriter(path, storage=storage)
    c = w.message_class
    hdr = c("std_msgs/msg/Header")(stamp=c("builtin_interfaces/msg/Time")(sec=0, nanosec=0), frame_id="")
    t0 = 10**9
    if markers:
        w.write_message("/gato/episode", "std_msgs/msg/String", t0 - 1, c("std_msgs/msg/String")(
            data=episode_marker("start", 0)))
    w.write_message("/gato_sim/instruction", "std_msgs/msg/String", t0 - 1, c("std_msgs/msg/String")(
        data="put the red cube in the blue bowl"))
    for burst in range(2):
        for k in range(20):
            t = t0 + burst * (3 * 10**9 if gap else 10**9) + k * 50_000_000
            q = np.full(7, 0.01 * (k + 20 * burst))
            names = list((names_in_burst or {}).get(burst, JOINT_NAMES))
            w.write_message("/joint_states", "sensor_msgs/msg/JointState", t, c("sensor_msgs/msg/JointState")(
                header=hdr, name=names, position=q[:len(names)], velocity=np.zeros(len(names)), effort=np.zeros(0)))
            rgb = np.full((48, 64, 3), (k * 10) % 255, np.uint8)
            if compressed_images:
                from PIL import Image as PILImage

                buf = io.BytesIO()
                PILImage.fromarray(rgb).save(buf, format="PNG")
                w.write_message("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage", t,
                                c("sensor_msgs/msg/CompressedImage")(header=hdr, format="png",
                                                                     data=np.frombuffer(buf.getvalue(), np.uint8)))
            else:
                stamped = hdr
                if image_delay_ns is not None:
                    stamped = c("std_msgs/msg/Header")(stamp=c("builtin_interfaces/msg/Time")(
                        sec=t // 10**9, nanosec=t % 10**9), frame_id="camera")
                w.write_message("/camera/image_raw", "sensor_msgs/msg/Image", t + (image_delay_ns or 0),
                                c("sensor_msgs/msg/Image")(header=stamped, height=48, width=64, encoding="mono8",
                                                           is_bigendian=0, step=64, data=rgb[:, :, 0].reshape(-1)))
            if with_commands:
                w.write_message("/position_controller/commands", "std_msgs/msg/Float64MultiArray", t + 5_000_000,
                                c("std_msgs/msg/Float64MultiArray")(
                                    layout=c("std_msgs/msg/MultiArrayLayout")(dim=[], data_offset=0), data=q + 0.01))
    if markers:
        w.write_message("/gato/episode", "std_msgs/msg/String", t0 + 3 * 10**9, c("std_msgs/msg/String")(
            data=episode_marker("end", 0, success=True)))
    w.close()
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_gaps_split_episodes_and_commands_label_ticks(tmp_path, storage):
    bag = _synthetic_bag(tmp_path / "bag", storage=storage, gap=True)
    report = convert_bags([bag], tmp_path / "ds", image_size=32)
    assert report.episodes_written == 2
    ds = EpisodeDataset(tmp_path / "ds")
    for ep in ds:
        assert ep.task == "pick_place" and len(ep) == 20 and not ep.success
        np.testing.assert_allclose(ep.actions, ep.observations["joint_pos"] + 0.01)  # the command answering tick k
        assert ep.observations["image"].shape == (20, 32, 32, 3)  # mono8 48x64 -> RGB 32x32


def test_command_labels_the_frame_it_answers_whatever_the_tick_phase(tmp_path):
    """Ticks start at the start marker, 1 ns before the first frame: each tick sees frame k-1 while frame k's
    command already lies within one period. The label must still be the command sent after frame k-1."""
    bag = _synthetic_bag(tmp_path / "bag", markers=True)
    convert_bags([bag], tmp_path / "ds")
    ep = EpisodeDataset(tmp_path / "ds")[0]
    assert len(ep) >= 38
    np.testing.assert_allclose(ep.actions, ep.observations["joint_pos"] + 0.01)


def test_images_are_placed_at_their_header_stamps(tmp_path):
    """The recorder wrote each image 8 ms late, after the joint state and even the command that answered it (5 ms):
    by receive time each tick would pair frame k's joints with frame k-1's image. Header stamps keep frames whole."""
    bag = _synthetic_bag(tmp_path / "bag", image_delay_ns=8_000_000)
    convert_bags([bag], tmp_path / "ds")
    ep = EpisodeDataset(tmp_path / "ds")[0]
    assert len(ep) >= 38
    np.testing.assert_allclose(ep.actions, ep.observations["joint_pos"] + 0.01)
    # Each step's image is the frame of its joint state (frame k: joints at 0.01 k, image grey level 10 k).
    frame = np.round(ep.observations["joint_pos"][:, 0] / 0.01).astype(int)
    first = frame < 20
    np.testing.assert_allclose(ep.observations["image"][first].mean(axis=(1, 2, 3)), 10 * frame[first], atol=1)


def test_next_state_actions_and_compressed_images(tmp_path):
    bag = _synthetic_bag(tmp_path / "bag", with_commands=False, compressed_images=True, markers=True)
    with pytest.raises(ValueError, match=r"missing /position_controller/commands.*next.state"):
        convert_bags([bag], tmp_path / "ds")
    report = convert_bags([bag], tmp_path / "ds", actions="next_state")
    assert report.episodes_written == 1
    ep = EpisodeDataset(tmp_path / "ds")[0]
    assert ep.success  # from the end marker
    assert 39 <= len(ep) <= 42  # 40 joint states; ticks with sensors older than two periods are skipped
    np.testing.assert_allclose(ep.actions[:39], ep.observations["joint_pos"][:39] + 0.01, atol=1e-9)
    assert ep.observations["image"][3].mean() == pytest.approx(30, abs=1)


def test_bag_without_needed_topics_lists_what_is_missing(tmp_path):
    w = BagWriter(tmp_path / "bag")
    w.write_message("/chatter", "std_msgs/msg/String", 1, w.message_class("std_msgs/msg/String")(data="x"))
    w.close()
    with pytest.raises(ValueError) as err:
        convert_bags([tmp_path / "bag"], tmp_path / "ds")
    text = str(err.value)
    assert "/camera/image_raw" in text and "/joint_states" in text and "/chatter (1)" in text


def test_a_bad_bag_after_good_ones_keeps_their_episodes_and_says_so(tmp_path):
    w = BagWriter(tmp_path / "empty")
    w.write_message("/chatter", "std_msgs/msg/String", 1, w.message_class("std_msgs/msg/String")(data="x"))
    w.close()
    with pytest.raises(ValueError, match=r"missing .*/joint_states.*The 2 episodes converted from the bags before"):
        convert_bags([TINY_BAG, tmp_path / "empty"], tmp_path / "ds")
    assert len(EpisodeDataset(tmp_path / "ds")) == 2


def test_mismatched_joint_names_are_reported(tmp_path):
    bag = _synthetic_bag(tmp_path / "bag")
    with pytest.raises(ValueError, match="missing.*elbow_2"):
        convert_bags([bag], tmp_path / "ds", joint_names=list(JOINT_NAMES[:6]) + ["elbow_2"],
                     joint_limits=np.zeros((7, 2)))


def test_joint_states_lacking_a_joint_are_reported_and_the_rest_kept(tmp_path):
    """The second burst's /joint_states lack elbow_joint: the first burst still becomes an episode and the report
    says how many joint states were unusable and why."""
    short = [n for n in JOINT_NAMES if n != "elbow_joint"]
    bag = _synthetic_bag(tmp_path / "bag", gap=True, names_in_burst={1: short})
    report = convert_bags([bag], tmp_path / "ds")
    assert report.episodes_written == 1 and report.steps_written == 20
    assert any("20 of 40 joint states unusable" in n and "elbow_joint" in n for n in report.notes), report.notes
    np.testing.assert_allclose(EpisodeDataset(tmp_path / "ds")[0].actions[:, 0], 0.01 * np.arange(20) + 0.01)


def test_truncated_bag_keeps_its_complete_part(tmp_path):
    bag = tmp_path / "bag"
    shutil.copytree(TINY_BAG, bag)
    (bag / "metadata.yaml").unlink()  # as after SIGKILL
    mcap = bag / "tiny_bag.mcap"
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.7)])
    report = convert_bags([bag], tmp_path / "ds")
    assert report.episodes_written >= 1
    assert any("salvaged" in n or "incomplete" in n for n in report.notes)


def test_cli_from_bags_json(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "gato_ros.cli", "dataset", "from-bags", str(TINY_BAG), "--out", str(tmp_path / "ds"),
         "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["episodes_written"] == 2 and report["discarded"] == 1


def test_cli_from_bags_takes_joints_size_and_rate_from_a_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    limits = [[-6.0, 6.0]] * 6 + [[0.0, 0.0425]]
    (bundle / "gato.json").write_text(json.dumps({"joint_names": list(JOINT_NAMES), "joint_limits": limits,
                                                  "image_size": [32, 32], "control_rate_hz": 20.0}))
    out = subprocess.run(
        [sys.executable, "-m", "gato_ros.cli", "dataset", "from-bags", str(TINY_BAG), "--out", str(tmp_path / "ds"),
         "--bundle", str(bundle), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ep = EpisodeDataset(tmp_path / "ds")[0]
    assert ep.observations["image"].shape[1:] == (32, 32, 3) and np.asarray(ep.meta["joint_limits"]).tolist() == limits


def test_infer_task():
    assert infer_task("reach the red ball") == "reach"
    assert infer_task("Put the red cube in the blue bowl") == "pick_place"
    assert infer_task("point above the blue ball") == "point_above"
    assert infer_task("wave") == "custom"
