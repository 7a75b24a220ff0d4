"""The RoboFlamingo model: CLIP ViT -> perceiver -> LM with gated cross-attention -> policy head.

Module names follow the release where it helps the key map (``perceiver.layers.i.0.to_q``,
``xattn.i.attn.to_kv``, ``head.actions.mlp.0``; see checkpoint_roboflamingo.py). Shapes:
N = frames (B windows x W frames), C = cameras, S = image side, T = text tokens,
Dv = CLIP width, D = LM width, M = media tokens per frame.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from vla_policy_node.model.roboflamingo.configuration_roboflamingo import (
    LanguageSpec, RoboFlamingoConfig)

logger = logging.getLogger(__name__)


# ====================================================================== OpenFlamingo blocks
def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LN -> Linear(D, mult*D) -> exact GELU -> Linear(mult*D, D), bias-free (keys 0, 1, 3)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, h*d) -> (..., h, n, d)."""
    *lead, n, hd = x.shape
    return x.view(*lead, n, heads, hd // heads).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(..., h, n, d) -> (..., n, h*d)."""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], -1)


class PerceiverAttention(nn.Module):
    """Latents attend to cat(media, latents) (both layer-normed)."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x (N, v, Dv), latents (N, n, Dv) -> (N, n, Dv)."""
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = _heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, _heads(k, self.heads), _heads(v, self.heads),
                                             scale=self.scale)
        return self.to_out(_merge(out))


class PerceiverResampler(nn.Module):
    """OpenFlamingo's resampler without frame/media time embeddings (as RoboFlamingo uses it)."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, num_latents: int,
                 ff_mult: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, v, Dv) -> (N, num_latents, Dv)."""
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class MaskedCrossAttention(nn.Module):
    """Text attends to the media of the latest ``<image>`` at or before it (one image per
    sample: tokens before ``<image>`` get no visual input)."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, media: torch.Tensor,
                media_locations: torch.Tensor) -> torch.Tensor:
        """x (N, T, D), media (N, M, Dv), media_locations (N, T) bool -> (N, T, D)."""
        q = _heads(self.to_q(self.norm(x)), self.heads)
        k, v = self.to_kv(media).chunk(2, dim=-1)
        # OpenFlamingo's only_attend_immediate_media with one image per sample: text_time =
        # number of <image> tokens so far; time 1 sees the image, time 0 sees nothing, a
        # later <image> (never in our prompts) would see a masked row, i.e. uniform weights.
        text_time = media_locations.cumsum(dim=-1)
        allowed = (text_time == 1)[:, None, :, None]
        scores = torch.matmul(q, _heads(k, self.heads).transpose(-1, -2)) * self.scale
        scores = scores.masked_fill(~allowed, -torch.finfo(scores.dtype).max)
        attn = scores.softmax(dim=-1)
        attn = attn.masked_fill((text_time == 0)[:, None, :, None], 0.0)
        return self.to_out(_merge(torch.matmul(attn, _heads(v, self.heads))))


class GatedCrossAttentionBlock(nn.Module):
    """x += attn(x, media) * tanh(attn_gate); x += ff(x) * tanh(ff_gate); gates start at 0,
    so a fresh block leaves the language model's output unchanged."""

    def __init__(self, dim: int, dim_visual: int, dim_head: int, heads: int,
                 ff_mult: int) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor,
                media_locations: torch.Tensor) -> torch.Tensor:
        x = self.attn(x, media, media_locations) * self.attn_gate.tanh() + x
        return self.ff(x) * self.ff_gate.tanh() + x


def _xattn_layers(spec: LanguageSpec, dim_visual: int) -> nn.ModuleList:
    """One block before decoder layer i when (i + 1) % n == 0; None elsewhere (no keys)."""
    return nn.ModuleList(
        GatedCrossAttentionBlock(spec.hidden_size, dim_visual, spec.xattn_dim_head,
                                 spec.xattn_heads, spec.xattn_ff_mult)
        if spec.has_xattn(i) else None for i in range(spec.num_layers))


# ====================================================================== MPT-1B (MosaicGPT) port
def alibi_slopes(num_heads: int, bias_max: int = 8) -> torch.Tensor:
    """MosaicML's slopes: 1 / 2 ** (bias_max * h / n), h = 1..n, n = num_heads rounded up to a
    power of two; for other head counts the odd-then-even interleave of llm-foundry/HF (MPT-1B
    and MPT-7B have 16 and 32 heads: the plain formula)."""
    n = 2 ** math.ceil(math.log2(num_heads))
    m = torch.arange(1, n + 1, dtype=torch.float32) * (bias_max / n)
    slopes = 1.0 / torch.pow(2.0, m)
    if n != num_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes


def alibi_bias(num_heads: int, seq_len: int, bias_max: int = 8) -> torch.Tensor:
    """(1, H, 1, S): slope_h * (j - (S - 1)) for key j (MosaicGPT's non-"full" form; equal
    row-wise up to a constant to slope * (j - i) under the causal mask)."""
    distance = torch.arange(1 - seq_len, 1, dtype=torch.float32).view(1, 1, 1, seq_len)
    return distance * alibi_slopes(num_heads, bias_max).view(1, num_heads, 1, 1)


class MosaicAttention(nn.Module):
    """Fused QKV, LayerNorm over the full q and k (before the head split), ALiBi, no biases."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.Wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_ln = nn.LayerNorm(dim, eps=eps, bias=False)
        self.k_ln = nn.LayerNorm(dim, eps=eps, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.scale = (dim // heads) ** -0.5

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (N, T, D), bias (N or 1, H, T, T) additive (ALiBi + masks) -> (N, T, D)."""
        q, k, v = self.Wqkv(x).chunk(3, dim=-1)
        q, k = self.q_ln(q), self.k_ln(k)
        out = F.scaled_dot_product_attention(_heads(q, self.heads), _heads(k, self.heads),
                                             _heads(v, self.heads), attn_mask=bias,
                                             scale=self.scale)
        return self.out_proj(_merge(out))


class MosaicMLP(nn.Module):
    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        self.mlp_up = nn.Linear(dim, ratio * dim, bias=False)
        self.mlp_down = nn.Linear(ratio * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_down(F.gelu(self.mlp_up(x)))


class MosaicBlock(nn.Module):
    """Pre-LN block with weight-only LayerNorms (keys ln_1, attn.*, ln_2, mlp.*)."""

    def __init__(self, spec: LanguageSpec) -> None:
        super().__init__()
        d, eps = spec.hidden_size, spec.layer_norm_eps
        self.ln_1 = nn.LayerNorm(d, eps=eps, bias=False)
        self.attn = MosaicAttention(d, spec.num_heads, eps)
        self.ln_2 = nn.LayerNorm(d, eps=eps, bias=False)
        self.mlp = MosaicMLP(d, spec.expansion_ratio)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), bias)
        return x + self.mlp(self.ln_2(x))


def attention_bias(attention_mask: torch.Tensor, heads: int, alibi_max: int | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """(N, T) key mask -> (N, H, T, T) additive bias: ALiBi (if any) + causal + padding."""
    n, t = attention_mask.shape
    device = attention_mask.device
    bias = torch.zeros(1, heads, t, t, device=device, dtype=dtype)
    if alibi_max is not None:
        bias = bias + alibi_bias(heads, t, alibi_max).to(device=device, dtype=dtype)
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    keep = causal[None, None] & attention_mask.bool()[:, None, None, :]
    return bias.masked_fill(~keep, torch.finfo(dtype).min)


class MosaicGPT(nn.Module):
    """MPT-1B (mosaicml/mpt-1b-redpajama-200b[-dolly]) with OpenFlamingo's cross-attention.

    ``features`` returns what RoboFlamingo's head reads, ``hidden_states[-1]`` of MosaicGPT:
    the input of the last block (the output of layer L-2), without ln_f. The last block, its
    cross-attention layer and ln_f are kept for key coverage but never run (dead compute in
    the release; they get no gradient there either).
    """

    def __init__(self, spec: LanguageSpec, dim_visual: int) -> None:
        super().__init__()
        self.spec = spec
        self.wte = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.blocks = nn.ModuleList(MosaicBlock(spec) for _ in range(spec.num_layers))
        self.ln_f = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps, bias=False)
        self.xattn = _xattn_layers(spec, dim_visual)

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.wte

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 media: torch.Tensor | None, media_locations: torch.Tensor,
                 layers: int | None = None) -> torch.Tensor:
        """input_ids/attention_mask/media_locations (N, T), media (N, M, Dv) or None (no
        cross-attention: the plain LM) -> (N, T, D). ``layers``: blocks to run
        (default L-1, the release's feature layer)."""
        x = self.wte(input_ids)
        bias = attention_bias(attention_mask, self.spec.num_heads, self.spec.alibi_bias_max,
                              x.dtype)
        count = self.spec.num_layers - 1 if layers is None else layers
        for i in range(count):
            if self.xattn[i] is not None and media is not None:
                x = self.xattn[i](x, media, media_locations)
            x = self.blocks[i](x, bias)
        return x


# ====================================================================== GPT-NeoX / MPT-7B
class HFLanguageModel(nn.Module):
    """A transformers decoder (GPTNeoXModel or MptModel) whose layers get the gated
    cross-attention through forward pre-hooks, so the decoder keeps its own key names
    (``model.layers.i.*`` / ``model.blocks.i.*``). Features: the final-normed output
    (GPT-NeoX's ``hidden_states[-1]``; for MPT-7B the same, INFER: see docs)."""

    def __init__(self, spec: LanguageSpec, dim_visual: int) -> None:
        super().__init__()
        self.spec = spec
        if spec.kind == "gpt_neox":
            from transformers import GPTNeoXConfig, GPTNeoXModel
            config = GPTNeoXConfig(
                vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                intermediate_size=spec.expansion_ratio * spec.hidden_size,
                rotary_pct=spec.rotary_pct, use_parallel_residual=spec.use_parallel_residual,
                layer_norm_eps=spec.layer_norm_eps, max_position_embeddings=spec.max_seq_len,
                attention_dropout=0.0, hidden_dropout=0.0)
            config._attn_implementation = "sdpa"
            self.model = GPTNeoXModel(config)
            layers = self.model.layers
        else:
            from transformers import MptConfig, MptModel
            config = MptConfig(
                d_model=spec.hidden_size, n_heads=spec.num_heads, n_layers=spec.num_layers,
                expansion_ratio=spec.expansion_ratio, max_seq_len=spec.max_seq_len,
                vocab_size=spec.vocab_size, layer_norm_epsilon=spec.layer_norm_eps,
                attn_config={"alibi": True, "alibi_bias_max": spec.alibi_bias_max})
            self.model = MptModel(config)
            layers = self.model.blocks
        self.xattn = _xattn_layers(spec, dim_visual)
        self._media: tuple[torch.Tensor, torch.Tensor] | None = None
        for i, layer in enumerate(layers):
            if self.xattn[i] is not None:
                layer.register_forward_pre_hook(self._hook(i), with_kwargs=True)

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def _hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if self._media is None:
                return args, kwargs
            media, locations = self._media
            block = self.xattn[index]
            if args:
                args = (block(args[0], media, locations),) + tuple(args[1:])
            else:
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = block(kwargs["hidden_states"], media, locations)
            return args, kwargs
        return hook

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 media: torch.Tensor | None, media_locations: torch.Tensor,
                 layers: int | None = None) -> torch.Tensor:
        if layers is not None:
            raise ValueError("layers= is only supported by mosaic_gpt")
        self._media = None if media is None else (media, media_locations)
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask.long(),
                             use_cache=False)
        finally:
            self._media = None
        return out.last_hidden_state


def build_language_model(spec: LanguageSpec, dim_visual: int) -> nn.Module:
    return MosaicGPT(spec, dim_visual) if spec.kind == "mosaic_gpt" else HFLanguageModel(
        spec, dim_visual)


# ====================================================================== policy head
def mlp_stack(in_dim: int, dims: tuple[int, ...], out_dim: int, tanh: bool) -> nn.Sequential:
    """Linear/ReLU stack (keys mlp.0, 2, 4, 6 for three hidden widths), Tanh last if asked."""
    layers: list[nn.Module] = []
    for width in dims:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    if tanh:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class _MLPHead(nn.Module):
    def __init__(self, mlp: nn.Sequential) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PolicyHead(nn.Module):
    """The release's DeterministicDecoder (``lstm``) or the same MLPs on the current frame
    (``mlp``). ``actions``: Tanh outputs for the continuous dims; ``gripper``: logits of the
    binary dims (the release's Sigmoid is applied by the caller). K actions per step."""

    def __init__(self, config: RoboFlamingoConfig) -> None:
        super().__init__()
        self.kind = config.head
        self.k = config.chunk_length
        self.n_cont = len(config.continuous_dims)
        self.n_bin = len(config.binary_gripper_dims)
        d = config.lm.hidden_size
        width = d
        self.rnn: nn.LSTM | None = None
        if config.head == "lstm":
            self.rnn = nn.LSTM(d, config.lstm_hidden, config.lstm_layers, batch_first=True,
                               dropout=config.lstm_dropout if config.lstm_layers > 1 else 0.0)
            width = config.lstm_hidden
        self.actions = _MLPHead(mlp_stack(width, config.mlp_dims, self.n_cont * self.k, True))
        self.gripper = (_MLPHead(mlp_stack(width, config.mlp_dims, self.n_bin * self.k, False))
                        if self.n_bin else None)

    def decode(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (..., H) -> continuous (..., K, Dc) in [-1, 1], gripper logits (..., K, Nb)."""
        lead = hidden.shape[:-1]
        cont = self.actions(hidden).view(*lead, self.k, self.n_cont)
        if self.gripper is None:
            return cont, hidden.new_zeros(*lead, self.k, 0)
        return cont, self.gripper(hidden).view(*lead, self.k, self.n_bin)

    def forward(self, pooled: torch.Tensor, state: Any = None
                ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """pooled (B, W, D), LSTM state or None (zeros) -> continuous (B, W, K, Dc), gripper
        logits (B, W, K, Nb), new state (None for the mlp head)."""
        hidden = pooled
        if self.rnn is not None:
            hidden, state = self.rnn(pooled, state)
        cont, grip = self.decode(hidden)
        return cont, grip, state


# ====================================================================== the model
def build_vision_tower(config: RoboFlamingoConfig) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel
    v = config.vision
    vision_config = CLIPVisionConfig(
        hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
        num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
        hidden_act="quick_gelu", layer_norm_eps=v.layer_norm_eps)
    vision_config._attn_implementation = "sdpa"
    return CLIPVisionModel(vision_config)


class RoboFlamingoModel(nn.Module):
    """The network. ``forward(batch)`` returns the training loss; inference goes through
    :meth:`frame_features` (one pooled vector per frame) and :attr:`head`."""

    def __init__(self, config: RoboFlamingoConfig, media_token_id: int) -> None:
        super().__init__()
        self.config = config
        self.media_token_id = int(media_token_id)
        if not 0 <= self.media_token_id < config.lm.vocab_size:
            raise ValueError(f"<image> id {media_token_id} outside the LM vocabulary "
                             f"({config.lm.vocab_size})")
        p = config.perceiver
        self.vision = build_vision_tower(config)
        self.perceiver = PerceiverResampler(config.vision.width, p.depth, p.dim_head, p.heads,
                                            p.num_latents, p.ff_mult)
        self.lang = build_language_model(config.lm, config.vision.width)
        self.head = PolicyHead(config)
        self.vision.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.perceiver.latents.device

    # ------------------------------------------------------------------ pieces
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, C, 3, S, S) -> media (N, M, Dv).

        ``post``: every camera through CLIP and the same perceiver, latents concatenated in
        camera order; ``pre``: CLIP tokens of all cameras concatenated, one perceiver pass."""
        n, c = pixel_values.shape[:2]
        flat = pixel_values.flatten(0, 1).to(self.perceiver.latents.dtype)
        # CLIP is frozen and run without a graph, as in the release.
        with torch.no_grad():
            tokens = self.vision(pixel_values=flat).last_hidden_state[:, 1:]
        if self.config.fusion == "post":
            latents = self.perceiver(tokens)
            return latents.view(n, c * latents.shape[1], latents.shape[2])
        return self.perceiver(tokens.reshape(n, c * tokens.shape[1], tokens.shape[2]))

    def frame_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, C, 3, S, S), input_ids/attention_mask (N, T) -> pooled (N, D):
        the LM features max-pooled over all tokens, padding included (as released)."""
        media = self.encode_images(pixel_values)
        hidden = self.lang.features(input_ids, attention_mask, media,
                                    input_ids == self.media_token_id)
        return hidden.max(dim=1).values

    def window_outputs(self, batch: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch -> continuous (B, W, K, Dc) and gripper logits (B, W, K, Nb)."""
        pixels = batch["pixel_values"]                     # (B, W, C, 3, S, S)
        b, w = pixels.shape[:2]
        ids = batch["input_ids"].repeat_interleave(w, dim=0)      # every frame its own sample
        mask = batch["attention_mask"].repeat_interleave(w, dim=0)
        pooled = self.frame_features(pixels.flatten(0, 1), ids, mask).view(b, w, -1)
        cont, grip, _ = self.head(pooled)
        return cont, grip

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Huber(delta) on the continuous dims + gripper_loss_weight * BCE on the binary dims,
        over all W steps and K actions (train_utils.py:573-578)."""
        cont, grip = self.window_outputs(batch)
        loss = F.huber_loss(cont.float(), batch["actions"].float(),
                            delta=self.config.huber_delta)
        if grip.shape[-1]:
            loss = loss + self.config.gripper_loss_weight * F.binary_cross_entropy_with_logits(
                grip.float(), batch["gripper_labels"].float())
        return loss

    def forward(self, batch: dict[str, torch.Tensor],
                generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss (``generator`` is accepted for the loop's contract; unused)."""
        return self.compute_loss(batch)

    # ------------------------------------------------------------------ training recipe
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The released trainable set: perceiver, all cross-attention layers, the whole input
        embedding and the policy head (factory.py:233-263); everything else frozen."""
        embed = self.lang.input_embeddings.weight
        out = []
        for name, param in self.named_parameters():
            if (name.startswith(("perceiver.", "head.")) or ".xattn." in f".{name}"
                    or param is embed):
                out.append((name, param))
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def log_size(model: RoboFlamingoModel) -> None:
    total = count_parameters(model)
    trainable = sum(p.numel() for _, p in model.trainable_named_parameters())
    logger.info("RoboFlamingo %s: %.1fM parameters, %.1fM trainable (%.1f%%)",
                model.config.name, total / 1e6, trainable / 1e6,
                100 * trainable / max(total, 1))


__all__ = ["GatedCrossAttentionBlock", "MosaicGPT", "PerceiverResampler", "PolicyHead",
           "RoboFlamingoModel", "alibi_bias", "alibi_slopes", "attention_bias"]
