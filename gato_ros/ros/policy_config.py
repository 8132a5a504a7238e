"""Configuration of the policy node (its ROS parameters) and bundle loading: no rclpy, no torch here.

`PolicyNodeConfig` is the typed source of the node's parameters: `gato_ros.ros.common.declare_config` declares
one ROS parameter per field with the field's name, default and docstring.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gato_ros.ros.common import StartupError
from gato_ros.ros.graph import DEFAULT_MODEL, share_path
from gato_ros.safety import SafetyConfig

COMMAND_TOPICS = {
    "position_array": "/position_controller/commands",
    "joint_trajectory": "/arm_controller/joint_trajectory",
}
PROVIDERS = ("auto", "tensorrt", "cuda", "cpu")
TRIGGERS = ("timer", "image")


@dataclass
class PolicyNodeConfig:
    """Parameters of the policy node. ROS parameters mirror these fields: same names, same defaults."""

    model_path: str = ""
    """Model bundle directory (holds gato.json); empty: the shipped models/gato_arm_small."""
    joint_names: list[str] = field(default_factory=list)
    """Robot joint names in the bundle's joint order (empty: the bundle's own names). Set this when the robot's
    driver names the joints differently (e.g. with a prefix)."""
    control_rate_hz: float = 20.0
    """Inference and command rate. The bundle's training rate is what the model expects."""
    trigger: str = "timer"
    """timer: tick on a timer at control_rate_hz (independent of the camera's phase). image: tick when a new image
    arrives (at most once per 0.8 periods), for cameras or sims that publish at the control rate: the command
    then follows its image by one tick's latency instead of up to a period more. A timer still runs at the control
    rate in image mode, so a camera that stops is detected and reported."""
    instruction: str = ""
    """Initial instruction; a message on ~/instruction replaces it (and resets the context)."""
    image_topic: str = "/camera/image_raw"
    """sensor_msgs/Image (sensor-data QoS): rgb8, bgr8, rgba8, bgra8 or mono8, any size."""
    joint_state_topic: str = "/joint_states"
    """sensor_msgs/JointState, matched by name; extra joints are ignored."""
    command_interface: str = "position_array"
    """position_array (std_msgs/Float64MultiArray) or joint_trajectory (trajectory_msgs/JointTrajectory)."""
    command_topic: str = ""
    """Empty: /position_controller/commands or /arm_controller/joint_trajectory, per command_interface."""
    execution_provider: str = "auto"
    """ONNX Runtime provider: auto|tensorrt|cuda|cpu (auto picks the fastest one that really starts)."""
    inference_threads: int = 1
    """ONNX Runtime intra-op threads on the CPU provider (0: the runtime's default, min(cores, 4)). One by default:
    the shipped model's calls are too small to split (2-core machine, idle: 1.8 ms p50 with 1 thread, 2.5 ms with
    2), and threads slow down badly when the cores are shared (gato-small on a busy 2-core machine: 13 ms p50 with
    1 thread, 37 ms with 2). A large model on cores of its own gains: gato-79m int8, idle 2-core machine, tick p99
    60-64 ms with 1 thread, 38-43 ms with 2 (BENCHMARKS.md)."""
    sensor_timeout_s: float = 0.25
    """Hold when the latest image or joint state arrived longer ago than this."""
    check_stamps: bool = True
    """Also hold when a message's header stamp is older than sensor_timeout_s on this node's clock (a message
    delivered late). Needs the sensors' clocks synchronised with this computer's (or use_sim_time with /clock)."""
    max_joint_step_rad: float = 0.1
    """Largest change of a revolute joint's command per tick (0.1 rad at 20 Hz = 2 rad/s, below the UR5e's
    3.14 rad/s joint speed limit)."""
    max_gripper_step_m: float = 0.01
    """Largest change of a prismatic joint's command per tick (metres)."""
    prismatic_joints: list[str] = field(default_factory=lambda: ["gripper_joint"])
    """Bundle joint names measured in metres (get max_gripper_step_m instead of max_joint_step_rad)."""
    max_tracking_error_rad: float = 0.5
    """Hold and restart from the measured position when a revolute joint is further than this from its last
    command (the arm was pushed, or the driver restarted and the joints jumped)."""
    enable_on_start: bool = False
    """Command from the start. Off by default: a real arm does not move until ~/enable is called."""
    diagnostics_period_s: float = 1.0
    """Period of the /diagnostics status (state, rate, latency, provider, deadline misses, last error)."""
    cpu_dma_latency_us: int = -1
    """>= 0: hold a Linux PM QoS request (/dev/cpu_dma_latency) with this CPU wake-up latency bound (microseconds)
    while the node runs, so idle cores wake in time for the control loop (on a virtual machine, halted vCPUs woke too
    late for a 20 Hz loop: 1-7 of ~40 commands in 2 s). -1: no request. Needs write access to the device (root or a
    udev rule); without it the node warns and runs on."""

    def __post_init__(self) -> None:
        if not self.control_rate_hz > 0:
            raise StartupError(f"control_rate_hz must be > 0, got {self.control_rate_hz}")
        if self.trigger not in TRIGGERS:
            raise StartupError(f"trigger {self.trigger!r} is not one of {', '.join(TRIGGERS)}")
        if self.command_interface not in COMMAND_TOPICS:
            raise StartupError(
                f"command_interface {self.command_interface!r} is not one of {', '.join(COMMAND_TOPICS)}"
            )
        if self.execution_provider not in PROVIDERS:
            raise StartupError(f"execution_provider {self.execution_provider!r} is not one of {', '.join(PROVIDERS)}")
        if self.inference_threads < 0:
            raise StartupError(f"inference_threads must be >= 0 (0: the runtime's default), got {self.inference_threads}")
        if self.cpu_dma_latency_us < -1:
            raise StartupError(f"cpu_dma_latency_us must be >= 0 (a bound in us) or -1 (off), got {self.cpu_dma_latency_us}")
        for name in ("sensor_timeout_s", "max_joint_step_rad", "max_gripper_step_m", "max_tracking_error_rad",
                     "diagnostics_period_s"):
            if not getattr(self, name) > 0:
                raise StartupError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def resolved_command_topic(self) -> str:
        return self.command_topic or COMMAND_TOPICS[self.command_interface]

    @property
    def resolved_model_path(self) -> Path:
        return Path(self.model_path).expanduser() if self.model_path else share_path(DEFAULT_MODEL)


def load_policy(path: Path, execution_provider: str, threads: int = 0) -> Any:
    """The runtime ONNX policy for a bundle, or StartupError with one clear sentence on what to do."""
    if not path.is_dir():
        raise StartupError(
            f"model bundle {str(path)!r} does not exist; point the model_path parameter (launch argument model:=DIR) "
            "at a bundle directory with gato.json, as written by `gato-ros export`"
        )
    if not (path / "gato.json").is_file():
        raise StartupError(f"{str(path)!r} is not a model bundle (no gato.json); point model_path at an exported bundle")
    from gato_ros.runtime import RuntimePolicy

    try:
        return RuntimePolicy.load(str(path), execution_provider=execution_provider, threads=threads or None)
    except Exception as exc:  # incompatible or corrupt bundle: one message, no traceback
        raise StartupError(f"cannot load model bundle {str(path)!r}: {exc}") from exc


def safety_config(config: PolicyNodeConfig, bundle_joints: list[str], joint_limits) -> SafetyConfig:
    """The node's safety filter limits for a bundle: its joint limits, and per tick `max_gripper_step_m` for the
    prismatic joints, `max_joint_step_rad` for the others (raises ValueError for unusable limits)."""
    limits = np.asarray(joint_limits, dtype=np.float64)
    step = np.array([config.max_gripper_step_m if b in config.prismatic_joints else config.max_joint_step_rad
                     for b in bundle_joints])
    return SafetyConfig(limits[:, 0], limits[:, 1], step, config.enable_on_start)
