"""aloha.launch.py and vla-bringup start the same nodes from the same description.

``launch``/``launch_ros`` are not installable from PyPI, so the launch file is executed
against small recording stand-ins of their constructors (DeclareLaunchArgument, Node, ...).
The test then checks that the Node actions it produces are exactly the descriptions the
bringup turns into processes, for several argument sets.
"""

import importlib.util
from pathlib import Path
import sys
import types

import pytest
import yaml

from vla_policy_node import launch_spec
from vla_policy_node.tools.bringup import build_parser, NodeProcesses

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "aloha.launch.py"


class Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def launch_module(monkeypatch):
    """Import aloha.launch.py with recording stand-ins for the launch API."""
    values = {}

    class LaunchConfiguration(Recorded):
        def perform(self, context):
            return values.get(self.args[0], context[self.args[0]])

    modules = {
        "launch": types.SimpleNamespace(LaunchDescription=Recorded),
        "launch.actions": types.SimpleNamespace(
            DeclareLaunchArgument=Recorded, OpaqueFunction=Recorded,
            SetEnvironmentVariable=Recorded),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros.actions": types.SimpleNamespace(Node=Recorded),
        "launch_ros": types.SimpleNamespace(),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("aloha_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_nodes(launch_module, arguments):
    description = launch_module.generate_launch_description()
    actions = description.args[0]
    declared = {a.args[0]: a.kwargs["default_value"] for a in actions
                if a.args and isinstance(a.args[0], str) and "default_value" in a.kwargs}
    opaque = [a for a in actions if "function" in a.kwargs][0]
    context = dict(declared, **arguments)
    return declared, opaque.kwargs["function"](context)


@pytest.mark.parametrize("arguments", [
    {},
    {"sim": "true"},
    {"sim": "true", "use_sim_time": "false", "preset": "tiny", "quantization": "4bit",
     "task": "insertion"},
    {"checkpoint": "/data/ckpt", "device": "cuda", "dtype": "bfloat16"},
])
def test_launch_file_and_bringup_start_identical_nodes(launch_module, arguments):
    declared, nodes = launch_nodes(launch_module, arguments)
    assert set(declared) == {a.name for a in launch_spec.LAUNCH_ARGUMENTS}
    expected = launch_spec.node_descriptions(**arguments)
    assert [n.kwargs["name"] for n in nodes] == [d.name for d in expected]
    for node, description in zip(nodes, expected):
        assert node.kwargs["package"] == "vla_policy_node"
        assert node.kwargs["executable"] == description.executable
        assert node.kwargs["parameters"] == [description.params_file,
                                             dict(description.overrides)]

    # The bringup parses the same arguments into the same descriptions...
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in arguments.items()]
    parsed = vars(build_parser().parse_args(argv))
    parsed.pop("log_dir")
    assert launch_spec.node_descriptions(**parsed) == expected
    # ...and starts each with the same parameter file and overrides.
    processes = NodeProcesses(expected, output=None)
    for description in expected:
        argv = processes.command(description)
        assert argv[1:3] == ["-m", description.module]
        files = [argv[i + 1] for i, a in enumerate(argv) if a == "--params-file"]
        assert files[0] == description.params_file
        with open(files[1]) as f:
            assert yaml.safe_load(f) == {
                description.name: {"ros__parameters": dict(description.overrides)}}
    processes.stop()


def test_console_scripts_match_node_modules():
    setup_text = (REPO / "setup.py").read_text()
    for description in launch_spec.node_descriptions(sim="true"):
        assert f'"{description.executable} = {description.module}:main"' in setup_text


def test_sim_runs_everything_on_sim_time():
    nodes = {d.name: d for d in launch_spec.node_descriptions(sim="true")}
    assert nodes["vla_policy"].overrides["use_sim_time"] is True
    assert nodes["chunk_executor"].overrides["use_sim_time"] is True
    assert nodes["sim_aloha"].overrides["use_sim_time"] is False  # it is the clock


@pytest.mark.parametrize("arguments, message", [
    ({"sim": "maybe"}, "sim"),
    ({"quantization": "3bit"}, "quantization"),
    ({"config": "/nonexistent.yaml"}, "not found"),
    ({"colour": "red"}, "unknown launch arguments"),
])
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        launch_spec.node_descriptions(**arguments)
