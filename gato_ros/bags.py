"""rosbag2 files for gato_ros: a crash-tolerant MCAP writer and a reader that salvages truncated bags.

No rclpy here (the recorder node is a thin adapter over `BagWriter`); the `rosbags` library does the format work,
so bags are readable by `ros2 bag` and Foxglove.

Crash tolerance. rosbags' MCAP writer buffers messages into ~1 MiB chunks and writes `metadata.yaml` and the MCAP
summary only on close. A recorder killed with SIGKILL therefore leaves an `.mcap` without footer and no
`metadata.yaml`, which standard readers refuse. `BagWriter` closes a chunk and flushes it to the OS every
`chunk_interval_s` (default 1 s), so a kill loses at most that much; `read_bag` falls back to a sequential scan of
the MCAP records that stops at the first incomplete one ("everything up to the last complete chunk").

Message layout in a bag written by gato_ros (`TOPIC_TYPES` are the defaults the recorder subscribes to):

| topic | type | notes |
|---|---|---|
| /camera/image_raw | sensor_msgs/msg/Image | any of rgb8, bgr8, rgba8, bgra8, mono8 |
| /joint_states | sensor_msgs/msg/JointState | matched by name when converting |
| /position_controller/commands | std_msgs/msg/Float64MultiArray | the actions (position_array interface) |
| /arm_controller/joint_trajectory | trajectory_msgs/msg/JointTrajectory | the actions (joint_trajectory interface) |
| /gato_sim/instruction, /gato_policy/instruction | std_msgs/msg/String | task text |
| /gato_sim/success | std_msgs/msg/Bool | |
| /gato/episode | std_msgs/msg/String | JSON episode markers: {"event": "start"/"end"/"discard", "episode": k, ...} |
"""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

EPISODE_TOPIC = "/gato/episode"

TOPIC_TYPES: dict[str, str] = {
    "/camera/image_raw": "sensor_msgs/msg/Image",
    "/joint_states": "sensor_msgs/msg/JointState",
    "/position_controller/commands": "std_msgs/msg/Float64MultiArray",
    "/arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/gato_sim/instruction": "std_msgs/msg/String",
    "/gato_policy/instruction": "std_msgs/msg/String",
    "/gato_sim/success": "std_msgs/msg/Bool",
    EPISODE_TOPIC: "std_msgs/msg/String",
}

_MCAP_MAGIC = b"\x89MCAP0\r\n"


def typestore():
    """The rosbags type store for our message types (Jazzy definitions; the types we use are unchanged in Kilted)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


class BagWriter:
    """Writes serialized (CDR) messages to a rosbag2 directory, flushing a complete MCAP chunk every interval.

    `write(topic, msgtype, timestamp_ns, cdr_bytes)`; connections are added on first use. `close()` writes the MCAP
    summary and `metadata.yaml` (with `custom_data`: provenance such as git commit, bundle, parameters).
    """

    def __init__(
        self,
        path: str | Path,
        storage: str = "mcap",
        chunk_interval_s: float = 1.0,
        custom_data: dict[str, str] | None = None,
        compression: str = "none",
    ):
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage={storage!r}: expected one of {sorted(plugins)}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"bag path {self.path} exists already; choose a new path (bags are never overwritten)")
        if not self.path.parent.exists():
            raise FileNotFoundError(f"bag parent directory {self.path.parent} does not exist")
        self.storage = storage
        self.chunk_interval_s = float(chunk_interval_s)
        self._typestore = typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=plugins[storage])
        if compression == "zstd":  # per-chunk zstd in MCAP (what `ros2 bag record --compression-mode storage` does)
            if storage != "mcap":
                raise ValueError("compression='zstd' needs storage='mcap'")
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        elif compression != "none":
            raise ValueError(f"compression={compression!r}: expected 'none' or 'zstd'")
        for key, value in (custom_data or {}).items():
            self._writer.set_custom_data(str(key), str(value))
        self._writer.open()
        self._connections: dict[tuple[str, str], Any] = {}
        self._last_flush = time.monotonic()
        self.counts: dict[str, int] = {}
        self.closed = False

    def write(self, topic: str, msgtype: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        key = (topic, msgtype)
        conn = self._connections.get(key)
        if conn is None:
            if msgtype not in self._typestore.types:
                raise ValueError(f"{topic}: message type {msgtype!r} is unknown to the rosbags type store")
            conn = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
            self._connections[key] = conn
        self._writer.write(conn, int(timestamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if self.storage == "mcap" and time.monotonic() - self._last_flush >= self.chunk_interval_s:
            self.flush()

    def write_message(self, topic: str, msgtype: str, timestamp_ns: int, msg: Any) -> None:
        """Serialize a rosbags message object (e.g. from `typestore().types[...]`) and write it."""
        self.write(topic, msgtype, timestamp_ns, self._typestore.serialize_cdr(msg, msgtype))

    def message_class(self, msgtype: str):
        return self._typestore.types[msgtype]

    def flush(self) -> None:
        """Close the pending MCAP chunk and push it to the OS, so a killed process keeps it."""
        storage = self._writer.storage
        if self.storage == "mcap" and storage is not None:
            if storage.chunk.bio.tell():
                storage.close_chunk()
            storage.bio.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()


# ---------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    timestamp_ns: int
    msg: Any  # deserialized rosbags message object


@dataclass
class BagReport:
    """What `read_bag` found: which topics, how many messages, and whether the bag had to be salvaged."""

    path: str
    storage: str
    salvaged: bool = False
    lost_bytes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    custom_data: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def read_bag(path: str | Path, topics: set[str] | None = None) -> tuple[list[BagMessage], BagReport]:
    """All messages of a rosbag2 directory (MCAP or SQLite3) or a bare .mcap file, in timestamp order.

    A bag whose writer was killed (no metadata.yaml, no MCAP footer) is salvaged by a sequential scan: every
    complete chunk is read, the report says how many trailing bytes were lost. Unknown message types are skipped
    with a note (never silently).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    store = typestore()
    report = BagReport(path=str(path), storage="mcap")
    raw: list[tuple[str, str, int, bytes]] = []
    try:
        raw = _read_with_rosbags(path, topics, report)
    except Exception as err:  # noqa: BLE001 - any reader failure falls back to the salvage scan
        mcaps = [path] if path.suffix == ".mcap" else sorted(path.glob("*.mcap"))
        if not mcaps:
            raise ValueError(f"bag {path}: cannot be read ({err}) and has no .mcap file to salvage") from err
        report.salvaged = True
        report.notes.append(f"standard reader failed ({err}); salvaged by scanning {', '.join(m.name for m in mcaps)}")
        for mcap in mcaps:
            raw.extend(_salvage_mcap(mcap, topics, report))
    raw.sort(key=lambda r: r[2])
    out: list[BagMessage] = []
    skipped: dict[str, int] = {}
    for topic, msgtype, stamp, data in raw:
        if msgtype not in store.types:
            skipped[msgtype] = skipped.get(msgtype, 0) + 1
            continue
        out.append(BagMessage(topic, msgtype, stamp, store.deserialize_cdr(data, msgtype)))
        report.counts[topic] = report.counts.get(topic, 0) + 1
        report.types[topic] = msgtype
    for msgtype, n in skipped.items():
        report.notes.append(f"skipped {n} messages of unknown type {msgtype}")
    return out, report


def _read_with_rosbags(path: Path, topics: set[str] | None, report: BagReport) -> list[tuple[str, str, int, bytes]]:
    from rosbags.rosbag2 import Reader

    if path.suffix == ".mcap":
        raise ValueError("a bare .mcap file has no metadata.yaml")
    import yaml

    out = []
    with Reader(path) as reader:
        meta = yaml.safe_load((path / "metadata.yaml").read_text()).get("rosbag2_bagfile_information", {})
        report.storage = str(meta.get("storage_identifier", "mcap"))
        report.custom_data = {str(k): str(v) for k, v in (meta.get("custom_data") or {}).items()}
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, stamp, data in reader.messages(connections=conns):
            out.append((conn.topic, conn.msgtype, stamp, bytes(data)))
    return out


def _salvage_mcap(path: Path, topics: set[str] | None, report: BagReport) -> list[tuple[str, str, int, bytes]]:
    """Sequential scan of MCAP records (spec: mcap.dev/spec), stopping at the first truncated record."""
    blob = path.read_bytes()
    if not blob.startswith(_MCAP_MAGIC):
        raise ValueError(f"{path}: not an MCAP file (bad magic)")
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}  # id -> (topic, msgtype)
    out: list[tuple[str, str, int, bytes]] = []

    def scan(buf: bytes, pos: int, top_level: bool) -> int:
        end = len(buf)
        while pos + 9 <= end:
            op = buf[pos]
            (length,) = struct.unpack_from("<Q", buf, pos + 1)
            body_start = pos + 9
            if body_start + length > end:
                break  # truncated record: the writer died here
            body = memoryview(buf)[body_start: body_start + length]
            if op == 0x03:  # schema
                sid, = struct.unpack_from("<H", body, 0)
                name, _ = _mcap_string(body, 2)
                schemas[sid] = name
            elif op == 0x04:  # channel
                cid, sid = struct.unpack_from("<HH", body, 0)
                topic, _ = _mcap_string(body, 4)
                channels[cid] = (topic, schemas.get(sid, ""))
            elif op == 0x05:  # message
                cid, = struct.unpack_from("<H", body, 0)
                (log_time,) = struct.unpack_from("<Q", body, 6)
                topic, msgtype = channels.get(cid, ("", ""))
                if topic and (topics is None or topic in topics):
                    out.append((topic, msgtype, log_time, bytes(body[22:])))
            elif op == 0x06 and top_level:  # chunk
                _, _, usize, _crc = struct.unpack_from("<QQQI", body, 0)
                comp, off = _mcap_string(body, 28)
                (csize,) = struct.unpack_from("<Q", body, off)
                data = bytes(body[off + 8: off + 8 + csize])
                if comp == "zstd":
                    data = _zstd_decompress(data)
                elif comp not in ("", "none"):
                    report.notes.append(f"skipped a chunk with unsupported compression {comp!r}")
                    pos = body_start + length
                    continue
                scan(data, 0, top_level=False)
            elif op in (0x02, 0x0F) and top_level:  # footer or data end: a clean file
                return end
            pos = body_start + length
        return pos

    stop = scan(blob, len(_MCAP_MAGIC), top_level=True)
    if stop < len(blob):
        report.lost_bytes += len(blob) - stop
        report.notes.append(f"{path.name}: {len(blob) - stop} trailing bytes were an incomplete record (writer killed)")
    return out


def _zstd_decompress(data: bytes) -> bytes:
    try:
        from compression import zstd  # Python >= 3.14
    except ImportError:
        from backports import zstd  # what rosbags itself uses before 3.14
    return zstd.decompress(data)


def _mcap_string(buf, offset: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, offset)
    start = offset + 4
    return bytes(buf[start: start + n]).decode("utf-8"), start + n


def episode_marker(event: str, episode: int, **extra: Any) -> str:
    """JSON payload of a std_msgs/String on `EPISODE_TOPIC`."""
    if event not in ("start", "end", "discard"):
        raise ValueError(f"episode marker event {event!r}: expected start, end or discard")
    return json.dumps({"event": event, "episode": int(episode), **extra}, sort_keys=True)


def parse_episode_marker(text: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"episode marker is not JSON: {text[:80]!r}") from err
    if data.get("event") not in ("start", "end", "discard"):
        raise ValueError(f"episode marker has no valid event: {text[:80]!r}")
    return data


__all__ = [
    "BagMessage",
    "BagReport",
    "BagWriter",
    "EPISODE_TOPIC",
    "TOPIC_TYPES",
    "episode_marker",
    "parse_episode_marker",
    "read_bag",
    "typestore",
]
