"""ament_python package definition for gato_ros.

Works both under colcon (a ROS 2 workspace) and under plain pip (`make demo` / `make test` build `.venv` with
`pip install -e '.[all]'`). Dependencies are split so a robot computer needs no torch:

  core  numpy + ONNX Runtime: tokenizer, runtime policy, safety filter, dataset reading
  sim   MuJoCo and video/plot writers
  train torch (pinned CPU build), onnx, transformers (benchmark peer)
  ros   the PyPI ROS 2 Kilted wheels, for machines without a ROS 2 distro (a distro install provides rclpy itself)
  dev   test tools
"""
import os
from glob import glob

from setuptools import find_packages, setup

package_name = "gato_ros"


def tree(src: str, dst_root: str) -> list[tuple[str, list[str]]]:
    """data_files entries that install every file under `src` into share/gato_ros/<src>, keeping the layout."""
    entries = []
    for dirpath, _, filenames in os.walk(src):
        files = [os.path.join(dirpath, f) for f in filenames if not f.endswith((".pyc", ".tmp"))]
        if files:
            entries.append((os.path.join(dst_root, dirpath), files))
    return entries


share = os.path.join("share", package_name)
data_files = [
    ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
    (share, ["package.xml"]),
    (os.path.join(share, "launch"), glob("launch/*.py")),
    (os.path.join(share, "config"), glob("config/*.yaml") + glob("config/*.xml")),
]
data_files += tree("models", share) + tree("sim", share)

ROS_WHEELS = [
    "ros-rclpy",
    "ros-sensor-msgs",
    "ros-std-msgs",
    "ros-trajectory-msgs",
    "ros-std-srvs",
    "ros-diagnostic-msgs",
    "ros-rosgraph-msgs",
    "ros-rmw-fastrtps-cpp",
]

extras = {
    "sim": ["mujoco>=3.2", "imageio>=2.30", "imageio-ffmpeg>=0.5", "matplotlib>=3.8"],
    "train": ["torch==2.13.0", "onnx>=1.16", "onnxscript>=0.1", "transformers>=4.40"],
    "ros": ROS_WHEELS + ["rosbags>=0.10", "rosbags-image>=0.10"],
    "dev": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3"],
}
extras["all"] = sorted({dep for deps in extras.values() for dep in deps})

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=data_files,
    python_requires=">=3.11",
    install_requires=[
        "numpy>=1.26",
        # onnxruntime-gpu carries the CPU provider too; it is published for x86_64 Linux and Windows only.
        "onnxruntime-gpu>=1.18; platform_machine == 'x86_64' and sys_platform != 'darwin'",
        "onnxruntime>=1.18; platform_machine != 'x86_64' or sys_platform == 'darwin'",
        "pyyaml>=6",
        "tqdm>=4.60",
    ],
    extras_require=extras,
    zip_safe=False,
    maintainer="gato_ros maintainers",
    maintainer_email="maintainers@gato-ros.dev",
    description="A Gato-style generalist transformer in the control loop of a ROS 2 robot arm.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "gato-ros = gato_ros.cli:main",
            "gato_policy_node = gato_ros.ros.policy_node:main",
            "gato_sim_node = gato_ros.ros.sim_node:main",
            "gato_recorder_node = gato_ros.ros.recorder_node:main",
        ],
    },
)
