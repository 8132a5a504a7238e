"""The MuJoCo world: UR5e + gripper on a table, a scene camera, language-conditioned tasks and a scripted expert.

    from gato_ros.sim import ArmEnv, EnvConfig, ScriptedExpert
    env = ArmEnv(EnvConfig(image_size=64))
    obs, info = env.reset(seed=0, options={"task": "pick_place"})
    expert = ScriptedExpert(env)
    expert.reset(); expert.set_instruction(info["instruction"])
    obs, reward, terminated, truncated, info = env.step(expert.act(obs))

Imports mujoco (with a headless GL backend chosen first) and numpy only; never rclpy or torch.
"""
from gato_ros.sim.env import ACTUATOR_NAMES, JOINT_NAMES, ROBOT_JOINT_NAMES, ArmEnv, EnvConfig
from gato_ros.sim.expert import RandomPolicy, ScriptedExpert
from gato_ros.sim.tasks import COLOURS, SHAPES, TASKS, get_task

__all__ = [
    "ACTUATOR_NAMES",
    "ArmEnv",
    "COLOURS",
    "EnvConfig",
    "JOINT_NAMES",
    "ROBOT_JOINT_NAMES",
    "RandomPolicy",
    "SHAPES",
    "ScriptedExpert",
    "TASKS",
    "get_task",
]
