"""`gato-ros launch arm [name:=value ...]`: the node graph of `ros2 launch gato_ros arm.launch.py`, without the
ROS 2 launch tools (for pip installs, where `launch` and `launch_ros` are not on PyPI).

Both read gato_ros/ros/graph.py, so the nodes, parameters and remappings are the same. Each node runs as its own
process; their output is prefixed with the node name; Ctrl-C stops them all. `--dry-run` prints the commands.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gato_ros.ros.graph import LAUNCH_ARGUMENTS

    lines = []
    for a in LAUNCH_ARGUMENTS:
        choices = f" ({'|'.join(a.choices)})" if a.choices else ""
        default = a.default or '""'
        lines.append(f"  {a.name}:={default}{choices}\n      {a.description}")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "launch arguments (defaults shown):\n" + "\n".join(lines)
    parser.add_argument("launch_file", choices=["arm"], help="the graph to start: arm (= launch/arm.launch.py)")
    parser.add_argument("assignments", nargs="*", metavar="name:=value", help="launch arguments, as for ros2 launch")
    parser.add_argument("--dry-run", action="store_true", help="print the node commands instead of running them")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print the nodes as JSON")


def run(args) -> int:
    import json
    import shlex

    from gato_ros.ros.graph import parse_assignments
    from gato_ros.ros.launcher import GraphProcesses

    try:
        values = parse_assignments(args.assignments)
        graph = GraphProcesses(values, echo=True)
    except ValueError as exc:
        raise SystemExit(f"gato-ros launch: {exc}") from None
    if args.dry_run:
        commands = graph.commands()
        if args.json:
            nodes = [{"name": s.name, "executable": s.executable, "parameters": s.parameters,
                      "params_file": s.params_file, "remappings": [list(r) for r in s.remappings],
                      "command": commands[s.name]} for s in graph.specs]
            print(json.dumps({"nodes": nodes}))
        else:
            for name, cmd in commands.items():
                print(f"{name}: {shlex.join(cmd)}")
        graph.close()
        return 0
    print(f"[launch] starting {', '.join(s.name for s in graph.specs)} (Ctrl-C to stop)", flush=True)
    graph.start()
    try:
        return graph.wait()
    finally:
        graph.close()
