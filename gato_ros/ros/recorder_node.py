"""Recorder node `gato_recorder`: ROS 2 topics -> rosbag2 (MCAP) with episode markers, off the control path.

    publishers (sim / robot driver / policy node)
        │  raw CDR bytes (no deserialisation), QoS matched to the publishers
        ▼
    subscription callbacks ──put──> bounded queue ──> writer thread ──> BagWriter (.mcap; chunk flushed every 1 s)
                                                                              ▲
    ~/start_episode (Trigger), ~/end_episode (SetBool: success), ──markers────┘ also published on /gato/episode
    ~/discard_episode (Trigger)
    /diagnostics (1 Hz): state, bag, messages written per topic, queue depth, dropped, last error

Why this shape: the recorder is its own node (its own process under the launch file), takes messages as raw bytes,
and does all disk I/O on a writer thread, so recording never blocks the policy node's control loop. A full queue
drops (and counts, and reports) rather than blocking the executor. A disk error stops recording with a clear error
in the log and /diagnostics; the node stays up and control is untouched. SIGINT drains the queue and closes the
bag properly (metadata.yaml, MCAP summary); SIGKILL loses at most the last `chunk_interval_s` (see gato_ros.bags).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gato_ros.bags import EPISODE_TOPIC, TOPIC_TYPES, BagWriter, episode_marker
from gato_ros.dataset import git_commit
from gato_ros.ros.common import declare_config, run_node


@dataclass
class RecorderConfig:
    """Parameters of the recorder node (ROS parameters of the same names)."""

    bag: str = ""  # bag directory to create; empty: bags/gato_<UTC time> under the working directory
    topics: list[str] = field(default_factory=lambda: [t for t in TOPIC_TYPES if t != EPISODE_TOPIC])
    storage: str = "mcap"  # mcap | sqlite3
    chunk_interval_s: float = 1.0  # how much a SIGKILL can lose at most (mcap)
    max_queue: int = 20000  # messages buffered between the callbacks and the writer thread
    bundle: str = ""  # model bundle in use, recorded as provenance
    start_episode_on_start: bool = False  # open episode 0 as soon as recording starts

    def __post_init__(self) -> None:
        if self.storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage={self.storage!r}: expected 'mcap' or 'sqlite3'")
        if self.chunk_interval_s < 0:
            raise ValueError(f"chunk_interval_s={self.chunk_interval_s}: must be >= 0")
        if self.max_queue < 1:
            raise ValueError(f"max_queue={self.max_queue}: must be >= 1")
        bad = [t for t in self.topics if not t.startswith("/")]
        if bad:
            raise ValueError(f"topics {bad}: use absolute topic names (starting with '/')")
        if not self.bag:
            self.bag = str(Path("bags") / time.strftime("gato_%Y%m%d_%H%M%S", time.gmtime()))


def _message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def main(args: list[str] | None = None) -> int:
    """Console script `gato_recorder_node`; the bag is closed when the node is destroyed (SIGINT included)."""
    return run_node(lambda: _node_class()(), "gato_recorder", args)


def _node_class():
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String
    from std_srvs.srv import SetBool, Trigger

    class _RecorderNode(Node):
        def __init__(self, node_name: str = "gato_recorder", **kwargs):
            super().__init__(node_name, **kwargs)
            self.config = declare_config(self, RecorderConfig)  # ROS parameters mirror the dataclass
            self._queue: queue.Queue = queue.Queue(maxsize=self.config.max_queue)
            self._subscribed: dict[str, str] = {}
            self._subs = []
            self.dropped = 0
            self.error = ""
            self.episode = -1
            self.episode_open = False
            self._stop = threading.Event()
            self.writer: BagWriter | None = None
            try:
                self.writer = BagWriter(
                    self.config.bag,
                    storage=self.config.storage,
                    chunk_interval_s=self.config.chunk_interval_s,
                    custom_data={
                        "gato_ros.git_commit": git_commit() or "unknown",
                        "gato_ros.bundle": self.config.bundle,
                        "gato_ros.recorder_parameters": json.dumps(dataclasses.asdict(self.config)),
                        "gato_ros.started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "gato_ros.argv": " ".join(sys.argv),
                    },
                )
                self.get_logger().info(f"recording {len(self.config.topics)} topics to {self.config.bag}")
            except (OSError, ValueError) as err:
                self._fail(f"cannot create bag {self.config.bag!r}: {err}; recording is off, control is unaffected")
            self._thread = threading.Thread(target=self._write_loop, name="bag_writer", daemon=True)
            self._thread.start()

            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self._marker_pub = self.create_publisher(String, EPISODE_TOPIC, latched)
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_service(Trigger, "~/start_episode", self._on_start)
            self.create_service(SetBool, "~/end_episode", self._on_end)
            self.create_service(Trigger, "~/discard_episode", self._on_discard)
            self.create_timer(0.5, self._discover)
            self.create_timer(1.0, self._publish_diagnostics)
            self._diag_types = (DiagnosticArray, DiagnosticStatus, KeyValue)
            self._string = String
            self._discover()
            if self.config.start_episode_on_start:
                self._mark("start")

        # ------------------------------------------------------------------ subscriptions
        def _discover(self) -> None:
            """Subscribe to each wanted topic once it has a publisher, with its type and QoS."""
            if self.writer is None or self.error:
                return
            advertised = dict(self.get_topic_names_and_types())
            for topic in self.config.topics:
                if topic in self._subscribed or topic not in advertised:
                    continue
                types = advertised[topic]
                msgtype = TOPIC_TYPES.get(topic, types[0])
                if msgtype not in types:
                    msgtype = types[0]
                try:
                    cls = _message_class(msgtype)
                except (ImportError, AttributeError, ValueError) as err:
                    self.get_logger().error(f"not recording {topic}: cannot import {msgtype} ({err})")
                    self._subscribed[topic] = msgtype
                    continue
                self._subs.append(
                    self.create_subscription(cls, topic, self._callback(topic, msgtype), self._qos_for(topic),
                                             raw=True)
                )
                self._subscribed[topic] = msgtype
                self.get_logger().info(f"recording {topic} [{msgtype}]")

        def _qos_for(self, topic: str) -> QoSProfile:
            """Match the publishers like `ros2 bag record`: reliable/transient-local only if every publisher is."""
            infos = self.get_publishers_info_by_topic(topic)
            reliable = bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
            latched = bool(infos) and all(
                i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos
            )
            return QoSProfile(
                depth=100,
                reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
            )

        def _callback(self, topic: str, msgtype: str):
            def on_message(data: bytes) -> None:
                self._enqueue(topic, msgtype, self.get_clock().now().nanoseconds, data)

            return on_message

        def _enqueue(self, topic: str, msgtype: str, stamp_ns: int, data: bytes) -> None:
            if self.writer is None or self.error:
                return
            try:
                self._queue.put_nowait((topic, msgtype, stamp_ns, data))
            except queue.Full:
                self.dropped += 1
                self.get_logger().warning(
                    f"recorder queue full ({self.config.max_queue}): dropped {self.dropped} messages so far "
                    "(the disk is too slow)", throttle_duration_sec=2.0)

        # ------------------------------------------------------------------ writer thread
        def _write_loop(self) -> None:
            while True:
                try:
                    item = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    if self.writer is not None and not self.error and self.config.chunk_interval_s > 0:
                        try:
                            self.writer.flush()
                        except OSError as err:
                            self._fail(f"writing {self.config.bag} failed: {err}; recording stopped")
                    continue
                if self.writer is None or self.error:
                    continue
                try:
                    self.writer.write(*item)
                except OSError as err:  # disk full, path gone, permissions
                    self._fail(f"writing {self.config.bag} failed: {err}; recording stopped, control continues")

        def _fail(self, message: str) -> None:
            self.error = message
            self.get_logger().error(message)

        # ------------------------------------------------------------------ episodes
        def _mark(self, event: str, **extra) -> None:
            if event == "start":
                self.episode += 1
            text = episode_marker(event, self.episode, **extra)
            msg = self._string(data=text)
            try:
                self._marker_pub.publish(msg)
            except Exception as err:  # noqa: BLE001 - context already shut down (SIGINT): the bag still gets it
                self.get_logger().debug(f"episode marker not published: {err}")
            self._enqueue(EPISODE_TOPIC, "std_msgs/msg/String", self.get_clock().now().nanoseconds,
                          serialize_message(msg))
            self.episode_open = event == "start"

        def _on_start(self, request, response):
            if self.episode_open:
                self._mark("end", success=False, reason="a new episode started before this one ended")
            self._mark("start")
            response.success, response.message = not self.error, f"episode {self.episode} started" + (
                f" but recording is off: {self.error}" if self.error else "")
            return response

        def _on_end(self, request, response):
            if not self.episode_open:
                response.success, response.message = False, "no episode is open; call ~/start_episode first"
                return response
            self._mark("end", success=bool(request.data))
            response.success, response.message = True, f"episode {self.episode} ended (success={bool(request.data)})"
            return response

        def _on_discard(self, request, response):
            if not self.episode_open:
                response.success, response.message = False, "no episode is open"
                return response
            self._mark("discard")
            response.success, response.message = True, f"episode {self.episode} discarded"
            return response

        # ------------------------------------------------------------------ diagnostics and shutdown
        def _publish_diagnostics(self) -> None:
            DiagnosticArray, DiagnosticStatus, KeyValue = self._diag_types
            counts = dict(self.writer.counts) if self.writer is not None else {}
            status = DiagnosticStatus(
                level=DiagnosticStatus.ERROR if self.error else (
                    DiagnosticStatus.WARN if self.dropped else DiagnosticStatus.OK),
                name=f"{self.get_name()}: recorder",
                message=self.error or f"recording to {self.config.bag}",
                hardware_id=self.config.bag,
            )
            values = {
                "state": "error" if self.error else "recording",
                "bag": self.config.bag,
                "episode": str(self.episode),
                "episode_open": str(self.episode_open).lower(),
                "queue_depth": str(self._queue.qsize()),
                "dropped": str(self.dropped),
                "messages_written": json.dumps(counts, sort_keys=True),
                "last_error": self.error,
            }
            status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
            msg = DiagnosticArray(status=[status])
            msg.header.stamp = self.get_clock().now().to_msg()
            self._diag_pub.publish(msg)

        def destroy_node(self) -> None:
            self.close()
            super().destroy_node()

        def close(self) -> None:
            """Drain the queue and close the bag (metadata.yaml, MCAP summary). Idempotent."""
            if self.episode_open and not self.error:
                self._mark("end", success=False, reason="recorder shut down")
            self._stop.set()
            self._thread.join(timeout=30.0)
            if self.writer is not None and not self.writer.closed:
                try:
                    self.writer.close()
                    self.get_logger().info(f"closed {self.config.bag}: {json.dumps(self.writer.counts)}")
                except OSError as err:
                    self._fail(f"closing {self.config.bag} failed: {err}")

    return _RecorderNode


def __getattr__(name: str):
    # `RecorderNode` is built lazily so that importing this module (e.g. for RecorderConfig) needs no rclpy.
    if name == "RecorderNode":
        cls = _node_class()
        globals()["RecorderNode"] = cls
        return cls
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
