"""`gato_policy`: the transformer in the control loop (console script `gato_policy_node`).

    /camera/image_raw ──(sensor QoS)──┐  subscriptions (callback group "sensors"): keep the latest message and
    /joint_states ────────────────────┤  its arrival time; never wait on inference
    ~/instruction ────────────────────┘
                                      │
    timer @ control_rate_hz, or each new image with trigger:=image (callback group "inference",
    ThreadedExecutor, gato_ros/ros/executor.py)
                                      ▼
    staleness check ─> Image -> RGB (resize to the bundle's size), JointState -> by name
                     ─> RuntimePolicy.act(obs) ─> SafetyFilter.step ─┬─> /position_controller/commands
                                                                     └─> /arm_controller/joint_trajectory
    services ~/reset ~/enable ~/estop ~/reset_estop, topic ~/estop (Bool)   /diagnostics @ 1 Hz, ~/timing per tick

Holding: whenever a sensor is stale, an input is malformed, inference fails, the node is disabled or e-stopped,
it publishes no command (the controller keeps its last target), says why in /diagnostics and a rate-limited log
line, and keeps running. The model's context is reset when the instruction changes and when the node resumes
after a hold (the context assumes consecutive ticks of one episode).

Only numpy, onnxruntime and rclpy are imported: the node runs on a robot computer without torch.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from gato_ros.ros.common import RateLimitedLog, StartupError, declare_config, hold_wakeup_latency, run_node
from gato_ros.ros.conversions import ConversionError, JointStateMatcher, image_backend, image_to_model_input, to_grey
from gato_ros.ros.policy_config import PolicyNodeConfig, load_policy, safety_config
from gato_ros.safety import SafetyFilter

# Largest image side accepted. Resizing allocates weights proportional to (model size x side) and intermediates
# proportional to (model size x side x channels): a 1x1000000 mono8 frame (1 MB on the wire) took 3.8 s and 780 MB
# in one tick before this bound. 8192 px covers every camera up to 8K.
MAX_IMAGE_SIDE = 8192
# Fast DDS's default shared-memory segment: a best-effort frame larger than this is mostly lost unless the camera
# driver publishes with config/fastdds.xml (a stale-image hold then says so)
LARGE_FRAME_BYTES = 512 * 1024


def percentile_ms(values, q: float) -> float:
    return float(np.percentile(np.fromiter(values, float), q)) if len(values) else float("nan")


class PolicyNode(Node):
    """See the module docstring. `policy` may be given (an object following the Policy protocol) to skip
    loading a bundle, e.g. to run the node in-process around an already loaded policy."""

    def __init__(self, policy: Any = None, node_name: str = "gato_policy", **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self.config = declare_config(self, PolicyNodeConfig)
        cfg = self.config
        self._wakeup_fd: int | None = None
        self.model_path = str(cfg.resolved_model_path)
        warmed = ""
        if policy is None:
            policy = load_policy(cfg.resolved_model_path, cfg.execution_provider, cfg.inference_threads)
            t0 = time.perf_counter()  # every call shape once now, so the first control ticks are not the slow ones
            warmed = f"; {policy.warm_up()} call shapes warmed up in {(time.perf_counter() - t0) * 1e3:.0f} ms"
        self.policy = policy
        if cfg.cpu_dma_latency_us >= 0:  # after the bundle loaded: a node that fails to start holds nothing
            try:
                self._wakeup_fd = hold_wakeup_latency(cfg.cpu_dma_latency_us)
            except OSError as exc:
                self.get_logger().warning(f"cpu_dma_latency_us={cfg.cpu_dma_latency_us}: cannot hold the PM QoS "
                                          f"request ({exc}); running without it")
        self._setup_model_interface()

        self._lock = threading.Lock()
        self._image_msg = self._joint_msg = None
        self._image_rx = self._joint_rx = None  # time.monotonic() of arrival
        self._instruction = cfg.instruction
        self._active_instruction: str | None = None
        self._reset_requested = True
        self._new_episode = False
        self._instruction_rx = -1.0
        self._context_dirty = True
        self._converted: tuple[Any, np.ndarray] | None = None  # (msg, rgb) cache: an image is converted once
        # statistics (read by diagnostics; deques are thread-safe for append/iterate snapshots)
        self._tick_ms: deque[float] = deque(maxlen=400)
        self._e2e_ms: deque[float] = deque(maxlen=400)
        self._tick_starts: deque[float] = deque(maxlen=400)
        self.ticks = self.commands = self.holds = self.deadline_misses = 0
        self.clamped = 0  # commands the safety filter changed (joint or step limits) before they went out
        self._clamped_joints: set[str] = set()  # joints whose first clamped command was logged
        self.images_received = self.joint_states_received = 0
        self._stamps: dict[str, int] = {}  # sensor -> header stamp (ns) of the message the last tick judged
        self._tick_t0: float | None = None  # time.monotonic() at the start of the tick in progress, if any
        self.state = "starting"
        self.hold_reason = ""
        self.last_error = ""
        self._last_error_time: float | None = None
        self._warn = RateLimitedLog(self.get_logger().warning)

        sensors = MutuallyExclusiveCallbackGroup()
        inference = MutuallyExclusiveCallbackGroup()
        # Two subscriptions on ~/instruction: a transient-local one so a latched instruction (the sim's) reaches a
        # node that starts later, and a volatile one, because a transient-local subscription does not match a
        # volatile publisher (`ros2 topic pub`'s default). The same text arriving twice changes nothing. Created
        # before the sensor subscriptions: rclpy's executor takes ready callbacks in creation order, so a new
        # instruction that is ready together with the new episode's first frame (the sim publishes it just before)
        # is taken first, and the tick that frame triggers acts on the new instruction, not the previous one.
        latched = QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        expected_mismatch = SubscriptionEventCallbacks(incompatible_qos=lambda event: None)  # the volatile pair
        self.create_subscription(String, "~/instruction", self._on_instruction, latched, callback_group=sensors,
                                 event_callbacks=expected_mismatch)
        self.create_subscription(String, "~/instruction", self._on_instruction, 10, callback_group=sensors)
        self.create_subscription(Image, cfg.image_topic, self._on_image, qos_profile_sensor_data,
                                 callback_group=sensors)
        self.create_subscription(JointState, cfg.joint_state_topic, self._on_joints, qos_profile_sensor_data,
                                 callback_group=sensors)
        # E-stop buttons: a reliable subscription, and a best-effort one for publishers that only offer that (a
        # reliable subscription would not match them). Pressing twice is the same as pressing once.
        self.create_subscription(Bool, "~/estop", self._on_estop_topic, 10, callback_group=sensors,
                                 event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda event: None))
        self.create_subscription(Bool, "~/estop", self._on_estop_topic, qos_profile_sensor_data, callback_group=sensors)
        self.create_service(Trigger, "~/reset", self._srv_reset, callback_group=sensors)
        self.create_service(SetBool, "~/enable", self._srv_enable, callback_group=sensors)
        self.create_service(Trigger, "~/estop", self._srv_estop, callback_group=sensors)
        self.create_service(Trigger, "~/reset_estop", self._srv_reset_estop, callback_group=sensors)

        if cfg.command_interface == "position_array":
            self._cmd_pub = self.create_publisher(Float64MultiArray, cfg.resolved_command_topic, 10)
        else:
            self._cmd_pub = self.create_publisher(JointTrajectory, cfg.resolved_command_topic, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timing_pub = self.create_publisher(Float64MultiArray, "~/timing", 10)
        self.period_s = 1.0 / cfg.control_rate_hz
        self._last_tick = -1e9  # time.monotonic() of the last tick's start
        self._answered_image = None  # trigger:=image: the frame the last command was computed from
        self._last_trigger = -1e9
        self._prepare_guard = self.create_guard_condition(self._prepare_instruction, callback_group=inference)
        if cfg.trigger == "image":
            self._image_guard = self.create_guard_condition(self._tick, callback_group=inference)
            self._timer = self.create_timer(self.period_s, self._watchdog, callback_group=inference)
        else:
            self._timer = self.create_timer(self.period_s, self._tick, callback_group=inference)
        self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics, callback_group=sensors)
        self.get_logger().info(
            f"model {self.model_path} ({self.precision}) on {self.provider}; {len(self.joint_names)} joints; "
            f"{cfg.control_rate_hz:g} Hz -> {cfg.resolved_command_topic} ({cfg.command_interface}); "
            f"{'enabled' if self.safety.enabled else 'DISABLED until ~/enable'}{warmed}"
        )
        if self.precision == "fp16" and self.provider == "CPUExecutionProvider":
            self.get_logger().warning(
                "an fp16 bundle on the CPU runs slower than its fp32 original (ONNX Runtime casts fp16 kernels it "
                "lacks to fp32; 3.9 against 3.0 ms per tick for the shipped bundle): fp16 is for GPUs; on a CPU "
                "use the fp32 or int8 export")

    # ---- set-up ----------------------------------------------------------------------------------------
    def destroy_node(self) -> None:
        if self._wakeup_fd is not None:  # release the PM QoS request
            os.close(self._wakeup_fd)
            self._wakeup_fd = None
        super().destroy_node()

    def _setup_model_interface(self) -> None:
        cfg, policy = self.config, self.policy
        bundle_names = [str(n) for n in policy.joint_names]
        self.joint_names = list(cfg.joint_names) or bundle_names
        if len(self.joint_names) != len(bundle_names):
            raise StartupError(
                f"joint_names has {len(self.joint_names)} names but the bundle commands {len(bundle_names)} "
                f"joints {bundle_names}; give one robot joint name per bundle joint, in the bundle's order"
            )
        size = policy.image_size  # None: a model without a camera input
        self.image_hw = None if size is None else (
            (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1])))
        shape = getattr(getattr(getattr(policy, "cfg", None), "spec", None), "image_shape", None)
        self.image_channels = int(shape[2]) if shape is not None else 3  # 1: a mono8 bundle
        self.provider = str(getattr(policy, "provider", "unknown"))
        self.precision = str(getattr(getattr(policy, "bundle", None), "precision", "fp32"))  # of the bundle's graphs
        try:
            self.safety = SafetyFilter(safety_config(cfg, bundle_names, policy.joint_limits))
            # Prismatic joints (the gripper) are left out of the tracking check: a grasped object blocks the
            # fingers far from their command, legitimately.
            self._revolute = np.array([b not in cfg.prismatic_joints for b in bundle_names])
        except ValueError as exc:
            raise StartupError(f"bundle joint limits are unusable: {exc}") from exc
        self.matcher = JointStateMatcher(self.joint_names, cfg.joint_state_topic)
        rate = getattr(policy, "control_rate_hz", None)
        if rate and abs(float(rate) - cfg.control_rate_hz) > 1e-6:
            self.get_logger().warning(
                f"the bundle was trained at {float(rate):g} Hz but control_rate_hz is {cfg.control_rate_hz:g}; "
                "the model's notion of speed will be off"
            )

    # ---- subscriptions and services (group "sensors") --------------------------------------------------
    def _on_image(self, msg) -> None:
        now = time.monotonic()
        with self._lock:
            self._image_msg, self._image_rx = msg, now
            self.images_received += 1
            fire = self.config.trigger == "image" and now - self._last_trigger >= 0.8 * self.period_s
            if fire:
                self._last_trigger = now
        if fire:
            self._image_guard.trigger()

    def _watchdog(self) -> None:
        """trigger:=image: tick when no image has triggered one for 1.5 periods (camera stopped: hold, report)."""
        if time.monotonic() - self._last_tick > 1.5 * self.period_s:
            self._tick()

    def _on_joints(self, msg) -> None:
        with self._lock:
            self._joint_msg, self._joint_rx = msg, time.monotonic()
            self.joint_states_received += 1

    def _on_instruction(self, msg) -> None:
        with self._lock:
            new = msg.data != self._instruction
            if new:
                # A new instruction is a new episode: new context, a new command sequence from the measured
                # position, and only sensor data that arrives after it (the sim publishes it before its new state).
                self._instruction = msg.data
                self._instruction_rx = time.monotonic()
                self._new_episode = True
        if new:
            self._prepare_guard.trigger()

    def _prepare_instruction(self) -> None:
        """Give the policy a new instruction as soon as it arrives (group "inference": between ticks), so that the
        episode's first tick does not also encode its prefix: one prefill call, ~20 ms for gato-79m, 1.5 ms for
        the shipped bundle; the tick's `reset(); set_instruction(text)` then keeps it. A failure here is left to
        that tick, which reports it and holds."""
        with self._lock:
            instruction = self._instruction
        try:
            self.policy.set_instruction(instruction)
        except Exception:  # noqa: BLE001 (the tick calls it again and reports)
            pass

    def _srv_reset(self, request, response):
        with self._lock:
            self._reset_requested = True
        response.success, response.message = True, "context cleared"
        return response

    def _srv_enable(self, request, response):
        with self._lock:
            try:
                if request.data:
                    self.safety.enable()
                    self._reset_requested = True
                else:
                    self.safety.disable()
                response.success, response.message = True, "enabled" if request.data else "disabled"
            except RuntimeError as exc:
                response.success, response.message = False, str(exc)
        self.get_logger().info(f"~/enable {bool(request.data)}: {response.message}")
        return response

    def _estop(self, why: str) -> None:
        with self._lock:
            self.safety.estop(why)
        self.get_logger().error(f"E-STOP latched ({why}): holding until ~/reset_estop and ~/enable")

    def _srv_estop(self, request, response):
        self._estop("~/estop service")
        response.success, response.message = True, "e-stop latched"
        return response

    def _on_estop_topic(self, msg) -> None:
        if msg.data:
            self._estop("~/estop topic")

    def _srv_reset_estop(self, request, response):
        with self._lock:
            self.safety.reset_estop()
        response.success, response.message = True, "e-stop cleared; still disabled until ~/enable"
        return response

    # ---- the control tick (group "inference") ---------------------------------------------------------
    def _tick(self) -> None:
        t0 = time.perf_counter()
        now = self._last_tick = time.monotonic()
        with self._lock:
            image_msg, image_rx = self._image_msg, self._image_rx
        if (self.config.trigger == "image" and image_msg is not None and image_msg is self._answered_image
                and not self._stale("image", self.config.image_topic, image_msg, image_rx, now)):
            return  # the watchdog found no newer frame; this one has its command already (one action per frame)
        self._tick_starts.append(t0)
        self._tick_t0 = now
        self.ticks += 1
        with self._lock:
            image_msg, image_rx = self._image_msg, self._image_rx
            joint_msg, joint_rx = self._joint_msg, self._joint_rx
            instruction, reset = self._instruction, self._reset_requested
            new_episode, instruction_rx = self._new_episode, self._instruction_rx
            self._reset_requested = self._new_episode = False
            if new_episode:
                self.safety.restart_sequence()
            # Read with the flags: ~/enable both enables the filter and requests a context reset, so an enable that
            # lands while this tick runs must take effect wholly in the next tick. (Seen: a tick that read no reset
            # request and then found the filter enabled acted, and the next tick reset the episode's context after
            # its first step.)
            gate = self.safety.hold_reason()
        if reset or new_episode:
            self._context_dirty = True
        reason, obs, joint_pos = self._observe(now, image_msg, image_rx, joint_msg, joint_rx, instruction)
        if reason is None and min(t for t in (image_rx, joint_rx) if t is not None) < instruction_rx:
            reason = "waiting for an image and joint state newer than the new instruction"
        if reason is None:
            reason = self._check_tracking(joint_pos)
        action = None
        if reason is None and gate is None:
            try:
                if self._context_dirty or instruction != self._active_instruction:
                    self.policy.reset()
                    self.policy.set_instruction(instruction)
                    self._check_instruction_length(instruction)
                    self._active_instruction, self._context_dirty = instruction, False
                action = self.policy.act(obs)
            except Exception as exc:  # inference must never take the node down
                reason = f"inference failed: {type(exc).__name__}: {exc}"
                self._error(reason)
            else:
                reason = self._late(t0, image_rx, joint_rx)
                if reason:
                    action = None
        with self._lock:  # publish under the lock: after ~/enable false returns, nothing more goes out
            decision = self.safety.step(action, joint_pos, hold=reason or gate)
            if decision.command is not None:
                self._publish_command(decision.command)
        if decision.command is not None:
            self.commands += 1
            if decision.clamped:
                self.clamped += 1
                self._log_first_clamp(action, decision)
            self._answered_image = image_msg
            self.state, self.hold_reason = "running", ""
            e2e = self._image_age_ms(image_msg)
        else:
            self.holds += 1
            self._context_dirty = True
            self.hold_reason = decision.reason
            self.state = "estop" if self.safety.estopped else (
                "disabled" if gate or not self.safety.enabled else "holding")
            if self.state == "holding":
                self._warn(f"holding: {decision.reason}")
            e2e = float("nan")
        tick_ms = (time.perf_counter() - t0) * 1e3
        self._tick_ms.append(tick_ms)
        if decision.command is not None and e2e == e2e:
            self._e2e_ms.append(e2e)
        if tick_ms > self.period_s * 1e3:
            self.deadline_misses += 1
        timing = Float64MultiArray()
        timing.data = [tick_ms, e2e, 1.0 if decision.command is not None else 0.0, 1.0 if decision.clamped else 0.0]
        self._timing_pub.publish(timing)
        self._tick_t0 = None

    def _log_first_clamp(self, proposed, decision) -> None:
        """Say once per joint that the safety filter changed the model's command for it (every such command is
        counted in /diagnostics `clamped_commands`): a model that keeps hitting the step limits moves the arm
        otherwise than it was evaluated to."""
        proposed, command, lim = np.asarray(proposed, dtype=np.float64), decision.command, self.safety.config
        for j in np.flatnonzero(proposed != command):
            name = self.joint_names[j]
            if name in self._clamped_joints:
                continue
            self._clamped_joints.add(name)
            if command[j] in (lim.lower[j], lim.upper[j]):
                why = f"the bundle's joint limit is {command[j]:.5f}"
            else:
                why = (f"a step of {proposed[j] - decision.reference[j]:+.5f} from the last command, over the "
                       f"{lim.max_step[j]:g} of max_joint_step_rad / max_gripper_step_m")
            self.get_logger().info(
                f"safety filter: {name}: the model asked for {proposed[j]:.5f}, commanded {command[j]:.5f} ({why}); "
                "further changes are counted in /diagnostics clamped_commands, not logged")

    def _late(self, t0: float, image_rx: float | None, joint_rx: float | None) -> str | None:
        """Hold reason when inference finished so late that its inputs are now older than sensor_timeout_s: the
        action answers a world that has moved on, so it is dropped (the same rule that holds on a stale sensor)."""
        timeout = self.config.sensor_timeout_s
        age = time.monotonic() - min(t for t in (image_rx, joint_rx) if t is not None)
        if age <= timeout:
            return None
        msg = (f"inference took {(time.perf_counter() - t0) * 1e3:.0f} ms (control period "
               f"{self.period_s * 1e3:.0f} ms): its inputs are {age:.2f} s old (sensor_timeout_s={timeout:g}); "
               "the late action was dropped")
        self._error(msg)
        return msg

    def _check_instruction_length(self, instruction: str) -> None:
        """Report an instruction longer than the model reads (the tokenizer keeps its first bytes only)."""
        limit = getattr(getattr(self.policy, "cfg", None), "max_text_tokens", None)
        size = len(instruction.encode("utf-8"))
        if limit and size + 2 > limit:  # + BOS and EOS
            self._error(f"the instruction is {size} bytes but the model reads at most {limit - 2}: only its "
                        f"beginning ({instruction[:40]!r}...) is used")

    def _stale(self, what: str, topic: str, msg, rx: float, now: float) -> str | None:
        """Why a sensor message cannot be acted on, or None: too old by arrival time; or, by header stamp (unless
        check_stamps is off or the stamp is unset), too old, more than sensor_timeout_s in the future (the stamp
        check cannot work against a clock that is ahead), or older than the message the last tick judged (out of
        order, or the sensor's clock jumped back: one tick holds, the next message is judged against this one)."""
        timeout = self.config.sensor_timeout_s
        if now - rx > timeout:
            text = f"{what} on {topic} is {now - rx:.2f} s old (sensor_timeout_s={timeout:g})"
            if what == "image" and len(msg.data) > LARGE_FRAME_BYTES:
                text += ("; its frames are over 512 kB, which Fast DDS mostly drops unless the camera driver runs "
                         "with config/fastdds.xml (FASTDDS_DEFAULT_PROFILES_FILE; README, 'A real camera')")
            return text
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if not (self.config.check_stamps and stamp_ns > 0):
            return None
        age = (self.get_clock().now().nanoseconds - stamp_ns) / 1e9
        if age > timeout:
            return (f"{what} on {topic} was stamped {age:.2f} s ago (sensor_timeout_s={timeout:g}): delivered "
                    "late, or the sensor's clock is behind this node's (synchronise the clocks, or set "
                    "check_stamps:=false)")
        clock_hint = "synchronise the clocks, or set check_stamps:=false"
        if age < -timeout:
            msg_text = (f"{what} on {topic} is stamped {-age:.2f} s in the future: the sensor's clock is ahead "
                        f"({clock_hint})")
            self._error(msg_text)
            return msg_text
        previous = self._stamps.get(what)
        self._stamps[what] = stamp_ns
        if previous is not None and stamp_ns < previous:
            msg_text = (f"{what} on {topic} is stamped {(previous - stamp_ns) / 1e9:.3f} s before the previous one: "
                        f"delivered out of order, or the sensor's clock jumped back ({clock_hint})")
            self._error(msg_text)
            return msg_text
        return None

    def _observe(self, now, image_msg, image_rx, joint_msg, joint_rx, instruction):
        """(hold reason or None, observation, joint positions) from the latest messages."""
        joint_pos = None
        if joint_msg is None:
            return f"no joint state received on {self.config.joint_state_topic} yet", None, None
        try:
            joint_pos, joint_vel = self.matcher.match(joint_msg)
        except ConversionError as exc:
            self._error(str(exc))
            return str(exc), None, None
        stale = self._stale("joint state", self.config.joint_state_topic, joint_msg, joint_rx, now)
        if stale:
            return stale, None, joint_pos
        if self.image_hw is None:
            if not instruction:
                return "no instruction yet: publish one on ~/instruction or set the instruction parameter", None, \
                    joint_pos
            return None, {"joint_pos": joint_pos, "joint_vel": joint_vel}, joint_pos
        if image_msg is None:
            return f"no image received on {self.config.image_topic} yet", None, joint_pos
        stale = self._stale("image", self.config.image_topic, image_msg, image_rx, now)
        if stale:
            return stale, None, joint_pos
        if not instruction:
            return "no instruction yet: publish one on ~/instruction or set the instruction parameter", None, joint_pos
        side = max(int(image_msg.width), int(image_msg.height))
        if side > MAX_IMAGE_SIDE:
            msg = (f"{self.config.image_topic}: image is {image_msg.width}x{image_msg.height}, over the "
                   f"{MAX_IMAGE_SIDE} px per side the node resizes; lower the camera's resolution")
            self._error(msg)
            return msg, None, joint_pos
        try:
            if self._converted is None or self._converted[0] is not image_msg:
                rgb = image_to_model_input(image_msg, *self.image_hw)
                self._converted = (image_msg, to_grey(rgb) if self.image_channels == 1 else rgb)
        except ConversionError as exc:
            msg = f"{self.config.image_topic}: {exc}"
            self._error(msg)
            return msg, None, joint_pos
        obs = {"image": self._converted[1], "joint_pos": joint_pos, "joint_vel": joint_vel}
        return None, obs, joint_pos

    def _check_tracking(self, joint_pos: np.ndarray) -> str | None:
        """Hold reason if a revolute joint is far from its last command: the arm was moved by something else, or
        the driver restarted. The sequence restarts from the measured position (and the context is reset), so the
        arm is not dragged back towards a target that belonged to the world before the jump."""
        last = self.safety.last_command
        if last is None or not np.any(self._revolute):
            return None
        err = float(np.max(np.abs(joint_pos - last)[self._revolute]))
        if err <= self.config.max_tracking_error_rad:
            return None
        with self._lock:
            self.safety.restart_sequence()
        self._context_dirty = True
        msg = (f"joint positions are {err:.2f} rad from the last command (max_tracking_error_rad="
               f"{self.config.max_tracking_error_rad:g}): the arm was moved or its driver restarted; "
               "restarting from the measured position")
        self._error(msg)
        return msg

    def _image_age_ms(self, image_msg) -> float:
        """Image stamp -> now, in ms, when the stamp is on this machine's wall clock (not sim time)."""
        stamp = image_msg.header.stamp
        age = (time.time_ns() - (stamp.sec * 1_000_000_000 + stamp.nanosec)) / 1e6
        return age if 0.0 <= age < 10_000.0 else float("nan")

    def _publish_command(self, command: np.ndarray) -> None:
        if self.config.command_interface == "position_array":
            msg = Float64MultiArray()
            msg.layout.dim = [MultiArrayDimension(label="joints", size=len(command), stride=len(command))]
            msg.data = command.tolist()
        else:
            msg = JointTrajectory()
            msg.joint_names = list(self.joint_names)
            point = JointTrajectoryPoint()
            point.positions = command.tolist()
            nanos = int(round(self.period_s * 1e9))
            point.time_from_start.sec, point.time_from_start.nanosec = divmod(nanos, 1_000_000_000)
            msg.points = [point]
        self._cmd_pub.publish(msg)

    def _error(self, text: str) -> None:
        self.last_error, self._last_error_time = text, time.monotonic()
        self._warn(text)

    # ---- diagnostics (1 Hz) ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        starts = list(self._tick_starts)[-int(max(2, 2 * self.config.control_rate_hz)):]
        rate = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 and starts[-1] > starts[0] else 0.0
        tick, e2e = list(self._tick_ms), list(self._e2e_ms)
        state, hold_reason = self.state, self.hold_reason
        t0 = self._tick_t0
        busy = time.monotonic() - t0 if t0 is not None else 0.0
        if busy > self.period_s:  # inference is hanging: no command goes out while it runs, so the arm holds
            state, hold_reason = "holding", (
                f"the current tick has run {busy * 1e3:.0f} ms, over the {self.period_s * 1e3:.0f} ms control "
                "period (inference is slow or stuck)")
        return {
            "state": state,
            "hold_reason": hold_reason,
            "enabled": self.safety.enabled,
            "estop": self.safety.estopped,
            "instruction": self._instruction,
            "target_rate_hz": self.config.control_rate_hz,
            "achieved_rate_hz": rate,
            "tick_ms_p50": percentile_ms(tick, 50),
            "tick_ms_p99": percentile_ms(tick, 99),
            "image_to_command_ms_p50": percentile_ms(e2e, 50),
            "image_to_command_ms_p99": percentile_ms(e2e, 99),
            "provider": self.provider,
            "precision": self.precision,
            "deadline_misses": self.deadline_misses,
            "ticks": self.ticks,
            "commands": self.commands,
            "clamped_commands": self.clamped,
            "holds": self.holds,
            "images_received": self.images_received,
            "joint_states_received": self.joint_states_received,
            "last_error": self.last_error,
            "last_error_age_s": (time.monotonic() - self._last_error_time) if self._last_error_time else -1.0,
            "model_path": self.model_path,
            "image_backend": image_backend(),
        }

    def _publish_diagnostics(self) -> None:
        s = self.stats()
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: control loop"
        status.hardware_id = "gato_ros"
        if s["state"] == "running":
            status.level, status.message = DiagnosticStatus.OK, "running"
        elif s["state"] in ("disabled", "starting"):
            status.level, status.message = DiagnosticStatus.OK, s["hold_reason"] or s["state"]
        elif s["state"] == "estop":
            status.level, status.message = DiagnosticStatus.ERROR, s["hold_reason"]
        else:
            status.level, status.message = DiagnosticStatus.WARN, f"holding: {s['hold_reason']}"
        if s["state"] == "running" and s["last_error"] and 0 <= s["last_error_age_s"] < 5.0:
            status.level = DiagnosticStatus.WARN
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in s.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self._diag_pub.publish(msg)



def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def main(args: list[str] | None = None) -> int:
    """Console script `gato_policy_node`."""
    # 3 threads: the inference timer, the sensor group, and one spare so services answer during inference.
    return run_node(PolicyNode, "gato_policy", args, threads=3)


if __name__ == "__main__":
    sys.exit(main())
