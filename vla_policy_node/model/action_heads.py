"""OFT action heads and the small projectors around the language model.

Module and parameter names follow the reference implementation so that its component files
(``action_head--*.pt``, ``proprio_projector--*.pt``, ``noisy_action_projector--*.pt``) load by
name after the ``module.`` prefix is stripped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class MLPResNetBlock(nn.Module):
    """Pre-LN residual block: x + ReLU(Linear(LayerNorm(x)))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    """LayerNorm -> Linear -> ReLU -> N residual blocks -> LayerNorm -> Linear."""

    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden_dim)
                                               for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., input_dim) -> (..., output_dim)."""
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """Maps the K*D action-slot hidden states to a (K, D) chunk; shared over timesteps."""

    def __init__(self, llm_dim: int, action_dim: int, chunk_length: int,
                 num_blocks: int = 2) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.chunk_length = chunk_length
        self.model = MLPResNet(num_blocks, llm_dim * action_dim, llm_dim, action_dim)

    def predict_action(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, K*D, H) -> (B, K, D) normalized actions."""
        return self.model(hidden.reshape(hidden.shape[0], self.chunk_length, -1))


class SinusoidalPositionalEncoding(nn.Module):
    """Timestep (B,) -> (B, dim) [sin, cos] embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"sinusoidal encoding needs an even dim >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        exponent = torch.arange(half, device=t.device) * -math.log(10000) / (half - 1)
        angles = t.float()[:, None] * torch.exp(exponent)[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class NoisePredictionModel(nn.Module):
    def __init__(self, transformer_hidden_dim: int, hidden_dim: int, action_dim: int,
                 num_blocks: int = 2) -> None:
        super().__init__()
        self.mlp_resnet = MLPResNet(num_blocks, transformer_hidden_dim, hidden_dim, action_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp_resnet(obs)


class DiffusionActionHead(nn.Module):
    """DDIM noise-prediction head (squaredcos_cap_v2 betas, diffusers' DDIMScheduler)."""

    def __init__(self, llm_dim: int, action_dim: int, chunk_length: int,
                 num_train_steps: int = 50, num_blocks: int = 2) -> None:
        super().__init__()
        from diffusers import DDIMScheduler  # imported here: only the diffusion head needs it
        self.action_dim = action_dim
        self.chunk_length = chunk_length
        self.noise_predictor = NoisePredictionModel(llm_dim * action_dim, llm_dim, action_dim,
                                                    num_blocks)
        self.noise_scheduler = DDIMScheduler(num_train_timesteps=num_train_steps,
                                             beta_schedule="squaredcos_cap_v2")
        self.time_encoder = SinusoidalPositionalEncoding(llm_dim)

    def predict_noise(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, K*D, H) -> predicted noise (B, K, D)."""
        return self.noise_predictor(hidden.reshape(hidden.shape[0], self.chunk_length, -1))


class ProprioProjector(nn.Module):
    """Linear(P -> H), GELU, Linear(H -> H): one proprio token."""

    def __init__(self, llm_dim: int, proprio_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        """(B, P) -> (B, H)."""
        return self.fc2(self.act_fn1(self.fc1(proprio)))


class NoisyActionProjector(nn.Module):
    """[Diffusion] each noisy action scalar -> one token: Linear(1 -> H), GELU, Linear."""

    def __init__(self, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        """(B, K*D, 1) -> (B, K*D, H)."""
        return self.fc2(self.act_fn1(self.fc1(noisy)))


class PrismaticProjector(nn.Module):
    """OpenVLA's fused-GELU MLP projector: fc1, GELU, fc2, GELU, fc3."""

    def __init__(self, vision_dim: int, hidden_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.act_fn2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, vision_dim) -> (B, T, llm_dim)."""
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(x)))))


class ActionTokenizer:
    """OpenVLA's discrete action tokenizer: 256 uniform bins on [-1, 1].

    ``token = action_token_end - digitize(a, bins)`` with ``bins = linspace(-1, 1, n_bins)``,
    i.e. the ``n_bins`` ids just below ``action_token_end`` (Llama: 32000 -> ids 31744-31999).
    Decoding maps a token to one of the ``n_bins - 1`` bin centres.
    """

    def __init__(self, action_token_end: int, n_bins: int = 256) -> None:
        if n_bins < 2 or action_token_end < n_bins:
            raise ValueError(f"bad action tokenizer: end {action_token_end}, bins {n_bins}")
        self.action_token_end = action_token_end
        self.n_bins = n_bins
        self.bins = np.linspace(-1.0, 1.0, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def first_token(self) -> int:
        return self.action_token_end - self.n_bins

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Normalized actions (any shape) -> token ids (same shape, int64)."""
        actions = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        return (self.action_token_end - np.digitize(actions, self.bins)).astype(np.int64)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids -> normalized actions (bin centres)."""
        discretized = self.action_token_end - np.asarray(tokens, dtype=np.int64)
        index = np.clip(discretized - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[index]
