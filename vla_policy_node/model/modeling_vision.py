"""The Prismatic "dinosiglip" vision backbone from transformers building blocks, with FiLM.

DINOv2-with-registers and SigLIP run on the same image (6 channels: 3 normalized for each
tower); each returns the output of its second-to-last block without class/register tokens,
and the two are concatenated per patch. With FiLM (OFT+), every block is modulated between the
attention residual and the MLP by ``x * (1 + gamma) + beta``, gamma/beta linear in the average
language embedding.

The blocks are run here (not through the towers' own ``forward``) so that FiLM can be inserted
and so that the unused last block is skipped.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import (Dinov2WithRegistersConfig, Dinov2WithRegistersModel, SiglipVisionConfig,
                          SiglipVisionModel)

from vla_policy_node.model.configuration_oft import OFTConfig, ViTConfig

logger = logging.getLogger(__name__)


class FiLMLayer(nn.Module):
    """gamma = scale(lang), beta = shift(lang): Linear(llm_dim -> vision width) each."""

    def __init__(self, llm_dim: int, vision_dim: int) -> None:
        super().__init__()
        self.scale = nn.Linear(llm_dim, vision_dim)
        self.shift = nn.Linear(llm_dim, vision_dim)

    def forward(self, x: torch.Tensor, language: torch.Tensor) -> torch.Tensor:
        """x: (B, T, W); language: (B, llm_dim) -> (B, T, W)."""
        gamma = self.scale(language).unsqueeze(1)
        beta = self.shift(language).unsqueeze(1)
        return x * (1 + gamma) + beta


def build_dino(cfg: ViTConfig, attn_implementation: str = "sdpa") -> Dinov2WithRegistersModel:
    hf = Dinov2WithRegistersConfig(
        hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
        mlp_ratio=cfg.mlp_dim // cfg.width, image_size=cfg.image_size, patch_size=cfg.patch_size,
        num_register_tokens=cfg.num_registers, layerscale_value=cfg.layerscale_init,
        layer_norm_eps=cfg.layer_norm_eps, qkv_bias=True, hidden_act="gelu")
    hf._attn_implementation = attn_implementation
    return Dinov2WithRegistersModel(hf)


def build_siglip(cfg: ViTConfig, attn_implementation: str = "sdpa") -> SiglipVisionModel:
    hf = SiglipVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        # timm 0.9's SigLIP (what OpenVLA runs) uses exact erf GELU, not transformers'
        # default tanh approximation (8.5e-4 off per block at width 48).
        layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu",
        vision_use_head=False)
    hf._attn_implementation = attn_implementation
    return SiglipVisionModel(hf)


class FusedVisionBackbone(nn.Module):
    """DINOv2-reg + SigLIP on one 6-channel image, features concatenated per patch.

    Submodules (names used by the checkpoint key mapping):
        featurizer: ``Dinov2WithRegistersModel``; fused_featurizer: ``SiglipVisionModel``;
        featurizer_film / fused_featurizer_film: one :class:`FiLMLayer` per block (FiLM only).
    """

    def __init__(self, config: OFTConfig) -> None:
        super().__init__()
        self.config = config
        self.featurizer = build_dino(config.dino)
        # timm's reg4 DINOv2 gives the class token no position embedding (no_embed_class);
        # transformers adds row 0 to it. A zero row keeps the two identical (and official
        # checkpoints, which have no such row, round-trip exactly).
        with torch.no_grad():
            self.featurizer.embeddings.position_embeddings[:, 0].zero_()
        self.fused_featurizer = build_siglip(config.siglip)
        if config.use_film:
            self.featurizer_film = nn.ModuleList(
                FiLMLayer(config.llm.hidden_size, config.dino.width)
                for _ in range(config.dino.depth))
            self.fused_featurizer_film = nn.ModuleList(
                FiLMLayer(config.llm.hidden_size, config.siglip.width)
                for _ in range(config.siglip.depth))
        else:
            self.featurizer_film = None
            self.fused_featurizer_film = None

    @property
    def embed_dim(self) -> int:
        return self.config.vision_width

    def _dino(self, pixels: torch.Tensor, language: torch.Tensor | None) -> torch.Tensor:
        model = self.featurizer
        x = model.embeddings(pixels)
        # Second-to-last block: run depth-1 blocks.
        for i, layer in enumerate(model.encoder.layer[:-1]):
            h, _ = layer.attention(layer.norm1(x))
            x = x + layer.drop_path(layer.layer_scale1(h))
            if self.featurizer_film is not None:
                x = self.featurizer_film[i](x, language)
            x = x + layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x))))
        return x[:, 1 + self.config.dino.num_registers:]

    def _siglip(self, pixels: torch.Tensor, language: torch.Tensor | None) -> torch.Tensor:
        model = self.fused_featurizer
        x = model.embeddings(pixels)
        for i, layer in enumerate(model.encoder.layers[:-1]):
            h, _ = layer.self_attn(hidden_states=layer.layer_norm1(x), attention_mask=None)
            x = x + h
            if self.fused_featurizer_film is not None:
                x = self.fused_featurizer_film[i](x, language)
            x = x + layer.mlp(layer.layer_norm2(x))
        return x

    def forward(self, pixel_values: torch.Tensor,
                language: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values: (B, 6, H, W) (DINOv2 channels first); language: (B, llm_dim), needed
        with FiLM. Returns (B, num_patches, dino.width + siglip.width)."""
        if self.featurizer_film is not None and language is None:
            raise ValueError("FiLM backbone needs the average language embedding")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 6:
            raise ValueError(f"pixel_values must be (B, 6, H, W), got {tuple(pixel_values.shape)}")
        dtype = self.featurizer.embeddings.patch_embeddings.projection.weight.dtype
        pixel_values = pixel_values.to(dtype)
        if language is not None:
            language = language.to(dtype)
        dino = self._dino(pixel_values[:, :3], language)
        siglip = self._siglip(pixel_values[:, 3:], language)
        return torch.cat([dino, siglip], dim=2)
