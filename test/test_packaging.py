"""colcon (from PyPI) builds both packages into a temporary install space, as a ROS user would.

Checks the ament index entries, the installed launch/config files, the console scripts in
lib/vla_policy_node (where launch_ros looks), and that the install space works when sourced.
"""

import os
from pathlib import Path
import re
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def console_scripts():
    text = (REPO / "setup.py").read_text()
    return re.findall(r'"([\w-]+) = vla_policy_node[\w.]*:main"', text)


@pytest.fixture(scope="module")
def install_space(tmp_path_factory):
    work = tmp_path_factory.mktemp("colcon")
    env = dict(os.environ)
    prefix = str(Path(sys.prefix))
    env["CMAKE_PREFIX_PATH"] = prefix
    env["AMENT_PREFIX_PATH"] = prefix
    # A ROS user's command; vla_msgs lives inside the root package, so it is named explicitly.
    result = subprocess.run(
        [str(VENV_BIN / "colcon"), "--log-base", str(work / "log"), "build",
         "--build-base", str(work / "build"), "--install-base", str(work / "install"),
         "--base-paths", str(REPO), str(REPO / "vla_msgs"),
         "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work / "install"


def test_ament_index_entries(install_space):
    index = "share/ament_index/resource_index"
    assert (install_space / "vla_msgs" / index / "packages" / "vla_msgs").is_file()
    interfaces = (install_space / "vla_msgs" / index / "rosidl_interfaces" / "vla_msgs")
    listed = interfaces.read_text().split()
    for name in ("msg/ActionChunk.msg", "msg/ExecutorStatus.msg", "msg/PolicyStatus.msg",
                 "srv/SetInstruction.srv"):
        assert name in listed
    assert (install_space / "vla_policy_node" / index / "packages" / "vla_policy_node").is_file()


def test_launch_config_and_package_files_are_installed(install_space):
    share = install_space / "vla_policy_node" / "share" / "vla_policy_node"
    for relative in ("package.xml", "launch/aloha.launch.py", "config/aloha.yaml",
                     "config/fastdds.xml"):
        installed = share / relative
        assert installed.is_file(), relative
        assert installed.read_bytes() == (REPO / relative).read_bytes()


def test_every_console_script_is_where_launch_ros_looks(install_space):
    lib = install_space / "vla_policy_node" / "lib" / "vla_policy_node"
    scripts = console_scripts()
    assert {"vla_policy", "chunk_executor", "sim_aloha", "vla-bench"} <= set(scripts)
    for name in scripts:
        assert os.access(lib / name, os.X_OK), name


def test_sourced_install_space_runs(install_space, tmp_path):
    script = (
        f"source {install_space}/setup.bash && cd {tmp_path} && "
        "python -c 'import vla_msgs.msg, vla_msgs.srv; "
        "from vla_policy_node.config import default_config_path; print(default_config_path())'"
        f" && {install_space}/vla_policy_node/lib/vla_policy_node/vla-bench --help")
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    config_path = result.stdout.splitlines()[0]
    # Installed code finds its files through the ament index, not the source tree.
    assert config_path == str(install_space / "vla_policy_node" / "share" / "vla_policy_node"
                              / "config" / "aloha.yaml")
    assert "transport" in result.stdout
