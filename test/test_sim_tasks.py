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
