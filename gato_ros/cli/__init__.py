"""`gato-ros` command line: one subcommand per module, imported lazily so `gato-ros --help` needs neither torch,
MuJoCo nor rclpy.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under gato_ros.cli, one-line help). Order is the order shown in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "sim + policy node over ROS 2 with the shipped model: success table, video, latency plot"),
    "collect": ("collect", "record scripted-expert demonstrations in the sim"),
    "train": ("train", "train (or fine-tune) the transformer on episode datasets"),
    "export": ("export", "export a checkpoint to an ONNX model bundle and check it against torch"),
    "eval": ("eval", "closed-loop evaluation of a bundle, the expert or a random policy"),
    "bench": ("bench", "time one control tick against Hugging Face and naive torch peers"),
    "record": ("record", "record ROS 2 topics to a rosbag2 (MCAP) with episode markers"),
    "dataset": ("dataset", "inspect datasets and convert rosbags into datasets"),
    "launch": ("launch", "start the node graph of arm.launch.py without the ROS 2 launch tools"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gato-ros", description="Gato-style generalist transformer for ROS 2 robot arms."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported (keeps `gato-ros --help` and the node light).
        if name == only:
            mod = importlib.import_module(f"gato_ros.cli.{module}")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in SUBCOMMANDS:
        build_parser().error(f"unknown command {command!r}; choose from {', '.join(SUBCOMMANDS)}")
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    if command is None:
        parser.print_help()
        return 0
    return int(args._run(args) or 0)
