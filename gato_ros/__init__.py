"""gato_ros: a Gato-style generalist transformer in the control loop of a ROS 2 robot arm.

Layers (see README): the deployable core (tokenizer, runtime policy, safety filter, dataset reading) imports only
numpy and onnxruntime; training/export import torch; the sim imports mujoco; ROS adapters import rclpy.
Nothing here imports those heavy packages at package import time.
"""

__version__ = "0.1.0"
