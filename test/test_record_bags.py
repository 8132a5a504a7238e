"""Recorder and bag I/O with real rclpy over DDS (loopback) and real rosbag2 files."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gato_ros.bags import EPISODE_TOPIC, BagWriter, parse_episode_marker, read_bag

rclpy = pytest.importorskip("rclpy")
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

pytestmark = pytest.mark.ros


def _spin_until(executor, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.02)
        if predicate():
            return True
    return False


def _joint_state(i: int) -> JointState:
    return JointState(name=["shoulder_pan_joint"], position=[0.001 * i], velocity=[0.0], effort=[])


def test_bag_round_trip_mcap_and_sqlite(tmp_path):
    for storage in ("mcap", "sqlite3"):
        w = BagWriter(tmp_path / storage, storage=storage, custom_data={"gato_ros.git_commit": "abc"})
        cls = w.message_class("std_msgs/msg/String")
        for i in range(25):
            w.write_message("/x", "std_msgs/msg/String", 1_000 + i, cls(data=f"m{i}"))
        w.close()
        msgs, report = read_bag(tmp_path / storage)
        assert [m.msg.data for m in msgs] == [f"m{i}" for i in range(25)]
        assert report.storage == storage and not report.salvaged
        assert report.custom_data["gato_ros.git_commit"] == "abc"
    with pytest.raises(FileExistsError, match="never overwritten"):
        BagWriter(tmp_path / "mcap")


def test_unclosed_bag_is_salvaged_up_to_the_last_flushed_chunk(tmp_path):
    w = BagWriter(tmp_path / "b", chunk_interval_s=3600)
    cls = w.message_class("std_msgs/msg/String")
    for i in range(10):
        w.write_message("/x", "std_msgs/msg/String", 1_000 + i, cls(data=f"m{i}"))
    w.flush()
    mcap = tmp_path / "b" / "b.mcap"
    first_chunk_end = mcap.stat().st_size
    for i in range(10, 15):  # never flushed: lost, as after a SIGKILL
        w.write_message("/x", "std_msgs/msg/String", 1_000 + i, cls(data=f"m{i}"))
    msgs, report = read_bag(tmp_path / "b")
    assert report.salvaged and [m.msg.data for m in msgs] == [f"m{i}" for i in range(10)]
    # A torn final record (half-written chunk) is reported, and everything before it survives.
    w.flush()  # the second chunk reaches the file; tear it in the middle
    with open(mcap, "r+b") as f:
        f.truncate(first_chunk_end + 40)
    msgs, report = read_bag(tmp_path / "b")
    assert [m.msg.data for m in msgs] == [f"m{i}" for i in range(10)]
    assert report.lost_bytes > 0 and any("incomplete record" in n for n in report.notes)


def test_recorder_node_records_topics_and_episode_markers(tmp_path, ros_context):
    from rclpy.executors import SingleThreadedExecutor
    from std_srvs.srv import SetBool, Trigger

    from gato_ros.ros.recorder_node import RecorderNode

    bag = tmp_path / "session"
    recorder = RecorderNode(
        context=ros_context,
        parameter_overrides=[
            rclpy.parameter.Parameter("bag", value=str(bag)),
            rclpy.parameter.Parameter("topics", value=["/joint_states", "/gato_sim/instruction"]),
        ],
    )
    # Parameters mirror RecorderConfig (names and defaults).
    assert recorder.get_parameter("storage").value == "mcap"
    assert recorder.get_parameter("chunk_interval_s").value == 1.0
    assert recorder.config.topics == ["/joint_states", "/gato_sim/instruction"]
    talker = rclpy.create_node("talker", context=ros_context)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(recorder)
    ex.add_node(talker)
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    pub = talker.create_publisher(JointState, "/joint_states", reliable)
    instr = talker.create_publisher(String, "/gato_sim/instruction", reliable)
    assert _spin_until(ex, lambda: pub.get_subscription_count() > 0 and instr.get_subscription_count() > 0, 10)

    start = talker.create_client(Trigger, "/gato_recorder/start_episode")
    end = talker.create_client(SetBool, "/gato_recorder/end_episode")
    assert start.wait_for_service(timeout_sec=5) and end.wait_for_service(timeout_sec=5)
    fut = start.call_async(Trigger.Request())
    assert _spin_until(ex, fut.done, 5) and fut.result().success
    instr.publish(String(data="reach the red ball"))
    for i in range(50):
        pub.publish(_joint_state(i))
        ex.spin_once(timeout_sec=0.005)
    fut = end.call_async(SetBool.Request(data=True))
    assert _spin_until(ex, fut.done, 5) and fut.result().success
    assert _spin_until(ex, lambda: recorder.writer.counts.get("/joint_states", 0) == 50, 5)
    recorder.close()
    recorder.destroy_node()
    talker.destroy_node()

    msgs, report = read_bag(bag)
    assert not report.salvaged
    assert report.counts["/joint_states"] == 50
    positions = [m.msg.position[0] for m in msgs if m.topic == "/joint_states"]
    assert positions == pytest.approx([0.001 * i for i in range(50)])
    markers = [parse_episode_marker(m.msg.data) for m in msgs if m.topic == EPISODE_TOPIC]
    assert [(m["event"], m["episode"]) for m in markers] == [("start", 0), ("end", 0)]
    assert markers[1]["success"] is True
    assert [m.msg.data for m in msgs if m.topic == "/gato_sim/instruction"] == ["reach the red ball"]
    assert "gato_ros.git_commit" in report.custom_data


def test_recorder_rejects_unwritable_bag_path_and_stays_up(tmp_path, ros_context):
    from gato_ros.ros.recorder_node import RecorderNode

    recorder = RecorderNode(
        context=ros_context, parameter_overrides=[rclpy.parameter.Parameter("bag", value="/proc/not/writable/bag")]
    )
    assert recorder.writer is None and "cannot create bag" in recorder.error
    recorder.close()
    recorder.destroy_node()


def _run_recorder(bag: Path, chunk_interval: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gato_ros.ros.recorder_node", "--ros-args",
         "-p", f"bag:={bag}", "-p", "topics:=['/joint_states']", "-p", f"chunk_interval_s:={chunk_interval}"],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_recorder_process_stopped_by_signal_keeps_its_data(tmp_path, ros_context, sig):
    """SIGINT loses nothing; SIGKILL keeps everything up to the last flushed chunk (flushed when idle)."""
    bag = tmp_path / "bag"
    proc = _run_recorder(bag, chunk_interval=0.2)
    node = rclpy.create_node("talker", context=ros_context)
    try:
        pub = node.create_publisher(JointState, "/joint_states", QoSProfile(depth=200,
                                                                            reliability=ReliabilityPolicy.RELIABLE))
        deadline = time.monotonic() + 30
        while pub.get_subscription_count() == 0:
            assert time.monotonic() < deadline, "recorder never subscribed to /joint_states"
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        for i in range(200):
            pub.publish(_joint_state(i))
            time.sleep(0.002)
        time.sleep(1.5)  # > chunk interval: everything is on disk before the signal
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        node.destroy_node()
    msgs, report = read_bag(bag)
    positions = [m.msg.position[0] for m in msgs if m.topic == "/joint_states"]
    assert positions == pytest.approx([0.001 * i for i in range(200)]), out.decode()[-2000:]
    assert report.salvaged == (sig == signal.SIGKILL)
    if sig == signal.SIGINT:
        assert (bag / "metadata.yaml").exists()
