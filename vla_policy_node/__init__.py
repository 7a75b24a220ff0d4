"""VLA policies (OpenVLA-OFT) on ROS 2 robots: model, chunk execution, data and training."""

__version__ = "0.1.0"
