"""ros2 launch vla_policy_node aloha.launch.py [sim:=true] [checkpoint:=DIR] [preset:=tiny] ...

Starts the vla_policy node and the chunk_executor (and the simulated ALOHA with sim:=true).
The node set comes from vla_policy_node.launch_spec, the same description vla-bringup uses.
Arguments: ros2 launch vla_policy_node aloha.launch.py --show-args
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from vla_policy_node.launch_spec import LAUNCH_ARGUMENTS, node_descriptions
from vla_policy_node.ros_env import PROFILE_VARIABLES, project_profile_variables


def _nodes(context, *args, **kwargs):
    values = {arg.name: LaunchConfiguration(arg.name).perform(context)
              for arg in LAUNCH_ARGUMENTS}
    return [
        Node(package=node.package, executable=node.executable, name=node.name,
             output='screen', emulate_tty=True,
             parameters=[node.params_file, dict(node.overrides)])
        for node in node_descriptions(**values)
    ]


def generate_launch_description():
    actions = [DeclareLaunchArgument(arg.name, default_value=arg.default,
                                     description=arg.description,
                                     **({'choices': list(arg.choices)} if arg.choices else {}))
               for arg in LAUNCH_ARGUMENTS]
    # The project's Fast DDS profile (large shared memory for images, localhost only) unless
    # the user set one.
    if not any(var in os.environ for var in PROFILE_VARIABLES):
        actions += [SetEnvironmentVariable(name, value)
                    for name, value in project_profile_variables(os.environ).items()]
    actions.append(OpaqueFunction(function=_nodes))
    return LaunchDescription(actions)
