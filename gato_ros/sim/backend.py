"""Pick a headless OpenGL backend for MuJoCo before it is imported, and find the scene files.

MuJoCo reads `MUJOCO_GL` once, at import. Headless machines need `egl` (Mesa's llvmpipe renders on the CPU when
there is no GPU) or, where libEGL is missing, `osmesa`. An explicit user setting always wins.
"""
from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path


def choose_gl_backend() -> str:
    """Set `MUJOCO_GL` (and PyOpenGL's platform) if unset; return the backend in use."""
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not backend:
        if ctypes.util.find_library("EGL"):
            backend = "egl"
        elif ctypes.util.find_library("OSMesa"):
            backend = "osmesa"
        else:
            backend = "glfw"  # a desktop session; MuJoCo's own default
        os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def import_mujoco():
    """Import mujoco with a headless backend chosen first (use this instead of a bare `import mujoco`)."""
    choose_gl_backend()
    import mujoco

    return mujoco


def sim_dir() -> Path:
    """The directory holding scene.xml/arm.xml.

    Search order: $GATO_ROS_SIM_DIR, the source checkout (<repo>/sim), the install prefix
    (<prefix>/share/gato_ros/sim, where setup.py's data_files put it), then the ament index (a colcon workspace).
    """
    candidates = []
    if os.environ.get("GATO_ROS_SIM_DIR"):
        candidates.append(Path(os.environ["GATO_ROS_SIM_DIR"]))
    candidates.append(Path(__file__).resolve().parents[2] / "sim")
    candidates.append(Path(sys.prefix) / "share" / "gato_ros" / "sim")
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("gato_ros")) / "sim")
    except Exception:  # ament_index is absent outside a ROS workspace; not an error
        pass
    for c in candidates:
        if (c / "scene.xml").is_file():
            return c
    raise FileNotFoundError(
        "cannot find the sim model scene.xml; looked in " + ", ".join(str(c) for c in candidates)
        + ". Set GATO_ROS_SIM_DIR to the folder holding scene.xml."
    )
