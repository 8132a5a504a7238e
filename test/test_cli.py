"""Every `gato-ros` subcommand answers --help, and the console scripts are installed (issue 2: --help everywhere)."""
import shutil
import subprocess
import sys

import pytest

from gato_ros.cli import SUBCOMMANDS


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gato_ros.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_subcommand():
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name):
    out = _cli(name, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: gato-ros {name}")


def test_dataset_subcommands_have_help():
    for sub in ("info", "from-bags"):
        out = _cli("dataset", sub, "--help")
        assert out.returncode == 0, out.stderr
        assert f"gato-ros dataset {sub}" in out.stdout


def test_unknown_subcommand_is_a_clear_error():
    out = _cli("fly")
    assert out.returncode == 2 and "unknown command 'fly'" in out.stderr


def test_help_needs_neither_torch_nor_rclpy():
    code = "import sys; from gato_ros.cli import main; main(['--help']); " \
           "assert 'torch' not in sys.modules and 'rclpy' not in sys.modules and 'mujoco' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("script", ["gato-ros", "gato_policy_node", "gato_sim_node", "gato_recorder_node"])
def test_console_scripts_are_installed(script):
    assert shutil.which(script) or (sys.prefix and shutil.which(script, path=f"{sys.prefix}/bin")), script
