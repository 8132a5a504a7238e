"""Offline model code (torch): configuration, the transformer, training, export.

Only `gato_ros.model.config` is torch-free (the runtime reads it); import the other modules explicitly.
"""
