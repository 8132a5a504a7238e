"""Adversarial input campaigns against a running policy node over real DDS (loopback).

The node runs the real RuntimePolicy on the tiny untrained bundle, enabled, so it moves whenever its inputs allow.
Each campaign floods it with one family of bad messages (hypothesis draws their contents), interleaved with good
ones so the node keeps switching between commanding and holding. After each campaign, on EVERY command the node
published (the harness records them all): finite, inside the joint limits, within the step limit of the previous
one; the node is alive (answers ~/enable, publishes /diagnostics) and reported the problem there; good input makes
it command again. Campaigns are bounded by message counts, never by timing asserts.

| campaign | what arrives | expected report |
|---|---|---|
| images | unknown encodings, zero size, data shorter/longer than step*height, huge declared sizes, real 9 MB frames | conversion error in last_error |
| joint states | NaN/inf, missing joints, duplicate names, arrays of different lengths, empty velocities | conversion error |
| stamps | stamps going backwards, from the future, far in the past, unset | hold reason / last_error |
| floods | images and joint states at 10x their rate | received counts in diagnostics |
| instructions | empty, very long, any unicode | "no instruction" hold, truncation warning |
"""
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (pip install -e '.[ros]') is needed for the ROS tests")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ros_support import HOME, JOINTS, Running, assert_safe_sequence, rgb_image, tiny_bundle  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]
RATE = 20.0
PERIOD = 1.0 / RATE
STEP = np.array([0.1] * 6 + [0.01])
# Node state carries over from one example to the next, so a failure depends on the whole history: shrinking
# would replay a different history (hypothesis would call it flaky). Generate only, deterministically.
CAMPAIGN = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
GOOD_ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]
CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.fixture
def running(bundle):
    """Factory of running policy nodes (each with its harness; streams off until a test starts them)."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    made = []

    def make(**params):
        params = {"enable_on_start": True, "instruction": "reach the red ball", "diagnostics_period_s": 0.2, **params}
        made.append(Running(context, bundle, rate=RATE, **params))
        return made[-1]

    yield make
    for r in made:
        r.close()
    rclpy.try_shutdown(context=context)


@pytest.fixture
def node(running):
    """The campaigns' node. Their harness arm never follows the commands, so after enough commanding the node's
    tracking check (max_tracking_error_rad, 0.5) would restart the sequence from the measured HOME by design (covered
    by test_driver_restart_*), which the campaigns' invariant -- consecutive commands within one step -- does not
    model: the campaigns test malformed input, not tracking, so the check is out of their way."""
    return running(max_tracking_error_rad=100.0)


# ---- helpers ------------------------------------------------------------------------------------------------
def now_stamp(h, offset_s: float = 0.0):
    from builtin_interfaces.msg import Time

    ns = h.node.get_clock().now().nanoseconds + int(offset_s * 1e9)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def joint_state(h, names, positions, velocities=None, stamp=None):
    from sensor_msgs.msg import JointState

    msg = JointState(name=list(names), position=[float(p) for p in positions],
                     velocity=[float(v) for v in (velocities if velocities is not None else [0.0] * len(names))])
    msg.header.stamp = stamp if stamp is not None else now_stamp(h)
    return msg


def good_joints(h):
    return joint_state(h, JOINTS, HOME)


def good_image(h, seed=0):
    msg = rgb_image(64, 64, seed=seed)
    msg.header.stamp = now_stamp(h)
    return msg


def pause(n_messages: int) -> None:
    """Let the node's executor drain what was just published (a bounded count-based pause, not a timing assert)."""
    time.sleep(0.002 * n_messages)


def start_good_streams(h) -> None:
    h.image_msg = rgb_image(64, 64)
    h.joint_names, h.joint_pos = list(JOINTS), HOME.copy()
    h.start_streams(camera_hz=30.0, joints_hz=50.0)


def wait_commanding(h, what: str) -> None:
    since = time.monotonic()
    assert h.wait_for(lambda: len(h.commands_since(since)) >= 3, timeout=20), (
        f"the node did not command again after {what}: {h.last_diagnostics()}")


def assert_campaign_safe(r, expected: str, published: int, commands_before: int) -> None:
    """The node moved during the campaign, the safety invariants hold on every command so far, the node is alive,
    and the problem was reported in /diagnostics."""
    h = r.harness
    assert len(h.commands) > commands_before, f"no command during the campaign; {h.last_diagnostics()}"
    assert_safe_sequence([c for _, c in h.commands], STEP)
    assert h.enable(True).success, "the node does not answer ~/enable after the campaign"
    seen = time.monotonic()
    assert h.wait_for(lambda: any(d["_t"] > seen for d in h.diagnostics[-3:]), timeout=10), "no /diagnostics"
    with h.lock:
        reports = [(d["_level"], d["_message"], d.get("last_error", "")) for d in h.diagnostics]
    assert any(expected in msg or expected in err for _, msg, err in reports), (
        f"{expected!r} never reported in /diagnostics after {published} messages; last: {reports[-1]}")
    assert any(level >= 1 and expected in msg + err for level, msg, err in reports), "reported, but not as WARN"
    assert r.node.ticks > 0 and r.thread.is_alive()


# ---- strategies ---------------------------------------------------------------------------------------------
encodings = st.one_of(st.sampled_from(GOOD_ENCODINGS),
                      st.sampled_from(["yuv422", "16UC1", "32FC1", "bayer_rggb8", "rgb16", "jpeg", "", "RGB8x"]),
                      st.text(max_size=12))


@st.composite
def bad_images(draw):
    """(encoding, height, width, step, data length, big-endian flag): mostly malformed, some valid."""
    enc = draw(encodings)
    ch = CHANNELS.get(enc.lower(), 3)
    h = draw(st.one_of(st.integers(0, 80), st.sampled_from([2**31 - 1, 2**32 - 1, 100_000])))
    w = draw(st.one_of(st.integers(0, 80), st.sampled_from([2**31 - 1, 2**32 - 1, 100_000])))
    step = max(0, min(w * ch + draw(st.sampled_from([0, 0, 0, 7, -1, -w * ch])), 2**32 - 1))
    need = step * h
    size = draw(st.sampled_from([need, need, need - 1, need + 1, need + 1000, need // 2, 0, step * max(h - 1, 0)]))
    size = max(0, min(size, 60_000))  # huge declared sizes arrive with short data
    return enc, h, w, step, size, draw(st.integers(0, 1))


def image_msg(h, enc, height, width, step, size, bigendian, seed):
    from sensor_msgs.msg import Image

    msg = Image(height=height, width=width, encoding=enc, is_bigendian=bigendian, step=step)
    msg.data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    msg.header.stamp = now_stamp(h)
    return msg


@st.composite
def bad_joint_states(draw):
    """(names, positions, velocities) with one or more of the faults a broken driver produces."""
    extra = draw(st.lists(st.sampled_from(["finger_joint", "conveyor", "", "ünïcode_joint"]), max_size=2, unique=True))
    order = draw(st.permutations(range(len(JOINTS) + len(extra))))
    names = [(JOINTS + extra)[k] for k in order]
    values = list(HOME + draw(st.floats(-0.05, 0.05))) + [draw(st.floats()) for _ in extra]  # any float for extras
    pos = [values[k] for k in order]
    vel = [0.0] * len(names)
    faults = draw(st.lists(st.sampled_from(["nan", "inf", "vel_nan", "missing", "duplicate", "short_pos", "long_pos",
                                            "short_vel", "empty_vel", "none"]), min_size=1, max_size=3))
    for fault in faults:
        i = draw(st.integers(0, len(names) - 1)) if names else 0
        if fault == "nan" and i < len(pos):
            pos[i] = float("nan")
        elif fault == "inf" and i < len(pos):
            pos[i] = draw(st.sampled_from([float("inf"), float("-inf")]))
        elif fault == "vel_nan" and i < len(vel):
            vel[i] = float("nan")
        elif fault == "missing" and i < min(len(names), len(pos), len(vel)):
            del names[i], pos[i], vel[i]
        elif fault == "duplicate" and names and pos:
            names.append(names[0]), pos.append(pos[0]), vel.append(0.0)
        elif fault == "short_pos" and pos:
            pos.pop()
        elif fault == "long_pos":
            pos.append(0.0)
        elif fault == "short_vel" and len(vel) > 1:
            vel.pop()
        elif fault == "empty_vel":
            vel = []
    return names, pos, vel


# ---- campaigns ----------------------------------------------------------------------------------------------
def test_image_campaign(node):
    r, h = node, node.harness
    h.joint_names, h.joint_pos = list(JOINTS), HOME.copy()
    h.start_streams(camera_hz=30.0, joints_hz=50.0)  # good joint states throughout; the camera is ours
    h.image_pub.publish(good_image(h))
    wait_commanding(h, "start-up")
    sent, before = 0, len(h.commands)

    @CAMPAIGN
    @given(st.lists(bad_images(), min_size=5, max_size=15), st.integers(0, 2**16))
    def campaign(images, seed):
        nonlocal sent
        for spec in images:
            h.image_pub.publish(image_msg(h, *spec, seed=seed))
            if seed % 3 == 0:
                h.image_pub.publish(good_image(h, seed))  # the node keeps switching between moving and holding
            sent += 1
            time.sleep(0.01)
        assert_safe_sequence([c for _, c in h.commands], STEP)

    campaign()
    # a real 9 MB frame (2000x1500 rgb8), and a 1x200000 mono8 one, which the node refuses (resizing it costs
    # memory in proportion to its longest side)
    for big in (rgb_image(1500, 2000), rgb_image(1, 200_000, "mono8")):
        big.header.stamp = now_stamp(h)
        h.image_pub.publish(big)
        sent += 1
        time.sleep(0.3)
    assert h.wait_for(lambda: "px per side" in h.last_diagnostics().get("last_error", ""), 10)
    h.image_pub.publish(image_msg(h, "yuv422", 32, 32, 64, 2048, 0, seed=1))  # the last word is a bad frame
    assert_campaign_safe(r, "unsupported image encoding 'yuv422'", sent, before)
    assert r.node.images_received > sent // 2
    h.image_msg = rgb_image(64, 64)
    wait_commanding(h, "the image campaign")
    assert_safe_sequence([c for _, c in h.commands], STEP)


def test_joint_state_campaign(node):
    r, h = node, node.harness
    h.image_msg = rgb_image(64, 64)
    h.start_streams(camera_hz=30.0, joints_hz=1e-3)  # good images throughout; the joint states are ours
    h.joint_pub.publish(good_joints(h))
    wait_commanding(h, "start-up")
    sent, before = 0, len(h.commands)

    @CAMPAIGN
    @given(st.lists(bad_joint_states(), min_size=20, max_size=60), st.booleans())
    def campaign(states, interleave):
        nonlocal sent
        for names, pos, vel in states:
            h.joint_pub.publish(joint_state(h, names, pos, vel))
            if interleave:
                h.joint_pub.publish(good_joints(h))
            sent += 1 + interleave
            time.sleep(0.002)
        assert_safe_sequence([c for _, c in h.commands], STEP)

    campaign()
    h.joint_pub.publish(joint_state(h, JOINTS + ["shoulder_pan_joint"], list(HOME) + [0.0]))
    assert_campaign_safe(r, "more than once", sent, before)
    for names, pos, vel, expected in [(JOINTS[1:], HOME[1:], None, "missing ['shoulder_pan_joint']"),
                                      (JOINTS, HOME[:-1], None, "7 names but 6 positions"),
                                      (JOINTS, HOME, [0.0] * 3, "7 names but 3 velocities"),
                                      (JOINTS, HOME + [0, 0, np.inf, 0, 0, 0, 0], None, "non-finite")]:
        h.joint_pub.publish(joint_state(h, names, pos, vel))
        assert h.wait_for(lambda: expected in h.last_diagnostics().get("hold_reason", ""), 10), expected
    for _ in range(100):  # an empty velocity array is allowed: the node commands from these
        h.joint_pub.publish(joint_state(h, JOINTS, HOME, []))
        time.sleep(0.01)
        if len(h.commands_since(time.monotonic() - 0.2)) >= 3:
            break
    assert h.last_diagnostics().get("hold_reason", "x") == "" or len(h.commands_since(time.monotonic() - 1)) >= 3
    assert_safe_sequence([c for _, c in h.commands], STEP)


def test_stamp_campaign(node):
    """Stamps backwards, from the future, far in the past, unset: both sensors, published by the campaign."""
    r, h = node, node.harness
    h.image_pub.publish(good_image(h))
    h.joint_pub.publish(good_joints(h))
    sent, before = 0, len(h.commands)
    offsets = st.one_of(st.floats(-0.2, 0.0), st.sampled_from([-3600.0, 3600.0, 0.5, 1e6, -1e6]), st.just(None))

    @CAMPAIGN
    @given(st.lists(st.tuples(offsets, offsets), min_size=10, max_size=30))
    def campaign(pairs):
        nonlocal sent
        for image_offset, joint_offset in pairs:
            img, js = good_image(h), good_joints(h)
            if image_offset is None:
                img.header.stamp.sec = img.header.stamp.nanosec = 0  # unset: judged by arrival only
            elif image_offset > -1e6:
                img.header.stamp = now_stamp(h, image_offset)
            if joint_offset is not None and joint_offset > -1e6:
                js.header.stamp = now_stamp(h, joint_offset)
            h.image_pub.publish(img)
            h.joint_pub.publish(js)
            sent += 2
            time.sleep(0.005)
        assert_safe_sequence([c for _, c in h.commands], STEP)

    campaign()
    h.image_pub.publish(good_image(h))
    h.joint_pub.publish(joint_state(h, JOINTS, HOME, stamp=now_stamp(h, 3600.0)))
    assert_campaign_safe(r, "s in the future", sent, before)
    start_good_streams(h)
    wait_commanding(h, "the stamp campaign")
    h.stop()
    # a clock that jumps back a little (within sensor_timeout_s): one tick holds and says so
    first = good_joints(h)
    h.image_pub.publish(good_image(h))
    h.joint_pub.publish(first)
    time.sleep(0.12)  # a few ticks judge `first`
    back = first.header.stamp.sec * 1_000_000_000 + first.header.stamp.nanosec - 50_000_000
    h.joint_pub.publish(joint_state(h, JOINTS, HOME, stamp=type(first.header.stamp)(
        sec=back // 1_000_000_000, nanosec=back % 1_000_000_000)))
    assert h.wait_for(lambda: "before the previous one" in h.last_diagnostics().get("last_error", ""), 10)
    assert_safe_sequence([c for _, c in h.commands], STEP)


def test_flood_campaign(node):
    """Images and joint states at 10x their usual rates (300 Hz, 500 Hz) while the node must keep commanding."""
    r, h = node, node.harness
    start_good_streams(h)
    wait_commanding(h, "start-up")
    before = dict(images=r.node.images_received, joints=r.node.joint_states_received, commands=len(h.commands))
    image = rgb_image(120, 160)
    frames = joints = 0
    for i in range(1500):  # 1000 joint states and 500 images, as fast as one publisher thread goes
        if i % 3 == 0:
            image.header.stamp = now_stamp(h)
            h.image_pub.publish(image)
            frames += 1
        else:
            h.joint_pub.publish(good_joints(h))
            joints += 1
        if i % 10 == 0:
            time.sleep(0.01)
    pause(50)
    got_images = r.node.images_received - before["images"]
    got_joints = r.node.joint_states_received - before["joints"]
    assert 0 < got_joints <= joints + 100 and 0 < got_images <= frames + 100  # + the harness's own streams
    assert len(h.commands) > before["commands"], "no command during the flood"
    seen = time.monotonic()
    assert h.wait_for(lambda: any(d["_t"] > seen for d in h.diagnostics[-3:]), timeout=10)
    d = h.last_diagnostics()
    assert int(d["joint_states_received"]) >= before["joints"] + got_joints
    assert int(d["images_received"]) >= before["images"] + got_images
    assert_safe_sequence([c for _, c in h.commands], STEP)
    assert h.enable(True).success


def test_instruction_campaign(node):
    """Empty, very long and arbitrary unicode instructions; each change restarts the episode from the measured
    position, so commands stay step-limited across them."""
    from std_msgs.msg import String

    r, h = node, node.harness
    start_good_streams(h)
    wait_commanding(h, "start-up")
    sent, before = 0, len(h.commands)
    texts = st.one_of(st.just(""), st.text(max_size=40), st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
                      st.integers(1_000, 50_000).map(lambda n: "reach the red ball " * (n // 19)))

    @settings(CAMPAIGN, max_examples=10)
    @given(st.lists(texts, min_size=3, max_size=8))
    def campaign(instructions):
        nonlocal sent
        for text in instructions:
            h.instruction_pub.publish(String(data=text))
            sent += 1
            time.sleep(0.06)
        assert_safe_sequence([c for _, c in h.commands], STEP)

    campaign()
    h.instruction_pub.publish(String(data="reach " * 2000))
    wait_commanding(h, "a very long instruction")
    assert_campaign_safe(r, "only its beginning", sent + 1, before)
    h.instruction_pub.publish(String(data=""))
    assert h.wait_for(lambda: "no instruction yet" in h.last_diagnostics().get("hold_reason", ""), 10)
    h.instruction_pub.publish(String(data="reach the red ball"))
    wait_commanding(h, "the instruction campaign")
    assert_safe_sequence([c for _, c in h.commands], STEP)


# ---- faults -------------------------------------------------------------------------------------------------
class FaultyPolicy:
    """The real RuntimePolicy with faults injected on demand: `act` raises (`fail`) or answers `delay_s` late.
    Everything else is the real policy's; `resets` counts context resets."""

    def __init__(self, inner):
        self.inner, self.fail, self.delay_s, self.resets = inner, False, 0.0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def reset(self):
        self.resets += 1
        self.inner.reset()

    def act(self, observation):
        if self.fail:
            raise RuntimeError("injected inference fault")
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.act(observation)


@pytest.fixture
def faulty(bundle):
    from gato_ros.ros.policy_config import load_policy

    return FaultyPolicy(load_policy(bundle, "cpu", 1))


def moving(running, **params):
    """A node started with `params`, commanding from good streams."""
    r = running(**params)
    start_good_streams(r.harness)
    wait_commanding(r.harness, "start-up")
    return r, r.harness


def assert_holds_then_resumes(h, fault_start: float, expected: str, resume) -> None:
    """At most two commands after the fault began (ticks already in flight), the reason in /diagnostics, and
    commands again once `resume()` removed the fault."""
    assert h.wait_for(lambda: any(expected in d.get("hold_reason", "") + d.get("last_error", "")
                                  for d in h.diagnostics[-5:]), timeout=10), (expected, h.last_diagnostics())
    quiet = time.monotonic()
    time.sleep(6 * PERIOD)
    assert len(h.commands_since(fault_start)) <= 2, "kept commanding through the fault"
    assert h.commands_since(quiet) == [], "kept commanding through the fault"
    assert any(d["_level"] >= 1 for d in h.diagnostics[-3:]), "the hold is not a WARN"
    resume()
    wait_commanding(h, expected)
    assert_safe_sequence([c for _, c in h.commands], STEP)


def test_joint_state_stream_stops_and_resumes(running):
    r, h = moving(running, sensor_timeout_s=2 * PERIOD)
    h.joints_on = False
    stopped = h.last_joint_time
    assert_holds_then_resumes(h, stopped + 2 * PERIOD, "joint state on /joint_states is",
                              lambda: setattr(h, "joints_on", True))


def test_driver_restart_holds_resets_and_resumes_from_the_measured_position(running, faulty):
    r, h = moving(running, policy=faulty)
    resets = faulty.resets
    jumped = HOME + np.array([1.2, 0.0, 0.0, -0.8, 0.0, 0.0, 0.0])  # the driver came back with other positions
    jump = time.monotonic()
    h.joint_pos = jumped
    assert h.wait_for(lambda: "driver restarted" in h.last_diagnostics().get("last_error", ""), 10)
    wait_commanding(h, "the driver restart")
    after = [c for _, c in h.commands_since(jump)]
    old_world = [c for c in after if np.any(np.abs(c - jumped) > STEP)]
    assert len(old_world) <= 1, "commands towards the world before the jump after the hold"
    new = after[len(old_world):]
    assert np.all(np.abs(new[0] - jumped) <= STEP + 1e-9), "the first command after the restart jumps"
    assert_safe_sequence(new, STEP)
    assert_safe_sequence([c for t, c in h.commands if t < jump], STEP)
    assert faulty.resets > resets, "the context was not reset after the world jumped"


class JumpingPolicy(FaultyPolicy):
    """The real policy, whose proposals jump `jump` rad on the first joint when set, up and down in turn (so every
    one is beyond the step limit from the command before, and the commands stay near the measured position)."""

    jump = 0.0
    sign = 1.0

    def act(self, observation):
        out = np.array(self.inner.act(observation), dtype=np.float64)
        self.sign = -self.sign
        out[0] += self.sign * self.jump
        return out


def test_clamped_commands_are_counted_and_marked(running, bundle, capfd):
    """Every command the safety filter changes is marked in ~/timing (4th value) and counted in /diagnostics
    (`clamped_commands`), and the first one per joint is logged; the tiny bundle's own proposals (inside the step
    limits) are not."""
    from gato_ros.ros.policy_config import load_policy

    def commanded_since(t0):
        with h.lock:
            return [d for t, d in h.timing if t >= t0 and d[2] > 0.5]

    jumping = JumpingPolicy(load_policy(bundle, "cpu", 1))
    r, h = moving(running, policy=jumping)
    t0 = time.monotonic()
    assert h.wait_for(lambda: len(commanded_since(t0)) >= 5, timeout=10)
    assert all(len(d) == 4 and d[3] == 0.0 for d in commanded_since(t0)), commanded_since(t0)[-3:]
    assert h.wait_for(lambda: int(h.last_diagnostics().get("commands", "0")) >= 5, timeout=10)
    assert h.last_diagnostics()["clamped_commands"] == "0"
    jumping.jump = 0.5  # 5x the 0.1 rad step limit
    time.sleep(2 * PERIOD)  # ticks in flight may still carry the proposals from before
    t1 = time.monotonic()
    assert h.wait_for(lambda: len(commanded_since(t1)) >= 5, timeout=10)
    assert all(d[3] == 1.0 for d in commanded_since(t1)), commanded_since(t1)[-3:]
    assert h.wait_for(lambda: int(h.last_diagnostics().get("clamped_commands", "0")) >= 5, timeout=10)
    d = h.last_diagnostics()
    assert int(d["clamped_commands"]) <= int(d["commands"]) - 5
    assert_safe_sequence([c for _, c in h.commands], STEP)
    logged = [line for line in capfd.readouterr().err.splitlines() if "safety filter:" in line]
    assert len(logged) == 1 and f"{JOINTS[0]}: the model asked for" in logged[0], logged  # once, for that joint
    assert "over the 0.1 of max_joint_step_rad" in logged[0], logged


class RecordingPolicy(FaultyPolicy):
    """The real policy, logging the node's calls ("reset", "act") in order."""

    def __init__(self, inner):
        super().__init__(inner)
        self.calls: list[str] = []

    def reset(self):
        self.calls.append("reset")
        super().reset()

    def act(self, observation):
        self.calls.append("act")
        return super().act(observation)


def test_an_enable_during_a_tick_takes_effect_wholly_in_the_next_one(running, bundle):
    """~/enable enables the safety filter and asks for a fresh context. When it lands while a tick runs (after the
    tick read the reset request, before it asked the filter), that tick must not act: otherwise it acts on the old
    request state and the next tick resets the episode's context after its first step (seen in eval --ros)."""
    from std_srvs.srv import SetBool

    from gato_ros.ros.policy_config import load_policy

    policy = RecordingPolicy(load_policy(bundle, "cpu", 1))
    r = running(policy=policy, enable_on_start=False)
    h = r.harness
    start_good_streams(h)
    node = r.node
    assert h.wait_for(lambda: h.last_diagnostics().get("state") == "disabled", timeout=10)
    observe, landed = node._observe, []

    def observe_then_enable(*args):
        out = observe(*args)
        if not landed:  # the service's own code, mid-tick (this thread holds no lock here)
            landed.append(node._srv_enable(SetBool.Request(data=True), SetBool.Response()).success)
        return out

    node._observe = observe_then_enable
    assert h.wait_for(lambda: len(h.commands) >= 4, timeout=10), h.last_diagnostics()
    assert landed == [True]
    calls = list(policy.calls)
    first = calls.index("act")
    assert "reset" in calls[:first] and "reset" not in calls[first:first + 6], calls[:first + 6]


def test_inference_raising_holds_and_resumes(running, faulty):
    r, h = moving(running, policy=faulty)
    resets = faulty.resets
    faulty.fail = True
    assert_holds_then_resumes(h, time.monotonic(), "inference failed: RuntimeError: injected inference fault",
                              lambda: setattr(faulty, "fail", False))
    assert faulty.resets > resets, "the context was not reset after the failed ticks"


def test_inference_over_its_deadline_holds_and_resumes(running, faulty):
    r, h = moving(running, policy=faulty, sensor_timeout_s=2 * PERIOD)
    faulty.delay_s = 8 * PERIOD
    slow = time.monotonic()
    assert h.wait_for(lambda: "over the 50 ms control period" in h.last_diagnostics().get("hold_reason", ""), 10), (
        "a hanging tick is not reported while it runs")
    assert_holds_then_resumes(h, slow, "the late action was dropped", lambda: setattr(faulty, "delay_s", 0.0))
    assert int(h.last_diagnostics()["deadline_misses"]) > 0


def test_node_restarted_mid_episode_starts_from_the_measured_position(running):
    r = running()
    h = r.harness
    start_good_streams(h)
    h.joint_pos = HOME + 0.3
    wait_commanding(h, "start-up")
    r.stop_node()
    h.joint_pos = HOME + np.array([0.6, -0.6, 0.6, -0.6, 0.6, -0.6, -0.01])  # moved while no node was running
    restarted = time.monotonic()
    r.start_node()
    wait_commanding(h, "the restart")
    new = [c for _, c in h.commands_since(restarted)]
    assert np.all(np.abs(new[0] - h.joint_pos) <= STEP + 1e-9), "the restarted node's first command jumps"
    assert_safe_sequence(new, STEP)
