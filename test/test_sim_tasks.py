"""Task predicates: surface distances of each shape, and pick_place success only once the cube is let go."""
import numpy as np
import pytest

from gato_ros.sim import ArmEnv, EnvConfig, ScriptedExpert
from gato_ros.sim.tasks import REACH_SUCCESS_DISTANCE, surface_distance


@pytest.fixture(scope="module")
def env():
    e = ArmEnv(EnvConfig(position_jitter=0.0, yaw_jitter=0.0))
    yield e
    e.close()


def test_surface_distance_of_each_shape(env):
    env.reset(seed=0, options={"task": "reach"})
    for o in env.layout.objects:
        centre = env.data.body(o.body).xpos.copy()
        size = env.model.geom(o.body).size
        top = {"cube": size[2], "ball": size[0], "cylinder": size[1]}[o.kind]
        assert surface_distance(env.model, env.data, o.body, centre) == 0.0  # inside
        above = centre + [0, 0, top + 0.02]
        assert surface_distance(env.model, env.data, o.body, above) == pytest.approx(0.02, abs=1e-3)
        side = {"cube": size[0], "ball": size[0], "cylinder": size[0]}[o.kind]
        beside = centre + [0, side + 0.05, 0]
        assert surface_distance(env.model, env.data, o.body, beside) == pytest.approx(0.05, abs=1e-3)


def test_reach_success_is_the_3cm_rule(env):
    obs, info = env.reset(seed=1, options={"task": "reach"})
    assert not info["success"]  # the home pose is far from every object
    assert REACH_SUCCESS_DISTANCE == 0.03


def test_pick_place_succeeds_only_after_release(env):
    obs, info = env.reset(seed=2, options={"task": "pick_place"})
    expert = ScriptedExpert(env)
    seen = {}
    done = False
    while not done:
        action = expert.act(obs)
        obs, _, terminated, truncated, info = env.step(action)
        seen.setdefault(expert.phase, []).append(info["success"])
        done = terminated or truncated
    # While carried and lowered over the bowl the cube is not "in" it; success comes after the fingers open.
    assert not any(seen["carry"]) and not any(seen["lower"])
    assert info["success"] and terminated
    cube = env.data.body(env.layout.target).xpos
    bowl = env.data.body(env.layout.receptacle).xpos
    assert np.hypot(*(cube[:2] - bowl[:2])) < 0.055


def test_point_above_shares_reach_layouts_and_defaults_stay():
    from gato_ros.sim.tasks import TASKS, VARIANTS, get_task, task_names

    # The original tasks (default rotation, "all") are unchanged; the variant is known only by name.
    assert sorted(TASKS) == ["pick_place", "reach"] and "point_above" in VARIANTS
    assert task_names() == ["pick_place", "reach", "point_above"]
    assert get_task("point_above").name == "point_above"
    assert get_task("point_above", reach_distractors="attribute").distractors == "attribute"
    with pytest.raises(ValueError, match="point_above"):
        get_task("wave")
    e = ArmEnv(EnvConfig())
    try:
        for seed in (0, 7, 123):
            e.reset(seed=seed, options={"task": "reach"})
            reach = e.layout
            _, info = e.reset(seed=seed, options={"task": "point_above"})
            assert e.layout.objects == reach.objects and e.layout.target == reach.target
            assert info["instruction"] == reach.instruction.replace("reach the", "point above the")
            assert not info["success"]  # the home pose is 36 cm up and not over an object
    finally:
        e.close()


def test_point_above_needs_height_position_and_stillness(env):
    from gato_ros.sim.tasks import POINT_ABOVE_HEIGHT, VARIANTS

    task = VARIANTS["point_above"]
    env.reset(seed=4, options={"task": "point_above"})
    expert = ScriptedExpert(env)
    obs, done, info = env.observation(), False, {}
    while not done:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        done = terminated or truncated
    assert info["success"] and info["step"] <= 25
    tcp, centre = env.data.site("tcp").xpos, env.data.body(env.layout.target).xpos
    assert abs(tcp[2] - POINT_ABOVE_HEIGHT) < 0.01 and np.hypot(*(tcp[:2] - centre[:2])) < 0.01
    # Moving through the same place does not count.
    from gato_ros.sim.env import mujoco

    assert task.success(env.model, env.data, env.layout)
    env.data.qvel[env.model.joint("shoulder_pan_joint").dofadr[0]] = 0.5
    mujoco.mj_forward(env.model, env.data)
    assert not task.success(env.model, env.data, env.layout)


def test_reaching_never_counts_as_pointing(env):
    """The reach expert's whole path, judged by point_above: never a success (the variant is a new goal)."""
    from gato_ros.sim.tasks import VARIANTS

    task = VARIANTS["point_above"]
    for seed in range(10):
        obs, _ = env.reset(seed=seed, options={"task": "reach"})
        expert = ScriptedExpert(env)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(expert.act(obs))
            assert not task.success(env.model, env.data, env.layout)
            done = terminated or truncated


def _run_expert(env, seed, task, stop_phase=None):
    obs, _ = env.reset(seed=seed, options={"task": task})
    expert = ScriptedExpert(env)
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(expert.act(obs))
        done = terminated or truncated or (stop_phase is not None and expert.phase == stop_phase)
    return env.layout


def test_outcomes_name_where_an_episode_went(env):
    """Each task's `outcome` on staged end states: the expert's, and the same state judged against a layout that
    names another object (as if the policy had gone to the wrong one)."""
    import dataclasses

    from gato_ros.sim.env import mujoco
    from gato_ros.sim.tasks import OUTCOME_HELP, VARIANTS, get_task

    reach, pick, point = get_task("reach"), get_task("pick_place"), VARIANTS["point_above"]
    m, d = env.model, env.data
    lay = _run_expert(env, 3, "reach")
    other = next(o.body for o in lay.objects if o.body != lay.target)
    assert reach.outcome(m, d, lay) == "success" == env.outcome()
    assert reach.outcome(m, d, dataclasses.replace(lay, target=other)) == "other object"
    assert point.outcome(m, d, lay) == "too low"  # reaching ends 7.5 cm up: pointing needs 20 cm

    lay = _run_expert(env, 4, "point_above")
    assert point.outcome(m, d, lay) == "success"
    other = next(o.body for o in lay.objects if o.body != lay.target)
    assert point.outcome(m, d, dataclasses.replace(lay, target=other)) == "other object"
    d.qvel[m.joint("shoulder_pan_joint").dofadr[0]] = 0.5
    mujoco.mj_forward(m, d)
    assert point.outcome(m, d, lay) == "moving"

    env.reset(seed=5, options={"task": "pick_place"})
    assert env.outcome() == "untouched"
    lay = _run_expert(env, 5, "pick_place", stop_phase="carry")
    assert env.outcome() == "held"
    lay = _run_expert(env, 5, "pick_place")
    assert env.outcome() == "success"
    bowls = [o.body for o in lay.objects if o.kind == "bowl"]
    other_bowl = next(b for b in bowls if b != lay.receptacle)
    assert pick.outcome(m, d, dataclasses.replace(lay, receptacle=other_bowl)) == "other bowl"
    other_cube = next(o.body for o in lay.objects if o.kind == "cube" and o.body != lay.target)
    assert pick.outcome(m, d, dataclasses.replace(lay, target=other_cube)) == "other cube"
    # The named cube set down on the table, away from both bowls and from where it started.
    adr = m.jnt_qposadr[m.body(lay.target).jntadr[0]]
    start = np.asarray(lay.object(lay.target).xy)
    d.qpos[adr:adr + 2] = start + [0.0, 0.12] if start[1] < 0.2 else start - [0.0, 0.12]
    mujoco.mj_forward(m, d)
    assert pick.outcome(m, d, lay) == "dropped"
    assert {"success", "other object", "too low", "moving", "held", "untouched", "other bowl", "other cube",
            "dropped"} <= set(OUTCOME_HELP)
