"""ros2 launch gato_ros arm.launch.py [sim:=true|false] [model:=DIR] [record:=true bag:=DIR] [rate:=HZ]
[instruction:=TEXT] [command_interface:=position_array|joint_trajectory] [use_sim_time:=true|false] ...

The sim (or a real arm's driver, with sim:=false) and the policy node, optionally the recorder. Which nodes run
with which parameters is defined once in gato_ros/ros/graph.py, which `gato-ros launch arm` also reads on machines
without the ROS 2 launch tools; this file only turns that definition into launch actions.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

try:
    from gato_ros.ros import graph
except ImportError as exc:  # the launch file is installed, the Python package is not on the path
    raise RuntimeError(
        "arm.launch.py needs the gato_ros Python package: source the workspace (source install/setup.bash) "
        "or install it (pip install -e .)"
    ) from exc


def _nodes(context, *args, **kwargs):
    """Resolve the launch arguments, ask graph.py for the nodes, and gate the optional ones with IfCondition."""
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in graph.LAUNCH_ARGUMENTS}
    actions = []
    for spec in graph.node_graph(values):
        actions.append(
            Node(
                package=spec.package,
                executable=spec.executable,
                name=spec.name,
                output="screen",
                emulate_tty=True,
                parameters=[spec.params_file, spec.parameters],
                remappings=list(spec.remappings),
                condition=IfCondition(LaunchConfiguration(spec.condition)) if spec.condition else None,
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    arguments = []
    for a in graph.LAUNCH_ARGUMENTS:
        # Booleans are checked by graph.resolve_arguments (which also accepts 1/0, as IfCondition does).
        choices = list(a.choices) if a.choices and a.choices != graph.BOOL else None
        arguments.append(
            DeclareLaunchArgument(a.name, default_value=a.default, description=a.description, choices=choices)
        )
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
