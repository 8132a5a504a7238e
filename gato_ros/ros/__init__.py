"""ROS 2 adapters: thin layers between messages and the numpy core (see docs/ros.md).

policy_node (gato_policy), sim_node (gato_sim), recorder_node (gato_recorder); graph.py, the one definition of
the node graph; launcher.py, that graph as processes; conversions.py, Image/JointState <-> numpy; eval_ros.py,
`gato-ros eval --ros`. Importing this package imports nothing from ROS.
"""
