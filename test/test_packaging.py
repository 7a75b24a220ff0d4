"""colcon (from PyPI) builds the packages into a temporary install space, as a ROS user would.

The build runs the README's own `colcon build` command (its base paths read from the README),
then checks the ament index entries, the installed launch/config files, the console scripts in
lib/vla_policy_node (where launch_ros and `ros2 run` look), and that the sourced install space
runs what ``aloha.launch.py sim:=true`` starts, with nothing taken from the venv's own
interbotix_xs_msgs (a ROS install has none).
"""

import os
from pathlib import Path
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

from ros_harness import private_domain, ros_environment

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
README = REPO / "README.md"
DOCS_ROS = REPO / "docs" / "ros.md"
CLONE = "src/vla_ros"  # where the README clones the repository in a workspace


def console_scripts():
    text = (REPO / "setup.py").read_text()
    return re.findall(r'"([\w-]+) = vla_policy_node[\w.]*:main"', text)


def readme_colcon_base_paths():
    """The base paths of the README's `colcon build` line, mapped into this checkout."""
    line = next(line for line in README.read_text().splitlines()
                if line.strip().startswith("colcon build"))
    words = shlex.split(line.split("#")[0])
    paths = words[words.index("--base-paths") + 1:]
    mapped = []
    for path in paths:
        if path.startswith("-"):
            break
        mapped.append(REPO if path in ("src", CLONE) else REPO / path.removeprefix(CLONE + "/"))
    return mapped


def colcon(work, base_paths, env, *extra):
    return subprocess.run(
        [str(VENV_BIN / "colcon"), "--log-base", str(work / "log"), "build",
         "--build-base", str(work / "build"), "--install-base", str(work / "install"),
         "--base-paths", *map(str, base_paths), *extra,
         "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=900)


def venv_env():
    env = dict(os.environ)
    prefix = str(Path(sys.prefix))
    env["CMAKE_PREFIX_PATH"] = prefix
    env["AMENT_PREFIX_PATH"] = prefix
    return env


@pytest.fixture(scope="module")
def install_space(tmp_path_factory):
    work = tmp_path_factory.mktemp("colcon")
    base_paths = readme_colcon_base_paths()
    assert REPO / "scripts" / "interbotix_xs_msgs" in base_paths, base_paths
    result = colcon(work, base_paths, venv_env())
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
    stand_in = install_space / "interbotix_xs_msgs"
    assert (stand_in / index / "packages" / "interbotix_xs_msgs").is_file()
    assert (stand_in / "share" / "interbotix_xs_msgs" / "vla_stand_in").is_file()


def test_launch_config_and_package_files_are_installed(install_space):
    share = install_space / "vla_policy_node" / "share" / "vla_policy_node"
    for relative in ("package.xml", "launch/aloha.launch.py", "config/aloha.yaml",
                     "config/fastdds.xml"):
        installed = share / relative
        assert installed.is_file(), relative
        assert installed.read_bytes() == (REPO / relative).read_bytes()


def test_the_shipped_policy_is_installed_with_the_package(install_space):
    """vla-demo and vla-eval default to it: an install without its weights fails them."""
    from vla_policy_node.pretrained import DEFAULT_POLICY, REQUIRED_FILES
    source = REPO / "vla_policy_node" / "pretrained" / DEFAULT_POLICY
    found = list(install_space.glob(f"vla_policy_node/lib/python*/site-packages/"
                                    f"vla_policy_node/pretrained/{DEFAULT_POLICY}"))
    assert len(found) == 1, found
    for name in REQUIRED_FILES:
        assert (found[0] / name).read_bytes() == (source / name).read_bytes(), name


def test_every_console_script_is_where_launch_ros_looks(install_space):
    lib = install_space / "vla_policy_node" / "lib" / "vla_policy_node"
    scripts = console_scripts()
    assert {"vla_policy", "chunk_executor", "sim_aloha", "vla-bench"} <= set(scripts)
    for name in scripts:
        assert os.access(lib / name, os.X_OK), name


def test_tools_the_docs_run_with_ros2_run_exist(install_space):
    """Every `ros2 run vla_policy_node TOOL` of the README and docs/ros.md is installed."""
    lib = install_space / "vla_policy_node" / "lib" / "vla_policy_node"
    named = set()
    for doc in (README, DOCS_ROS):
        named |= set(re.findall(r"ros2 run vla_policy_node ([\w-]+)", doc.read_text()))
    assert {"vla-instruct", "vla-record", "vla-convert", "vla-finetune",
            "vla-bringup"} <= named, named
    for tool in named:
        assert os.access(lib / tool, os.X_OK), tool


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


def hide_venv_interbotix(directory: Path) -> Path:
    """A PYTHONPATH entry that hides the venv's interbotix_xs_msgs, as on a ROS install
    without the Interbotix stack (sourcing the install space puts its own paths first)."""
    package = directory / "hide" / "interbotix_xs_msgs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError('interbotix_xs_msgs is hidden: not installed on this ROS install')\n")
    return package.parent


READY = {"sim_aloha": "simulating ALOHA", "chunk_executor": "executing chunks",
         "vla_policy": "ready: model"}


def test_launch_sim_true_starts_three_nodes_from_the_install_space(install_space, tmp_path):
    """What `ros2 launch vla_policy_node aloha.launch.py sim:=true` runs, as launch_ros runs it
    (lib/<package>/<executable>, the installed config, overrides as a /** params file)."""
    hidden = hide_venv_interbotix(tmp_path)
    prefix = install_space / "vla_policy_node"
    code = ("from vla_policy_node.launch_spec import node_descriptions; import json; "
            "print(json.dumps([[n.executable, n.name, n.params_file, dict(n.overrides)] "
            "for n in node_descriptions(sim='true')]))")
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", PYTHONPATH=str(hidden))
    sourced = f"source {install_space}/setup.bash && cd {tmp_path} && "
    result = subprocess.run(["bash", "-c", sourced + f"python -c {shlex.quote(code)}"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    nodes = yaml.safe_load(result.stdout)
    assert [n[1] for n in nodes] == ["sim_aloha", "vla_policy", "chunk_executor"]
    processes = {}
    with private_domain() as domain:
        node_env = ros_environment(domain, env)
        for executable, name, params_file, overrides in nodes:
            assert params_file.startswith(str(prefix / "share")), params_file
            if name == "sim_aloha":
                overrides.update(camera_height=48, camera_width=64)
            if name == "vla_policy":
                overrides.update(torch_threads=1)
            override_file = tmp_path / f"{name}.yaml"
            override_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": overrides}}))
            argv = [str(prefix / "lib" / "vla_policy_node" / executable), "--ros-args", "-r",
                    f"__node:={name}", "--params-file", params_file, "--params-file",
                    str(override_file)]
            log = open(tmp_path / f"{name}.log", "w")
            processes[name] = (subprocess.Popen(
                ["bash", "-c", sourced + "exec " + shlex.join(argv)], env=node_env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                logs = {name: (tmp_path / f"{name}.log").read_text() for name in processes}
                if all(READY[name] in logs[name] for name in processes):
                    break
                dead = {name: p.poll() for name, (p, _) in processes.items()
                        if p.poll() is not None}
                assert not dead, (dead, logs)
                time.sleep(0.5)
            else:
                pytest.fail(f"not all nodes started: {logs}")
        finally:
            for process, _ in processes.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGINT)
            codes = {}
            for name, (process, log) in processes.items():
                try:
                    codes[name] = process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    codes[name] = process.wait()
                log.close()
    assert codes == {name: 0 for name in processes}, codes
    for name in processes:
        assert "interbotix_xs_msgs is hidden" not in (tmp_path / f"{name}.log").read_text()


def test_stand_in_builds_nothing_over_a_real_interbotix(tmp_path):
    """With an Interbotix interbotix_xs_msgs in an underlay, the stand-in installs nothing:
    no Python package, no ament index entry that would shadow the real one."""
    underlay = tmp_path / "underlay"
    marker = underlay / "share" / "ament_index" / "resource_index" / "packages"
    marker.mkdir(parents=True)
    (marker / "interbotix_xs_msgs").write_text("")
    env = venv_env()
    env["AMENT_PREFIX_PATH"] = f"{underlay}:{env['AMENT_PREFIX_PATH']}"
    result = colcon(tmp_path, [REPO / "scripts" / "interbotix_xs_msgs"], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    installed = tmp_path / "install" / "interbotix_xs_msgs"
    assert not list(installed.rglob("interbotix_xs_msgs/msg/*.py"))
    assert not list(installed.rglob("resource_index/packages/interbotix_xs_msgs"))
    log = "".join(p.read_text(errors="replace") for p in (tmp_path / "log").rglob("*.log"))
    assert "builds nothing" in log + result.stdout + result.stderr
