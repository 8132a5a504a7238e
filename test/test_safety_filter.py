"""Safety filter: unit tests and the property that every command is inside the limits and the step limit."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gato_ros.safety import SafetyConfig, SafetyFilter

LOWER = np.array([-6.28, -6.28, -3.14, -6.28, -6.28, -6.28, 0.0])
UPPER = np.array([6.28, 6.28, 3.14, 6.28, 6.28, 6.28, 0.04])
STEP = np.array([0.1] * 6 + [0.005])


def make(enable: bool = True) -> SafetyFilter:
    return SafetyFilter(SafetyConfig(LOWER, UPPER, STEP, enable_on_start=enable))


def test_starts_disabled_by_default_and_holds():
    f = SafetyFilter(SafetyConfig(LOWER, UPPER, STEP))
    d = f.step(np.zeros(7), np.zeros(7))
    assert d.holding and "disabled" in d.reason and "~/enable" in d.reason


def test_step_limit_from_measured_then_from_last_command():
    f = make()
    d = f.step(np.full(7, 1.0), np.zeros(7))
    np.testing.assert_allclose(d.command, np.minimum(STEP, UPPER))
    assert d.clamped
    d2 = f.step(np.full(7, 1.0), np.zeros(7))  # measured is ignored once a sequence runs
    np.testing.assert_allclose(d2.command, np.minimum(2 * STEP, UPPER))


def test_joint_limits_clamp_even_when_close():
    f = make()
    measured = UPPER - 0.01
    d = f.step(UPPER + 5.0, measured)
    assert np.all(d.command <= UPPER) and np.all(d.command >= LOWER)


def test_non_finite_action_holds_and_does_not_move_reference():
    f = make()
    first = f.step(np.full(7, 0.01), np.zeros(7)).command
    bad = np.full(7, 0.02)
    bad[3] = np.nan
    d = f.step(bad, np.zeros(7))
    assert d.holding and "finite" in d.reason
    np.testing.assert_array_equal(f.last_command, first)
    assert f.step(np.full(7, np.inf), np.zeros(7)).holding
    assert f.step(np.zeros(6), np.zeros(7)).holding  # wrong length


def test_caller_hold_reason_is_reported():
    f = make()
    d = f.step(np.zeros(7), np.zeros(7), hold="image is 0.4 s old")
    assert d.holding and d.reason == "image is 0.4 s old"


def test_estop_latches_until_reset_and_enable():
    f = make()
    f.step(np.zeros(7), np.zeros(7))
    f.estop("button pressed")
    assert f.step(np.zeros(7), np.zeros(7)).holding
    with pytest.raises(RuntimeError, match="reset the e-stop"):
        f.enable()
    f.reset_estop()
    d = f.step(np.zeros(7), np.zeros(7))
    assert d.holding and "disabled" in d.reason  # a reset alone never restarts motion
    f.enable()
    assert not f.step(np.zeros(7), np.zeros(7)).holding


def test_reenable_restarts_sequence_from_measured_position():
    f = make()
    f.step(np.full(7, 0.01), np.zeros(7))
    f.disable()
    f.enable()
    measured = np.full(7, 0.5)
    measured[6] = 0.02
    d = f.step(measured, measured)
    np.testing.assert_allclose(d.command, measured)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="lower > upper"):
        SafetyConfig([1.0], [0.0], [0.1])
    with pytest.raises(ValueError, match="max_step must be > 0"):
        SafetyConfig([0.0], [1.0], [0.0])
    with pytest.raises(ValueError, match="finite"):
        SafetyConfig([0.0], [np.inf], [0.1])


floats = st.floats(allow_nan=True, allow_infinity=True, width=64, min_value=None, max_value=None)
vectors = st.lists(floats, min_size=7, max_size=7).map(np.array)
events = st.one_of(
    st.tuples(st.just("tick"), vectors, vectors, st.sampled_from([None, None, None, "stale image"])),
    st.tuples(st.sampled_from(["enable", "disable", "estop", "reset_estop", "restart"]), st.none(), st.none(), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(events, min_size=1, max_size=60))
def test_property_every_command_within_limits_and_step(enable_on_start, script):
    """For any sequence of model outputs (NaN/inf included), joint states and operator events, every command is
    finite, inside the limits, and within max_step of the reference (previous command, or the clamped measured
    position when a sequence starts)."""
    f = make(enable_on_start)
    previous = None
    for kind, action, measured, hold in script:
        if kind == "tick":
            was_new_sequence = f.last_command is None
            d = f.step(action, measured, hold=hold)
            if d.command is None:
                continue
            cmd = d.command
            assert np.all(np.isfinite(cmd))
            assert np.all(cmd >= LOWER) and np.all(cmd <= UPPER)
            ref = np.clip(measured, LOWER, UPPER) if was_new_sequence else previous
            assert np.all(np.abs(cmd - ref) <= STEP + 1e-12)
            np.testing.assert_array_equal(d.reference, ref)  # what the decision says it stepped from
            previous = cmd
        elif kind == "enable":
            if not f.estopped:
                f.enable()
        elif kind == "disable":
            f.disable()
        elif kind == "estop":
            f.estop("test")
            assert f.step(np.zeros(7), np.zeros(7)).holding
        elif kind == "reset_estop":
            f.reset_estop()
        elif kind == "restart":
            f.restart_sequence()


def test_limited_policy_filters_as_the_node_does():
    """`LimitedPolicy` (eval --node-limits): enabled from the start even when the config is not; each episode starts
    from the measured position; counts clamped actions; a non-finite action repeats the last command."""
    from gato_ros.safety import LimitedPolicy

    class Scripted:
        def __init__(self, actions):
            self.actions, self.resets, self.instruction = list(actions), 0, None

        def reset(self):
            self.resets += 1

        def set_instruction(self, text):
            self.instruction = text

        def act(self, observation):
            return self.actions.pop(0)

    far, near, bad = np.full(7, 1.0), np.full(7, 0.01), np.full(7, np.nan)
    inner = Scripted([far, near, bad, far])
    p = LimitedPolicy(inner, SafetyConfig(LOWER, UPPER, STEP))  # enable_on_start False: still commands
    p.reset()
    p.set_instruction("go")
    assert inner.resets == 1 and inner.instruction == "go" and p.actions == inner.actions  # the rest passes through
    home = {"joint_pos": np.zeros(7)}
    first = p.act(home)
    np.testing.assert_allclose(first, np.minimum(STEP, UPPER))  # from the measured position, step-limited
    second = p.act(home)
    np.testing.assert_allclose(second, np.full(7, 0.01))  # within the step of the first: unchanged
    np.testing.assert_allclose(p.act(home), second)  # NaN: the last command again
    assert p.clamped == 1
    p.reset()  # a new episode: from the measured position again, not from the last command
    moved = {"joint_pos": np.full(7, 0.5)}
    np.testing.assert_allclose(p.act(moved), np.minimum(0.5 + STEP, UPPER))
    assert p.clamped == 2 and p.clamped_per_episode == [0, 1, 1]  # before any episode, then one per reset
