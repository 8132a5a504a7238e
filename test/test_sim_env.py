"""The sim world: the scene loads and steps cleanly, episodes are deterministic per seed, the contract holds."""
import numpy as np
import pytest

from gato_ros.sim import JOINT_NAMES, ArmEnv, EnvConfig, RandomPolicy, ScriptedExpert
from gato_ros.sim.backend import import_mujoco, sim_dir

mujoco = import_mujoco()


@pytest.fixture(scope="module")
def env():
    e = ArmEnv(EnvConfig())
    yield e
    e.close()


def test_scene_loads_and_steps_with_random_controls_without_warnings():
    model = mujoco.MjModel.from_xml_path(str(sim_dir() / "scene.xml"))
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
    rng = np.random.default_rng(0)
    lo, hi = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
    for _ in range(100):  # 100 random targets held for 50 ms each: 5 s of flailing
        data.ctrl[:] = rng.uniform(lo, hi)
        mujoco.mj_step(model, data, nstep=25)
    assert np.all(np.isfinite(data.qpos))
    warnings = {mujoco.mjtWarning(i).name: int(data.warning[i].number) for i in range(len(data.warning))}
    assert not any(warnings.values()), warnings


def test_arm_follows_published_ur5e_ranges(env):
    limits = env.joint_limits
    assert limits.shape == (7, 2)
    two_pi = 6.28319
    np.testing.assert_allclose(limits[[0, 1, 3, 4, 5]], [[-two_pi, two_pi]] * 5, atol=1e-4)
    np.testing.assert_allclose(limits[2], [-3.1415, 3.1415])  # elbow: +-pi (Menagerie ur5e.xml)
    np.testing.assert_allclose(limits[6], [0.0, 0.0425])  # 2F-85 stroke / 2 per finger
    assert env.joint_names == list(JOINT_NAMES)


def test_observation_contract(env):
    obs, info = env.reset(seed=1, options={"task": "reach"})
    assert set(obs) == {"image", "joint_pos", "joint_vel"}
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (64, 64, 3)
    assert obs["joint_pos"].dtype == np.float64 and obs["joint_pos"].shape == (7,)
    assert obs["joint_vel"].dtype == np.float64 and obs["joint_vel"].shape == (7,)
    assert obs["image"].std() > 10  # a real rendered scene, not a blank buffer
    assert info["instruction"].startswith("reach the ") and info["task"] == "reach" and info["success"] is False
    obs2, reward, terminated, truncated, info2 = env.step(obs["joint_pos"])
    assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
    assert {"instruction", "task", "success"} <= set(info2)
    assert env.sim_time == pytest.approx(0.05)


def _rollout(env, seed, task, steps=25):
    obs, info = env.reset(seed=seed, options={"task": task})
    expert = ScriptedExpert(env)
    expert.set_instruction(info["instruction"])
    images, qs = [obs["image"]], [obs["joint_pos"]]
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        images.append(obs["image"])
        qs.append(obs["joint_pos"])
        if terminated or truncated:
            break
    return info["instruction"], np.stack(images), np.stack(qs)


def test_same_seed_gives_identical_episode(env):
    a = _rollout(env, 7, "pick_place")
    b = _rollout(env, 7, "pick_place")
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])


def test_different_seeds_give_different_layouts(env):
    layouts = set()
    for seed in range(8):
        env.reset(seed=seed, options={"task": "pick_place"})
        layouts.add((env.instruction, tuple((o.body, o.colour, o.slot) for o in env.layout.objects)))
    assert len(layouts) >= 7


def test_only_the_instruction_disambiguates_the_target(env):
    for seed in range(20):
        env.reset(seed=seed, options={"task": "reach"})
        objects = env.layout.objects
        target = env.layout.object(env.layout.target)
        assert env.instruction == f"reach the {target.colour} {target.kind}"
        # Default scheme: four different colours, so the colour word picks exactly one object.
        assert len({o.colour for o in objects}) == 4 and len(objects) == 4
        env.reset(seed=seed, options={"task": "pick_place"})
        kinds = [o.kind for o in env.layout.objects]
        assert kinds.count("cube") == 3 and kinds.count("bowl") == 2
        cubes = [o for o in env.layout.objects if o.kind == "cube"]
        bowls = [o for o in env.layout.objects if o.kind == "bowl"]
        assert len({o.colour for o in cubes}) == 3 and len({o.colour for o in bowls}) == 2
        # Default "rows" scheme: cubes fill the near row, bowls sit in the far row.
        assert sorted(o.slot for o in cubes) == [3, 4, 5] and all(o.slot in (0, 1, 2) for o in bowls)
    with ArmEnv(EnvConfig(pick_place_layout="any")) as anywhere:
        slots = set()
        for seed in range(20):
            anywhere.reset(seed=seed, options={"task": "pick_place"})
            slots |= {o.slot for o in anywhere.layout.objects if o.kind == "cube"}
        assert slots == set(range(6))
    with ArmEnv(EnvConfig(reach_distractors="attribute")) as hard:
        for seed in range(20):
            hard.reset(seed=seed, options={"task": "reach"})
            target = hard.layout.object(hard.layout.target)
            others = [o for o in hard.layout.objects if o is not target]
            assert any(o.colour == target.colour for o in others) and any(o.kind == target.kind for o in others)
            assert not any(o.colour == target.colour and o.kind == target.kind for o in others)


def test_bad_input_raises_value_error_naming_what_was_expected(env):
    with pytest.raises(ValueError, match="unknown task 'stack'.*pick_place"):
        env.reset(seed=0, options={"task": "stack"})
    env.reset(seed=0, options={"task": "reach"})
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(6))
    bad = np.zeros(7)
    bad[2] = np.nan
    with pytest.raises(ValueError, match="elbow_joint"):
        env.step(bad)
    with pytest.raises(ValueError, match="image_size"):
        EnvConfig(image_size=8)
    with pytest.raises(ValueError, match="unknown task"):
        EnvConfig(task="fly")
    with pytest.raises(ValueError, match="pick_place_layout"):
        EnvConfig(pick_place_layout="stacked")


def test_targets_beyond_the_limits_are_clipped_like_a_real_arm(env):
    env.reset(seed=0, options={"task": "reach"})
    target = np.array([0.0, -1.5708, 10.0, -1.5708, -1.5708, 0.0, 1.0])  # elbow and gripper far beyond range
    for _ in range(40):
        obs, *_ = env.step(target)
    assert obs["joint_pos"][2] <= 3.1415 + 0.05
    assert obs["joint_pos"][6] <= 0.0425 + 1e-3
    assert obs["joint_pos"][2] > 2.5  # it did move toward the clipped target


def test_random_policy_stays_in_limits_and_fails(env):
    policy = RandomPolicy(env.joint_limits, seed=0)
    obs, info = env.reset(seed=3, options={"task": "reach"})
    policy.reset()
    for _ in range(60):
        a = policy.act(obs)
        assert np.all(a >= env.joint_limits[:, 0]) and np.all(a <= env.joint_limits[:, 1])
        obs, _, terminated, truncated, info = env.step(a)
        if terminated or truncated:
            break
    assert truncated and not info["success"]
    assert not any(int(w.number) for w in env.data.warning), "MuJoCo warnings while a random policy flails"


def test_camera_intrinsics_project_an_object_onto_its_pixels(env):
    """K from fovy, with the camera pose, maps the target's centre onto pixels of the target's colour."""
    from gato_ros.sim.tasks import COLOURS

    for seed in range(4):
        obs, _ = env.reset(seed=seed, options={"task": "pick_place"})
        intr = env.camera_intrinsics()
        cam = env.data.cam("camera")
        rot = cam.xmat.reshape(3, 3)  # columns: camera x (right), y (up), z (backward) in world
        p = rot.T @ (env.data.body(env.layout.target).xpos - cam.xpos)
        u = intr["cx"] + intr["fx"] * p[0] / -p[2]
        v = intr["cy"] - intr["fy"] * p[1] / -p[2]
        pixel = obs["image"][int(round(v)), int(round(u))].astype(float) / 255
        colour = np.array(COLOURS[env.layout.object(env.layout.target).colour])
        assert np.argmax(pixel) == np.argmax(colour) or np.linalg.norm(pixel - colour) < 0.35, (seed, pixel, colour)
    assert intr["K"].shape == (3, 3) and intr["width"] == 64


def test_joint_state_lists_every_robot_joint(env):
    env.reset(seed=0, options={"task": "reach"})
    names, pos, vel = env.joint_state()
    assert names[:7] == list(JOINT_NAMES) and "gripper_right_joint" in names
    assert pos.shape == vel.shape == (len(names),)
    # The mimic finger follows the driven one.
    assert pos[names.index("gripper_right_joint")] == pytest.approx(pos[6], abs=2e-3)


def test_image_size_is_configurable():
    with ArmEnv(EnvConfig(image_size=96)) as e:
        obs, _ = e.reset(seed=0)
        assert obs["image"].shape == (96, 96, 3)
        frame = e.render_video_frame(size=192)
        assert frame.shape == (192, 192, 3)


def test_any_control_rate_gets_whole_substeps():
    with ArmEnv(EnvConfig(control_rate_hz=30.0)) as e:
        assert e.substeps * e.model.opt.timestep == pytest.approx(1 / 30) and e.model.opt.timestep <= 0.002
        obs, _ = e.reset(seed=0, options={"task": "reach"})
        e.step(obs["joint_pos"])
        assert e.sim_time == pytest.approx(1 / 30)
    with pytest.raises(ValueError, match="must divide the control period"):
        ArmEnv(EnvConfig(physics_timestep=0.003))
