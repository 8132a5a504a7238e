"""The node graph of `arm.launch.py`, defined once in plain Python.

Both `ros2 launch gato_ros arm.launch.py` (launch/arm.launch.py, which turns each `NodeSpec` into a
`launch_ros.actions.Node` gated by an `IfCondition`) and `gato-ros launch arm` (gato_ros/cli/launch.py, which runs
each node as a subprocess on machines without the ROS 2 launch tools) read this module, so the two cannot drift.

    launch arguments (name:=value)
            │ resolve_arguments(): defaults, choices, booleans
            ▼
    node_graph(args) ──> [NodeSpec(gato_sim,      condition="sim"),
                          NodeSpec(gato_policy),
                          NodeSpec(gato_recorder, condition="record")]

Parameters of every node come from `config/arm.yaml` first, then the per-argument overrides here (the launch
arguments win, as with `ros2 launch`). No rclpy or launch import here: this module is testable anywhere.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "gato_ros"
DEFAULT_MODEL = "models/gato_arm_small"
TRUE_WORDS, FALSE_WORDS = ("true", "1"), ("false", "0")  # what launch's IfCondition accepts, lower-cased


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


BOOL = ("true", "false")
LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("sim", "true", "start the MuJoCo sim node; false: a real arm driver provides the topics", BOOL),
    LaunchArgument("model", "", f"model bundle directory (empty: the shipped {DEFAULT_MODEL})"),
    LaunchArgument("record", "false", "record the session to a rosbag2 (MCAP) with the recorder node", BOOL),
    LaunchArgument("bag", "", "bag directory for record:=true (empty: the recorder's default)"),
    LaunchArgument("rate", "20.0", "control rate in Hz of the policy node (and of the sim)"),
    LaunchArgument("instruction", "", "fixed instruction (empty: follow ~/instruction, which the sim publishes)"),
    LaunchArgument(
        "command_interface",
        "position_array",
        "position_array: Float64MultiArray on /position_controller/commands; "
        "joint_trajectory: JointTrajectory on /arm_controller/joint_trajectory",
        ("position_array", "joint_trajectory"),
    ),
    LaunchArgument("trigger", "timer", "policy ticks on a timer, or on each new image (cameras at the control rate)",
                   ("timer", "image")),
    LaunchArgument("use_sim_time", "false", "all nodes follow /clock (the sim publishes it)", BOOL),
    LaunchArgument(
        "enable_on_start",
        "auto",
        "start commanding without a call to ~/enable (auto: true with sim:=true, false on a real arm)",
        ("auto", "true", "false"),
    ),
    LaunchArgument("execution_provider", "auto", "ONNX Runtime provider", ("auto", "tensorrt", "cuda", "cpu")),
    LaunchArgument("task", "", "sim task for every episode (empty: rotate through all tasks)"),
    LaunchArgument("seed", "0", "sim seed of the first episode (episode k uses seed + k)"),
    LaunchArgument("image_size", "", "sim camera size in pixels (empty: config/arm.yaml's, 64)"),
    LaunchArgument("auto_reset", "true", "the sim starts a new episode by itself when one ends", BOOL),
    LaunchArgument("config", "", "parameter file for all nodes (empty: the installed config/arm.yaml)"),
)
ARGUMENTS_BY_NAME = {a.name: a for a in LAUNCH_ARGUMENTS}


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph, enough to start it with launch_ros or as a subprocess."""

    name: str
    executable: str
    module: str
    """Python module whose `main()` runs the node (what the console script `executable` calls)."""
    parameters: dict[str, Any]
    """Overrides applied after `params_file`, already typed (float, bool, str, int)."""
    params_file: str
    condition: str | None = None
    """Name of a boolean launch argument that must be true for the node to start (None: always)."""
    remappings: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    package: str = PACKAGE


def is_true(value: str, name: str = "value") -> bool:
    v = str(value).strip().lower()
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise ValueError(f"{name}:={value!r} is not a boolean; use true or false")


def share_path(relative: str) -> Path:
    """A file shipped with the package (config/, models/, sim/): the source checkout first, then the install.

    In a source checkout (pip -e, or running from the repository) the files sit next to the gato_ros package; in a
    colcon or wheel install they are under share/gato_ros, found through the ament index or sys.prefix.
    """
    candidates = [Path(__file__).resolve().parents[2] / relative]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / relative)
    except Exception:  # not installed through ament (plain pip) or ament_index_python missing
        pass
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / relative)
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


FAST_DDS_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def dds_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables to add for the nodes we start: Fast DDS's profile with a shared-memory segment large
    enough for camera frames over 512 kB (config/fastdds.xml says why), unless the user chose a profile file or
    another middleware. Empty when nothing is to be added."""
    env = os.environ if environ is None else environ
    if (env.get("RMW_IMPLEMENTATION") or "rmw_fastrtps_cpp") not in FAST_DDS_RMWS:  # unset or empty: Fast DDS
        return {}
    if any(env.get(name) for name in PROFILE_VARIABLES):
        return {}
    profile = share_path("config/fastdds.xml")
    return {PROFILE_VARIABLES[0]: str(profile)} if profile.is_file() else {}


def parse_assignments(items: list[str]) -> dict[str, str]:
    """['sim:=false', 'rate:=10'] -> {'sim': 'false', 'rate': '10'} (the `ros2 launch` argument syntax)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"launch arguments look like name:=value, got {item!r}")
        out[name] = value
    return out


def resolve_arguments(given: dict[str, str] | None = None) -> dict[str, str]:
    """Defaults filled in, names and choices checked; raises ValueError naming the valid options."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(ARGUMENTS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown launch argument(s) {unknown}; valid: {', '.join(ARGUMENTS_BY_NAME)}")
    args = {a.name: str(given.get(a.name, a.default)) for a in LAUNCH_ARGUMENTS}
    for a in LAUNCH_ARGUMENTS:
        if a.choices == BOOL:
            is_true(args[a.name], a.name)
        elif a.choices and args[a.name] not in a.choices:
            raise ValueError(f"{a.name}:={args[a.name]!r} is not one of {', '.join(a.choices)}")
    for name in ("rate",):
        try:
            if float(args[name]) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{name}:={args[name]!r} must be a positive number (Hz)") from None
    try:
        int(args["seed"])
    except ValueError:
        raise ValueError(f"seed:={args['seed']!r} must be an integer") from None
    if args["image_size"] and not (args["image_size"].isdigit() and int(args["image_size"]) > 0):
        raise ValueError(f"image_size:={args['image_size']!r} must be a positive integer (pixels)")
    return args


def node_graph(given: dict[str, str] | None = None) -> list[NodeSpec]:
    """All nodes of the graph for these launch arguments (conditional ones included; see `active_nodes`)."""
    args = resolve_arguments(given)
    sim = is_true(args["sim"])
    use_sim_time = is_true(args["use_sim_time"])
    params_file = args["config"] or str(share_path("config/arm.yaml"))
    rate = float(args["rate"])
    enable = sim if args["enable_on_start"] == "auto" else is_true(args["enable_on_start"])

    policy: dict[str, Any] = {
        "control_rate_hz": rate,
        "command_interface": args["command_interface"],
        "trigger": args["trigger"],
        "execution_provider": args["execution_provider"],
        "enable_on_start": enable,
        "use_sim_time": use_sim_time,
    }
    if args["model"]:
        policy["model_path"] = os.path.abspath(os.path.expanduser(args["model"]))
    if args["instruction"]:
        policy["instruction"] = args["instruction"]
    sim_params: dict[str, Any] = {
        "rate_hz": rate,
        "task": args["task"],
        "seed": int(args["seed"]),
        "auto_reset": is_true(args["auto_reset"]),
        # The sim is the clock: it never follows /clock itself, but stamps its messages with sim time when the
        # rest of the graph does.
        "stamp_sim_time": use_sim_time,
    }
    if args["image_size"]:
        sim_params["image_size"] = int(args["image_size"])
    recorder: dict[str, Any] = {"use_sim_time": use_sim_time, "bundle": policy.get("model_path", DEFAULT_MODEL)}
    if args["bag"]:
        recorder["bag"] = os.path.abspath(os.path.expanduser(args["bag"]))
    # The policy follows the sim's task instruction unless the user fixed one.
    remap = (("~/instruction", "/gato_sim/instruction"),) if sim and not args["instruction"] else ()
    return [
        NodeSpec("gato_sim", "gato_sim_node", "gato_ros.ros.sim_node", sim_params, params_file, condition="sim"),
        NodeSpec("gato_policy", "gato_policy_node", "gato_ros.ros.policy_node", policy, params_file,
                 remappings=remap),
        NodeSpec(
            "gato_recorder", "gato_recorder_node", "gato_ros.ros.recorder_node", recorder, params_file, "record"
        ),
    ]


def active_nodes(given: dict[str, str] | None = None) -> list[NodeSpec]:
    """The nodes whose condition holds for these arguments: what a launch actually starts."""
    args = resolve_arguments(given)
    return [n for n in node_graph(args) if n.condition is None or is_true(args[n.condition], n.condition)]
