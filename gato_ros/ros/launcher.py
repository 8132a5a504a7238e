"""Run the node graph of graph.py as subprocesses: `gato-ros launch arm`, `gato-ros demo`, `eval --ros`, tests.

Each node is its own process (as under `ros2 launch`), started as `python -m <module> --ros-args -r __node:=NAME
--params-file config/arm.yaml --params-file <overrides.yaml> -r FROM:=TO`, so nodes talk over real DDS and a
crash in one is visible as an exit code, not a hung thread. The override file carries the typed parameters from
graph.py (what launch_ros does with a parameter dict).

Stopping sends SIGINT (rclpy turns it into KeyboardInterrupt and the nodes shut down cleanly), then SIGUSR1 (a
stack dump in the node's log), SIGTERM and SIGKILL to whatever is left.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import yaml

from gato_ros.ros.graph import NodeSpec, active_nodes


def node_command(spec: NodeSpec, overrides_file: str) -> list[str]:
    """The command line that starts one node with its parameters and remappings."""
    cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.params_file:
        cmd += ["--params-file", spec.params_file]
    cmd += ["--params-file", overrides_file]
    for src, dst in spec.remappings:
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


class GraphProcesses:
    """The active nodes for some launch arguments, as child processes.

    echo: prefix each output line with the node name and print it (the CLI); otherwise lines go to
    `<log_dir>/<node>.log` (demo, eval, tests) and `tail(name)` shows the end of a log for error messages.
    """

    def __init__(self, arguments: dict[str, str] | None = None, echo: bool = True, log_dir: str | Path | None = None,
                 env: dict[str, str] | None = None):
        self.specs = active_nodes(arguments or {})
        self.echo = echo
        self._tmp = tempfile.TemporaryDirectory(prefix="gato_launch_")
        self.log_dir = Path(log_dir) if log_dir else Path(self._tmp.name)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.procs: dict[str, subprocess.Popen] = {}
        self._pumps: list[threading.Thread] = []
        self._logs: list[IO] = []
        self.stuck: set[str] = set()  # nodes that did not exit on SIGINT within stop()'s timeout

    def commands(self) -> dict[str, list[str]]:
        out = {}
        for spec in self.specs:
            path = Path(self._tmp.name) / f"{spec.name}.params.yaml"
            path.write_text(yaml.safe_dump({spec.name: {"ros__parameters": dict(spec.parameters)}}, sort_keys=True))
            out[spec.name] = node_command(spec, str(path))
        return out

    def start(self) -> "GraphProcesses":
        for name, cmd in self.commands().items():
            if self.echo:
                proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        bufsize=1, preexec_fn=_default_signals)
                pump = threading.Thread(target=_pump, args=(proc.stdout, f"[{name}] "), daemon=True)
                pump.start()
                self._pumps.append(pump)
            else:
                path = self.log_dir / f"{name}.log"
                path.write_text("")  # a new log, written in append mode so stop()'s additions are never overwritten
                log = open(path, "a")
                self._logs.append(log)
                proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=_default_signals)
            self.procs[name] = proc
        return self

    def poll(self) -> dict[str, int | None]:
        return {name: p.poll() for name, p in self.procs.items()}

    def exited(self) -> dict[str, int]:
        """Nodes that have exited, with their return codes."""
        return {n: rc for n, rc in self.poll().items() if rc is not None}

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def wait(self) -> int:
        """Block until a node exits (then stop the rest) or SIGINT/SIGTERM; the first non-zero exit code or 0."""
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.is_set() and not self.exited():
                stop.wait(0.2)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        early = self.exited()
        codes = self.stop()
        for name, rc in early.items():
            if rc != 0:
                print(f"[launch] {name} exited with code {rc}", file=sys.stderr)
                return rc
        return next((rc for rc in codes.values() if rc not in (0, None, -signal.SIGINT)), 0)

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGINT every running node, then SIGTERM / SIGKILL after `timeout` s; returns the exit codes. A node
        still running after SIGINT gets SIGUSR1 first (our nodes print every thread's stack on it, see
        `run_node`), so its log says where it hung."""
        for sig, wait_s in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            running = [p for p in self.procs.values() if p.poll() is None]
            if not running:
                break
            if sig != signal.SIGINT:
                self.stuck.update(n for n, p in self.procs.items() if p in running)
                if sig == signal.SIGTERM:
                    for p in running:
                        p.send_signal(signal.SIGUSR1)
                    time.sleep(0.5)
                    for name, p in self.procs.items():
                        if p in running and not self.echo:
                            self._record_native_stacks(name, p.pid)
            for p in running:
                p.send_signal(sig)
            deadline = time.monotonic() + wait_s
            for p in running:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for t in self._pumps:
            t.join(timeout=2.0)
        for log in self._logs:
            log.close()
        self._logs.clear()
        return self.poll()

    def _record_native_stacks(self, name: str, pid: int) -> None:
        """Append every thread's C/C++ stack of a stuck node to its log, where gdb is installed and may attach
        (a hang inside the DDS library shows no Python frame below the call that entered it)."""
        gdb = shutil.which("gdb")
        if gdb is None:
            return
        try:
            r = subprocess.run([gdb, "-p", str(pid), "-batch", "-nx", "-ex", "thread apply all bt"],
                               capture_output=True, text=True, timeout=60)
            out = r.stdout if "#0 " in r.stdout else r.stdout + r.stderr  # no stacks: say why (e.g. ptrace denied)
        except (OSError, subprocess.SubprocessError) as exc:
            out = f"gdb failed: {exc}\n"
        with open(self.log_dir / f"{name}.log", "a") as log:
            log.write(f"--- native stacks of {name} (pid {pid}), still running after SIGINT:\n{out}")

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> "GraphProcesses":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _default_signals() -> None:
    """In the child: SIGINT back to its default, so a node started from a background shell job (which ignores
    SIGINT, and children inherit that) still shuts down cleanly when we send it SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _pump(stream: IO[str], prefix: str) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(prefix + line)
        sys.stdout.flush()
    stream.close()
