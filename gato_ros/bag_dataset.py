"""rosbag2 recordings -> episode datasets (the format `gato-ros collect` writes; numpy + rosbags, no rclpy).

    bag(s) ──read_bag──> messages by topic ──split──> episodes ──resample at the control rate (hold-last)──>
        per tick t_k: latest image <= t_k, latest joint state <= t_k, action (below) ──> gato_ros.dataset

Sensor times are header stamps when they are on the recorder's clock, else receive times (`_sample_times`).

Episodes are delimited by our markers on /gato/episode (start / end with success / discard) when a bag has them,
otherwise by gaps of more than `gap_s` in /joint_states. Actions come either from the commands the policy or expert
sent (`actions="commands"`: the latest /position_controller/commands or /arm_controller/joint_trajectory command
received up to t_k+1 and before the image after observation k, i.e. held from before if none arrived), or, for
teleoperated or kinesthetic demos without commands, from the next joint positions (`actions="next_state"`:
action_k = joint_pos at t_k+1).

Nothing is dropped silently: an episode without an end marker (the recorder was killed) is kept with
success=False and a note; ticks before the first image or joint state are skipped and counted in the report;
a bag lacking a needed topic stops with a message listing what is missing and what the bag has.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gato_ros.bags import EPISODE_TOPIC, BagMessage, parse_episode_marker, read_bag
from gato_ros.dataset import Episode, write_episode

IMAGE_TOPICS = ("/camera/image_raw", "/camera/image_raw/compressed")
JOINT_TOPIC = "/joint_states"
COMMAND_TOPICS = ("/position_controller/commands", "/arm_controller/joint_trajectory")
INSTRUCTION_TOPICS = ("/gato_sim/instruction", "/gato_policy/instruction")
SUCCESS_TOPIC = "/gato_sim/success"
ACTION_SOURCES = ("commands", "next_state")


@dataclass
class ConversionReport:
    bags: list[str] = field(default_factory=list)
    episodes_written: int = 0
    steps_written: int = 0
    discarded: int = 0
    skipped_ticks: int = 0
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def infer_task(instruction: str) -> str:
    """Our sim's templates: "reach the ..." -> reach, "put the ..." -> pick_place, "point above the ..." ->
    point_above; anything else -> "custom"."""
    words = instruction.strip().lower().split()
    if words[:1] == ["reach"]:
        return "reach"
    if words[:1] == ["put"]:
        return "pick_place"
    if words[:2] == ["point", "above"]:
        return "point_above"
    return "custom"


def _decode_image(msg: Any, size: int) -> np.ndarray:
    if hasattr(msg, "format"):  # sensor_msgs/CompressedImage (jpeg / png)
        from PIL import Image as PILImage

        from gato_ros.ros.conversions import resize_rgb

        rgb = np.asarray(PILImage.open(io.BytesIO(bytes(msg.data))).convert("RGB"))
        return resize_rgb(rgb, size, size)
    from gato_ros.ros.conversions import image_to_model_input

    return image_to_model_input(msg, size, size)


def _command_vector(msg: BagMessage, joint_names: Sequence[str]) -> np.ndarray:
    if msg.msgtype == "std_msgs/msg/Float64MultiArray":
        data = np.asarray(msg.msg.data, dtype=np.float64)
        if data.size != len(joint_names):
            raise ValueError(
                f"{msg.topic}: command has {data.size} values but the dataset has {len(joint_names)} joints "
                f"{list(joint_names)}"
            )
        return data
    names = list(msg.msg.joint_names)
    points = list(msg.msg.points)
    if not points:
        raise ValueError(f"{msg.topic}: JointTrajectory without points")
    where = {n: i for i, n in enumerate(names)}
    missing = [n for n in joint_names if n not in where]
    if missing:
        raise ValueError(f"{msg.topic}: trajectory joints {names} lack {missing}")
    pos = np.asarray(points[0].positions, dtype=np.float64)
    return pos[[where[n] for n in joint_names]]


def _segments(msgs: list[BagMessage], joint_stamps: np.ndarray, gap_s: float, report: ConversionReport):
    """(start_ns, end_ns, success_or_None, from_markers) per episode, discarded ones removed."""
    markers = []
    for m in msgs:
        if m.topic == EPISODE_TOPIC:
            try:
                markers.append((m.timestamp_ns, parse_episode_marker(m.msg.data)))
            except ValueError as err:
                report.notes.append(f"ignored a malformed marker: {err}")
    if markers:
        out, open_start = [], None
        for stamp, mk in markers:
            if mk["event"] == "start":
                if open_start is not None:
                    report.notes.append("an episode started before the previous one ended: the previous one is kept "
                                        "with success=False")
                    out.append((open_start, stamp, False, True))
                open_start = stamp
            elif open_start is None:
                report.notes.append(f"a {mk['event']} marker without a start was ignored")
            elif mk["event"] == "end":
                out.append((open_start, stamp, bool(mk.get("success", False)), True))
                open_start = None
            else:  # discard
                report.discarded += 1
                open_start = None
        if open_start is not None:
            end = int(max(m.timestamp_ns for m in msgs))
            report.notes.append("the last episode has no end marker (recording cut short): kept with success=False")
            out.append((open_start, end, None, True))
        return out
    if joint_stamps.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(joint_stamps) > gap_s * 1e9)
    starts = np.concatenate(([0], cuts + 1))
    ends = np.concatenate((cuts, [joint_stamps.size - 1]))
    return [(int(joint_stamps[s]), int(joint_stamps[e]), None, False) for s, e in zip(starts, ends)]


def _sample_times(msgs: list[BagMessage]) -> np.ndarray:
    """When each sensor message was measured: its header stamp if every message has one on the recorder's clock
    (within 1 s of when it was received), else the receive time.

    Header stamps matter for the labels: the recorder stamps what it receives when its executor gets to it, so an
    image and the command that answers it, arriving in one wake-up, can be written in the wrong order (a few % of
    ticks on a loaded machine); the image's header stamp (set when the frame was published) is before any command
    computed from it, whatever the recorder's delays. Header stamps of zero (no clock) or from another clock fall
    back to receive times."""
    received = np.asarray([m.timestamp_ns for m in msgs], dtype=np.int64)
    try:
        header = np.asarray([m.msg.header.stamp.sec * 10**9 + m.msg.header.stamp.nanosec for m in msgs],
                            dtype=np.int64)
    except AttributeError:
        return received
    if header.size and np.all(header > 0) and np.median(np.abs(received - header)) < 10**9:
        return header
    return received


def _latest_index(stamps: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the last stamp <= each t (-1 where none)."""
    return np.searchsorted(stamps, t, side="right") - 1


def convert_bags(
    bags: Sequence[str | Path],
    out: str | Path,
    joint_names: Sequence[str] | None = None,
    joint_limits: np.ndarray | None = None,
    image_size: int = 64,
    rate_hz: float = 20.0,
    actions: str = "commands",
    gap_s: float = 1.0,
    task: str | None = None,
    min_steps: int = 2,
    max_age_s: float | None = None,
    progress: bool = False,
) -> ConversionReport:
    """Convert rosbag2 recordings into the episode dataset at `out` (appending to it if it exists).

    Ticks whose latest image or joint state is older than `max_age_s` (default: two control periods) are skipped
    and counted, as the policy node would hold on stale sensors rather than act on them.
    """
    if actions not in ACTION_SOURCES:
        raise ValueError(f"actions={actions!r}: choose one of {ACTION_SOURCES}")
    if rate_hz <= 0:
        raise ValueError(f"rate_hz={rate_hz}: must be positive")
    report = ConversionReport()
    iterator = bags
    if progress:
        from tqdm import tqdm

        iterator = tqdm(bags, desc="bags", unit="bag")

    def convert_one(bag) -> None:
        """One bag into the dataset; a ValueError says what is missing."""
        msgs, bag_report = read_bag(bag)
        report.bags.append(str(bag))
        report.notes += [f"{bag}: {n}" for n in bag_report.notes]
        by_topic: dict[str, list[BagMessage]] = {}
        for m in msgs:
            by_topic.setdefault(m.topic, []).append(m)
        image_topic = next((t for t in IMAGE_TOPICS if by_topic.get(t)), None)
        command_topic = next((t for t in COMMAND_TOPICS if by_topic.get(t)), None)
        missing = []
        if image_topic is None:
            missing.append(" or ".join(IMAGE_TOPICS))
        if not by_topic.get(JOINT_TOPIC):
            missing.append(JOINT_TOPIC)
        if actions == "commands" and command_topic is None:
            missing.append(" or ".join(COMMAND_TOPICS) + " (or convert with actions='next_state' / --actions "
                           "next-state for demos without commands)")
        if missing:
            have = ", ".join(f"{t} ({len(v)})" for t, v in sorted(by_topic.items())) or "no messages"
            raise ValueError(f"{bag}: missing {'; '.join(missing)}. The bag has: {have}")

        joints = by_topic[JOINT_TOPIC]
        names = list(joint_names) if joint_names else _default_joint_names(list(joints[0].msg.name))
        from gato_ros.ros.conversions import ConversionError, JointStateMatcher

        matcher = JointStateMatcher(names, JOINT_TOPIC)
        usable, j_pos, j_vel = [], [], []
        bad = 0
        for m in joints:
            try:
                p, v = matcher.match(m.msg)
            except ConversionError as err:
                if bad == 0:
                    first_error = str(err)
                bad += 1
                continue
            usable.append(m)
            j_pos.append(p)
            j_vel.append(v)
        if bad:
            report.notes.append(f"{bag}: {bad} of {len(joints)} joint states unusable, e.g.: {first_error}")
        if not usable:
            raise ValueError(f"{bag}: no usable {JOINT_TOPIC} message: {first_error}")
        j_stamps = _sample_times(usable)
        order = np.argsort(j_stamps, kind="stable")
        j_stamps, j_pos, j_vel = j_stamps[order], np.asarray(j_pos)[order], np.asarray(j_vel)[order]
        i_stamps = _sample_times(by_topic[image_topic])
        order = np.argsort(i_stamps, kind="stable")
        i_stamps, images = i_stamps[order], [by_topic[image_topic][i] for i in order]
        if command_topic is not None:
            commands = by_topic[command_topic]
            c_stamps = np.asarray([m.timestamp_ns for m in commands], dtype=np.int64)
        instructions = [(m.timestamp_ns, m.msg.data) for t in INSTRUCTION_TOPICS for m in by_topic.get(t, [])]
        instructions.sort()
        successes = [(m.timestamp_ns, bool(m.msg.data)) for m in by_topic.get(SUCCESS_TOPIC, [])]
        period = int(round(1e9 / rate_hz))
        max_age = int(round((max_age_s if max_age_s is not None else 2.0 / rate_hz) * 1e9))
        limits = joint_limits
        if limits is None:
            limits = _default_limits(names)

        for start, end, marked_success, _ in _segments(msgs, j_stamps, gap_s, report):
            ticks = np.arange(start, end + 1, period, dtype=np.int64)
            ji = _latest_index(j_stamps, ticks)
            ii = _latest_index(i_stamps, ticks)
            valid = (ji >= 0) & (ii >= 0)
            valid &= (ticks - j_stamps[np.maximum(ji, 0)] <= max_age) & (ticks - i_stamps[np.maximum(ii, 0)] <= max_age)
            if actions == "commands":
                # The command answering observation k arrives after it: take the latest one up to t_k+1, but not
                # one received after the next image, which answers that image. Without the second bound a tick
                # that falls late in a frame's interval gets the next frame's command (an off-by-one label).
                following = i_stamps[np.minimum(ii + 1, i_stamps.size - 1)] - 1
                following = np.where(ii + 1 < i_stamps.size, following, np.iinfo(np.int64).max)
                ci = _latest_index(c_stamps, np.minimum(ticks + period, following))
                valid &= ci >= 0
                # Keep the ticks between the episode's first and last command: before, nothing was commanded
                # yet; after, no command answered the observation.
                valid &= c_stamps[np.maximum(ci, 0)] > start
                in_episode = c_stamps[(c_stamps > start) & (c_stamps <= end + period)]
                valid &= ticks <= (in_episode[-1] if in_episode.size else start - 1)
            report.skipped_ticks += int((~valid).sum())
            ticks, ji, ii = ticks[valid], ji[valid], ii[valid]
            if actions == "next_state":
                if ticks.size < 2:
                    continue
                act = j_pos[ji[1:]]
                ticks, ji, ii = ticks[:-1], ji[:-1], ii[:-1]
            else:
                ci = ci[valid]
                act = np.stack([_command_vector(commands[c], names) for c in ci]) if ci.size else np.zeros((0, 7))
            if ticks.size < min_steps:
                report.notes.append(f"{bag}: an episode of {ticks.size} usable ticks (< {min_steps}) was not written")
                continue
            img_cache: dict[int, np.ndarray] = {}
            frames = []
            for k in ii:
                if k not in img_cache:
                    img_cache[int(k)] = _decode_image(images[k].msg, image_size)
                frames.append(img_cache[int(k)])
            text = next((txt for stamp, txt in reversed(instructions) if stamp <= ticks[-1]), "")
            success = marked_success
            if success is None:
                in_ep = [s for stamp, s in successes if start <= stamp <= end]
                success = bool(in_ep and in_ep[-1])
            ep = Episode(
                observations={"image": np.stack(frames), "joint_pos": j_pos[ji], "joint_vel": j_vel[ji]},
                actions=act,
                instruction=text,
                task=task or infer_task(text),
                seed=None,
                success=bool(success),
                meta={
                    "joint_names": names,
                    "joint_limits": np.asarray(limits, dtype=np.float64),
                    "control_rate_hz": float(rate_hz),
                    "image_size": int(image_size),
                    "source": "rosbag",
                    "bag": str(bag),
                    "bag_custom_data": bag_report.custom_data,
                    "action_source": actions,
                    "start_ns": int(start),
                },
            )
            path = write_episode(out, ep)
            report.files.append(str(path))
            report.episodes_written += 1
            report.steps_written += len(ep)

    for bag in iterator:
        try:
            convert_one(bag)
        except ValueError as err:
            if not report.episodes_written:
                raise
            # Keep what earlier bags gave (never silently dropped) and say so.
            raise ValueError(f"{err}. The {report.episodes_written} episodes converted from the bags before it are in "
                             f"{out} and stay there; convert the remaining bags separately") from err
    return report


def _default_joint_names(first_message_names: list[str]) -> list[str]:
    """Our arm's joints when the bag has them all (extra joints such as a mimic finger are ignored), else the
    joints of the first /joint_states message, in its order."""
    from gato_ros.sim.env import JOINT_NAMES

    if set(JOINT_NAMES) <= set(first_message_names):
        return list(JOINT_NAMES)
    return first_message_names


def _default_limits(names: Sequence[str]) -> np.ndarray:
    """Joint limits of our sim arm (UR5e + gripper) for its joint names; others need explicit limits."""
    from gato_ros.sim.env import JOINT_NAMES, ArmEnv

    if list(names) != list(JOINT_NAMES):
        raise ValueError(f"joints {list(names)} are not the sim arm's; pass joint_limits (e.g. from a bundle)")
    env = ArmEnv()
    try:
        return env.joint_limits
    finally:
        close = getattr(env, "close", None)
        if close:
            close()
