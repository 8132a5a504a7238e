"""Small pieces both nodes share: the start-up error, rate-limited logging, parameters from a dataclass."""
from __future__ import annotations

import ast
import inspect
import sys
import time
from dataclasses import fields
from typing import Any


class StartupError(RuntimeError):
    """The node cannot start (missing or incompatible bundle, bad parameters); the text says what to do."""


class RateLimitedLog:
    """A new message is logged at once; the same message again at most every `period_s` (control loops repeat)."""

    def __init__(self, log_fn, period_s: float = 2.0):
        self._log, self._period = log_fn, period_s
        self._last_text, self._last_time = None, -1e9

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if text != self._last_text or now - self._last_time >= self._period:
            self._log(text)
            self._last_text, self._last_time = text, now


def declare_config(node: Any, cls: type) -> Any:
    """Declare one ROS parameter per dataclass field (same name, same default) and build the config from them."""
    from rcl_interfaces.msg import ParameterDescriptor  # rclpy only when a node is built
    from rclpy.parameter import Parameter

    values = {}
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        desc = ParameterDescriptor(description=_field_doc(cls, f.name))
        if isinstance(default, list) and not default:
            # rclpy cannot infer an array type from an empty list: declare the type (the parameter stays unset
            # until given) and keep the empty default here
            p = node.declare_parameter(f.name, Parameter.Type.STRING_ARRAY, desc)
            values[f.name] = list(p.value) if p.value is not None else default
        else:
            values[f.name] = node.declare_parameter(f.name, default, desc).value
    return cls(**values)


def _field_doc(cls, name: str) -> str:
    """The docstring under a dataclass field (shown by `ros2 param describe`)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return ""
    body = tree.body[0].body  # type: ignore[attr-defined]
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and getattr(stmt.target, "id", None) == name:
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                return " ".join(str(nxt.value.value).split())
    return ""


# Clean-up after spin that takes longer than this dumps every thread's stack and exits with code 1. It was 4 s
# until a loaded CI run stopped a policy node in rclpy's destroy_node at 4 s, slow or stuck (unknown): now it is
# longer than GraphProcesses.stop's SIGINT timeout (10 s), so a slow clean-up ends cleanly there and a stuck one is
# escalated by stop(), which records native stacks first. (ros2 launch sends SIGTERM after 5 s, SIGKILL 5 s later.)
SHUTDOWN_GRACE_S = 15.0


def run_node(make_node, label: str, args: list[str] | None = None, threads: int = 1,
             large_frames: bool = False) -> int:
    """What every node's console script does: rclpy.init, build the node (a `StartupError` becomes one line on
    stderr and exit code 1), spin until Ctrl-C or shutdown (`threads` > 1: a `ThreadedExecutor`), clean up.

    Two guards against a node that will not stop (ros2 launch and `GraphProcesses.stop` would SIGKILL it without a
    word): SIGUSR1 prints every thread's Python stack to stderr at any time (`kill -USR1 PID`), and a clean-up
    after spin that takes longer than SHUTDOWN_GRACE_S prints the stacks and exits with code 1.

    `large_frames`: the node publishes camera frames, which may exceed Fast DDS's default 512 kB shared-memory
    segment: use config/fastdds.xml's profile (`graph.dds_environment`; not if the user chose one). Only a
    publisher's segment matters, so nodes that only subscribe to frames do without its 8 MB."""
    import faulthandler
    import os
    import signal

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from gato_ros.ros.executor import ThreadedExecutor
    from gato_ros.ros.graph import dds_environment

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if large_frames:  # Fast DDS reads the profile when rclpy.init creates the participant
        os.environ.update(dds_environment())
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
        except StartupError as exc:
            print(f"{label}: {exc}", file=sys.stderr)
            return 1
        executor = ThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except Exception:
            # Ctrl-C shuts the context down from rclpy's signal handler; when that lands between the executor's
            # check of the context and its next wait, the wait raises RCLError ("context is not valid") instead
            # of ExternalShutdownException (seen under load in the test suite). After a shutdown that is a stop.
            if node.context.ok():
                raise
        finally:
            print(f"{label}: shutting down", file=sys.stderr, flush=True)
            faulthandler.dump_traceback_later(SHUTDOWN_GRACE_S, exit=True)
            executor.shutdown()
    finally:
        try:
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()
        finally:
            faulthandler.cancel_dump_traceback_later()
    return 0


def hold_wakeup_latency(max_us: int) -> int:
    """Open a Linux PM QoS request: CPUs may not enter idle states that take longer than `max_us` microseconds to
    wake from, for as long as the returned file descriptor stays open (close it to release). OSError without
    permission or where /dev/cpu_dma_latency does not exist."""
    import os
    import struct

    fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    try:
        os.write(fd, struct.pack("i", int(max_us)))
    except OSError:
        os.close(fd)
        raise
    return fd
