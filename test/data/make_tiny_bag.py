"""Regenerate test/data/tiny_bag: two short sim episodes recorded as a real rosbag2 (MCAP, zstd chunks).

    .venv/bin/python test/data/make_tiny_bag.py            # writes test/data/tiny_bag (delete it first)

The scripted expert drives the MuJoCo sim; every message a real session would carry is written with the types and
topics of a live recording: /camera/image_raw (bgr8, 64x64, to exercise a non-RGB encoding), /joint_states at twice
the control rate with a shuffled joint order and the extra mimic finger, /position_controller/commands,
/gato_sim/instruction, /gato_sim/success and /gato/episode markers (episode 0 ends with success, episode 1 is
discarded, episode 2 ends), one MCAP chunk per episode. No DDS is involved: this is the recorder's output format, made deterministically.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from gato_ros.bags import EPISODE_TOPIC, BagWriter, episode_marker
from gato_ros.sim import ArmEnv, EnvConfig
from gato_ros.sim.expert import ScriptedExpert

STEPS = 12  # control ticks per episode (not a full episode: enough to test conversion)


def main(out: str = str(Path(__file__).with_name("tiny_bag"))) -> None:
    writer = BagWriter(out, compression="zstd", custom_data={"gato_ros.generator": "test/data/make_tiny_bag.py"})
    cls = writer.message_class
    t_ns = 1_000_000_000
    period = 50_000_000  # 20 Hz

    def header(stamp: int):
        return cls("std_msgs/msg/Header")(
            stamp=cls("builtin_interfaces/msg/Time")(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="camera")

    def string(topic: str, text: str, stamp: int) -> None:
        writer.write_message(topic, "std_msgs/msg/String", stamp, cls("std_msgs/msg/String")(data=text))

    env = ArmEnv(EnvConfig(image_size=64))
    order = [6, 0, 5, 1, 4, 2, 7, 3]  # shuffled names, the mimic finger included
    for episode, (seed, fate) in enumerate([(3, "end"), (4, "discard"), (5, "end")]):
        obs, info = env.reset(seed=seed, options={"task": "reach"})
        expert = ScriptedExpert(env, seed=seed)
        string("/gato_sim/instruction", info["instruction"], t_ns)
        string(EPISODE_TOPIC, episode_marker("start", episode), t_ns + 1)
        for _ in range(STEPS):
            names, pos, vel = env.joint_state()
            for half in (0, period // 2):  # joint states at 40 Hz
                js = cls("sensor_msgs/msg/JointState")(
                    header=header(t_ns + half), name=[names[i] for i in order],
                    position=np.asarray(pos)[order], velocity=np.asarray(vel)[order], effort=np.zeros(0))
                writer.write_message("/joint_states", "sensor_msgs/msg/JointState", t_ns + half + 2, js)
                if half == 0:
                    bgr = np.ascontiguousarray(obs["image"][:, :, ::-1])
                    img = cls("sensor_msgs/msg/Image")(header=header(t_ns), height=64, width=64, encoding="bgr8",
                                                      is_bigendian=0, step=64 * 3, data=bgr.reshape(-1))
                    writer.write_message("/camera/image_raw", "sensor_msgs/msg/Image", t_ns + 3, img)
            action = expert.act(obs)
            cmd = cls("std_msgs/msg/Float64MultiArray")(
                layout=cls("std_msgs/msg/MultiArrayLayout")(dim=[], data_offset=0), data=np.asarray(action))
            writer.write_message("/position_controller/commands", "std_msgs/msg/Float64MultiArray", t_ns + 10_000_000,
                                 cmd)
            obs, _, _, _, info = env.step(action)
            t_ns += period
        writer.write_message("/gato_sim/success", "std_msgs/msg/Bool", t_ns, cls("std_msgs/msg/Bool")(
            data=bool(info["success"])))
        extra = {"success": episode == 0} if fate == "end" else {}
        string(EPISODE_TOPIC, episode_marker(fate, episode, **extra), t_ns + 1)
        t_ns += 2 * 10**9  # a pause between episodes
        writer.flush()  # one MCAP chunk per episode, as the recorder's periodic flush would make
    env.close()
    writer.close()
    print(f"wrote {out}: {writer.counts}")


if __name__ == "__main__":
    main(*sys.argv[1:])
