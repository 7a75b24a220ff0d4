"""ament_python package vla_policy_node (also pip-installable into the project's venv)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "vla_policy_node"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, package_name + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    # The shipped policies (weights, statistics, provenance) load from their folder.
    package_data={package_name: ["pretrained/*/*"]},
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="VLA ROS maintainers",
    maintainer_email="vla-ros@example.org",
    description="OpenVLA-OFT policies on ROS 2 robots (ALOHA first).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # ROS nodes (started by aloha.launch.py and vla-bringup)
            "vla_policy = vla_policy_node.nodes.vla_policy:main",
            "chunk_executor = vla_policy_node.nodes.chunk_executor:main",
            "sim_aloha = vla_policy_node.nodes.sim_aloha:main",
            # user tools
            "vla-bringup = vla_policy_node.tools.bringup:main",
            "vla-instruct = vla_policy_node.tools.instruct:main",
            "vla-demo = vla_policy_node.tools.demo:main",
            "vla-eval = vla_policy_node.tools.eval:main",
            "vla-record = vla_policy_node.nodes.recorder:main",
            "vla-convert = vla_policy_node.tools.convert:main",
            "vla-finetune = vla_policy_node.tools.finetune:main",
            "vla-plot = vla_policy_node.tools.plot:main",
            "vla-bench = vla_policy_node.bench.cli:main",
            "vla-sim-demos = vla_policy_node.tools.sim_demos:main",
            "vla-scripted = vla_policy_node.sim.scripted:main",
        ],
    },
)
