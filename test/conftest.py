"""Test-wide environment: DDS stays on loopback in a private domain, MuJoCo renders headless.

Set before any test module imports rclpy or mujoco (conftest is imported first).
"""
import os
import random

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated alias; the range above is authoritative
# A private domain per test run so parallel runs (or other sessions) never see each other's topics.
# Domain ids 0..101 and 215..232 are safe for Fast DDS port arithmetic; stay inside 1..100.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("GATO_TEST_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
