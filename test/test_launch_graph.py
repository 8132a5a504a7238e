"""The node graph shared by launch/arm.launch.py and `gato-ros launch arm`; the launch file where launch_ros exists."""
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from gato_ros.ros import graph

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from gato_ros.cli import main; sys.exit(main())"]


def by_name(specs):
    return {s.name: s for s in specs}


def test_defaults_start_sim_and_policy_enabled_and_follow_the_sim_instruction():
    nodes = by_name(graph.active_nodes({}))
    assert set(nodes) == {"gato_sim", "gato_policy"}
    policy = nodes["gato_policy"]
    assert policy.parameters["enable_on_start"] is True  # auto + sim
    assert policy.parameters["control_rate_hz"] == 20.0
    assert policy.parameters["command_interface"] == "position_array"
    assert "model_path" not in policy.parameters  # the node's default: the shipped bundle
    assert ("~/instruction", "/gato_sim/instruction") in policy.remappings
    assert nodes["gato_sim"].parameters["rate_hz"] == 20.0
    assert Path(policy.params_file) == REPO / "config" / "arm.yaml"


def test_real_arm_arguments():
    args = {"sim": "false", "rate": "10", "command_interface": "joint_trajectory", "model": "models/x",
            "instruction": "reach the red ball", "use_sim_time": "true"}
    nodes = by_name(graph.active_nodes(args))
    assert set(nodes) == {"gato_policy"}
    p = nodes["gato_policy"].parameters
    assert p["enable_on_start"] is False  # a real arm waits for ~/enable
    assert p["control_rate_hz"] == 10.0 and p["use_sim_time"] is True
    assert p["command_interface"] == "joint_trajectory"
    assert p["instruction"] == "reach the red ball"
    assert Path(p["model_path"]).is_absolute()
    assert nodes["gato_policy"].remappings == ()
    # explicit enable_on_start wins over auto
    assert graph.active_nodes({"sim": "false", "enable_on_start": "true"})[0].parameters["enable_on_start"] is True


def test_record_adds_the_recorder_with_the_bag_and_bundle():
    nodes = by_name(graph.active_nodes({"record": "true", "bag": "/tmp/b1", "model": "/m/bundle"}))
    assert set(nodes) == {"gato_sim", "gato_policy", "gato_recorder"}
    assert nodes["gato_recorder"].parameters["bag"] == "/tmp/b1"
    assert nodes["gato_recorder"].parameters["bundle"] == "/m/bundle"
    # conditional nodes are part of the graph even when off (the launch file gates them with IfCondition)
    all_nodes = by_name(graph.node_graph({}))
    assert all_nodes["gato_recorder"].condition == "record" and all_nodes["gato_sim"].condition == "sim"


@pytest.mark.parametrize(
    "args, match",
    [
        ({"simm": "true"}, "unknown launch argument"),
        ({"sim": "maybe"}, "not a boolean"),
        ({"rate": "-5"}, "positive number"),
        ({"command_interface": "velocity"}, "not one of position_array, joint_trajectory"),
        ({"seed": "x"}, "integer"),
    ],
)
def test_bad_arguments_are_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        graph.node_graph(args)


def test_parse_assignments():
    assert graph.parse_assignments(["a:=1", "instruction:=put the red cube in the blue bowl", "b:="]) == {
        "a": "1", "instruction": "put the red cube in the blue bowl", "b": ""}
    with pytest.raises(ValueError, match="name:=value"):
        graph.parse_assignments(["sim=true"])


def test_arm_yaml_names_real_parameters_with_the_dataclass_defaults():
    """config/arm.yaml only sets parameters that exist, to the documented defaults (one source of truth)."""
    pytest.importorskip("rclpy", reason="the node modules import rclpy (pip install -e '.[ros]')")
    from gato_ros.ros.policy_node import PolicyNodeConfig
    from gato_ros.ros.sim_node import SimNodeConfig

    data = yaml.safe_load((REPO / "config" / "arm.yaml").read_text())
    for node, cls in (("gato_policy", PolicyNodeConfig), ("gato_sim", SimNodeConfig)):
        defaults = cls()
        names = {f.name for f in fields(cls)}
        for key, value in data[node]["ros__parameters"].items():
            assert key in names, f"{node}: {key} is not a parameter"
            assert value == getattr(defaults, key), f"{node}.{key}: arm.yaml {value} != default"
    for spec in graph.node_graph({"record": "true"}):
        assert spec.name in data


def test_cli_dry_run_matches_the_graph():
    out = subprocess.run(CLI + ["launch", "arm", "rate:=10", "--dry-run", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    nodes = {n["name"]: n for n in json.loads(out.stdout)["nodes"]}
    assert set(nodes) == {"gato_sim", "gato_policy"}
    cmd = nodes["gato_policy"]["command"]
    assert cmd[1:3] == ["-m", "gato_ros.ros.policy_node"] and "__node:=gato_policy" in cmd
    assert "~/instruction:=/gato_sim/instruction" in cmd
    assert nodes["gato_policy"]["parameters"]["control_rate_hz"] == 10.0
    bad = subprocess.run(CLI + ["launch", "arm", "sim:=perhaps"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "not a boolean" in bad.stderr


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None,
                    reason="launch_ros is not installed (not on PyPI; a ROS 2 distro install has it)")
def test_launch_file_builds_nodes_from_the_graph():
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import Node

    spec = importlib.util.spec_from_file_location("arm_launch", REPO / "launch" / "arm.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    declared = {a.name for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert declared == {a.name for a in graph.LAUNCH_ARGUMENTS}
    context = LaunchContext()
    for a in ld.entities:
        if isinstance(a, DeclareLaunchArgument):
            a.visit(context)
    context.launch_configurations["sim"] = "false"
    opaque = next(a for a in ld.entities if isinstance(a, OpaqueFunction))
    nodes = [n for n in opaque.execute(context) if isinstance(n, Node)]
    assert len(nodes) == len(graph.node_graph({"sim": "false"}))
    active = [n for n in nodes if n.condition is None or n.condition.evaluate(context)]
    assert len(active) == 1  # sim:=false, record:=false: only the policy node


def test_stop_escalates_on_a_node_that_ignores_sigint_and_logs_its_stacks(tmp_path, monkeypatch):
    """stop(): SIGINT, then for a node still running SIGUSR1 (Python stacks), native stacks from gdb where it is
    installed, SIGTERM; the log keeps the node's own output and both dumps in order (appended, not overwritten)."""
    import shutil
    import signal

    from gato_ros.ros.launcher import GraphProcesses

    stuck = ("import faulthandler, signal, sys, time\n"
             "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
             "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
             "print('ready', flush=True)\n"
             "def hang_here():\n"
             "    while True:\n"
             "        time.sleep(0.05)\n"
             "hang_here()\n")
    graph = GraphProcesses({}, echo=False, log_dir=tmp_path)
    monkeypatch.setattr(graph, "commands", lambda: {"stuck_node": [sys.executable, "-c", stuck]})
    graph.start()
    try:
        deadline = time.monotonic() + 30
        while "ready" not in graph.tail("stuck_node") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ready" in graph.tail("stuck_node")
        codes = graph.stop(timeout=1.0)
    finally:
        graph.close()
    assert codes == {"stuck_node": -signal.SIGTERM}
    assert graph.stuck == {"stuck_node"}
    log = (tmp_path / "stuck_node.log").read_text()
    assert log.startswith("ready\n")
    assert "in hang_here" in log  # faulthandler's dump on SIGUSR1
    if shutil.which("gdb"):
        native = log[log.index("--- native stacks of stuck_node"):]
        # the stacks, or gdb's reason for having none (a container may deny ptrace)
        assert ("Thread 1" in native and "#0 " in native) or "ptrace" in native.lower(), native[-2000:]
        assert log.index("in hang_here") < log.index("--- native stacks")
