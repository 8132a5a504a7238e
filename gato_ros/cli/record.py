"""`gato-ros record`: run the recorder node (rosbag2 MCAP with episode markers) until Ctrl-C.

Equivalent to `ros2 run gato_ros gato_recorder_node --ros-args -p bag:=... -p topics:=[...]`; episodes are started
and ended through the node's services (`/gato_recorder/start_episode`, `~/end_episode` with data=success,
`~/discard_episode`).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gato_ros.bags import EPISODE_TOPIC, TOPIC_TYPES

    default_topics = [t for t in TOPIC_TYPES if t != EPISODE_TOPIC]
    parser.add_argument("--out", "--bag", dest="bag", default="",
                        help="bag directory to create (default: bags/gato_<UTC time>); never overwritten")
    parser.add_argument("--topic", dest="topics", action="append", default=None, metavar="TOPIC",
                        help=f"topic to record (repeatable; default: {' '.join(default_topics)})")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage plugin")
    parser.add_argument("--chunk-interval", type=float, default=1.0,
                        help="seconds between MCAP chunk flushes: the most a crash can lose (default 1.0)")
    parser.add_argument("--bundle", default="", help="model bundle in use, stored as provenance in the bag")
    parser.add_argument("--start-episode", action="store_true", help="open episode 0 as soon as recording starts")
    parser.add_argument("--use-sim-time", action="store_true", help="stamp messages with /clock time")


def run(args: argparse.Namespace) -> int:
    from gato_ros.ros.recorder_node import main

    ros_args = ["gato-ros-record", "--ros-args", "-r", "__node:=gato_recorder"]
    params = {
        "storage": args.storage,
        "chunk_interval_s": float(args.chunk_interval),
        "start_episode_on_start": bool(args.start_episode),
        "use_sim_time": bool(args.use_sim_time),
    }
    if args.bag:
        params["bag"] = args.bag
    if args.bundle:  # rcl cannot parse an empty override ("bundle:=")
        params["bundle"] = args.bundle
    if args.topics:
        params["topics"] = "[" + ",".join(f"'{t}'" for t in args.topics) + "]"
    for name, value in params.items():
        if isinstance(value, bool):
            value = str(value).lower()
        ros_args += ["-p", f"{name}:={value}"]
    return main(ros_args)
