"""Simulated ALOHA (MuJoCo, gym-aloha scenes) and its scripted demonstrations; no rclpy."""

from vla_policy_node.sim.aloha_sim import (  # noqa: F401
    AlohaSim, INSTRUCTIONS, MAX_REWARD, SimConfig, SimError, TASKS)
