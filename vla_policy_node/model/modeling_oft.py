"""The OFT model: OpenVLA (Prismatic dinosiglip + Llama) with OFT's parallel action decoding.

Sequence fed to the language model (one row per batch element)::

    [BOS] [N x patches] [proprio] [diffusion timestep] [prompt, padding] [K*D slots] [STOP]

- Padding (batched prompts of different lengths) sits between the prompt and the action slots;
  padding keys are masked out and position ids skip them, so a padded row computes exactly what
  the unpadded sequence computes, and the action slots are at the same indices in every row.
- L1 / diffusion heads: attention is bidirectional over all tokens (OFT parallel decoding), the
  action slots are zero embeddings (L1) or projected noisy actions (diffusion).
- Discrete baseline (OpenVLA): causal attention, action tokens generated greedily.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from vla_policy_node.model.action_heads import (ActionTokenizer, DiffusionActionHead,
                                                L1RegressionActionHead, NoisyActionProjector,
                                                PrismaticProjector, ProprioProjector)
from vla_policy_node.model.configuration_oft import OFTConfig
from vla_policy_node.model.modeling_vision import FusedVisionBackbone

logger = logging.getLogger(__name__)


def build_llama(config: OFTConfig, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    llm = config.llm
    hf = LlamaConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size, num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads,
        max_position_embeddings=llm.max_position_embeddings, rms_norm_eps=llm.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta},
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    hf._attn_implementation = attn_implementation
    return LlamaForCausalLM(hf)


class OFTModel(nn.Module):
    """OpenVLA-OFT as one ``nn.Module``.

    Submodules: ``vision_backbone``, ``projector``, ``language_model`` (``LlamaForCausalLM``),
    ``proprio_projector`` (if proprio), ``action_head`` (L1 or diffusion; absent for discrete),
    ``noisy_action_projector`` (diffusion).

    Batches (built by the processor) hold:
        pixel_values (B, N, 6, S, S) float; input_ids (B, T) long (BOS + prompt, right-padded);
        attention_mask (B, T) bool; proprio (B, P) normalized (with proprio);
        actions (B, K, D) normalized (training).
    """

    def __init__(self, config: OFTConfig, bos_token_id: int = 1, eos_token_id: int = 2,
                 pad_token_id: int | None = None) -> None:
        super().__init__()
        self.config = config
        h = config.llm.hidden_size
        self.vision_backbone = FusedVisionBackbone(config)
        self.projector = PrismaticProjector(config.vision_width, config.projector_hidden, h)
        self.language_model = build_llama(config)
        self.proprio_projector = (ProprioProjector(h, config.proprio_dim)
                                  if config.use_proprio else None)
        self.noisy_action_projector = None
        if config.action_head == "l1":
            self.action_head = L1RegressionActionHead(h, config.action_dim, config.chunk_length,
                                                      config.head_blocks)
        elif config.action_head == "diffusion":
            self.action_head = DiffusionActionHead(h, config.action_dim, config.chunk_length,
                                                   config.diffusion_train_steps,
                                                   config.head_blocks)
            self.noisy_action_projector = NoisyActionProjector(h)
        else:
            self.action_head = None
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else config.llm.vocab_size - 1
        self.action_tokenizer = ActionTokenizer(self.pad_token_id, config.n_action_bins)
        # Diffusion sampling arithmetic (noise, scheduler steps): float32, or None = the model
        # dtype as the reference does (see _sample_diffusion).
        self.diffusion_loop_dtype: torch.dtype | None = torch.float32

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    def language_vector(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """FiLM conditioning: mean input embedding of the non-action, non-padding tokens
        (BOS, prompt, STOP). input_ids/text_mask: (B, T) -> (B, H)."""
        emb = self.embed_tokens(input_ids)
        stop = self.embed_tokens(torch.full_like(input_ids[:, :1], self.eos_token_id))
        mask = text_mask.to(emb.dtype).unsqueeze(-1)
        total = (emb * mask).sum(1) + stop[:, 0]
        return total / (mask.sum(1) + 1)

    def encode_images(self, pixel_values: torch.Tensor,
                      language: torch.Tensor | None) -> torch.Tensor:
        """pixel_values (B, N, 6, S, S) -> projected patch tokens (B, N * patches, H)."""
        b, n = pixel_values.shape[:2]
        flat = pixel_values.reshape(b * n, *pixel_values.shape[2:])
        lang = None if language is None else language.repeat_interleave(n, dim=0)
        features = self.vision_backbone(flat, lang)
        tokens = self.projector(features.to(self.dtype))
        return tokens.reshape(b, n * tokens.shape[1], tokens.shape[2])

    def _prefix(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything before the action slots that does not change across denoising steps:
        (embeds (B, L0, H), key mask (B, L0) bool), without the diffusion timestep token."""
        ids = batch["input_ids"].to(self.device)
        text_mask = batch["attention_mask"].to(self.device).bool()
        language = (self.language_vector(ids, text_mask) if self.config.use_film else None)
        patches = self.encode_images(batch["pixel_values"].to(self.device), language)
        text = self.embed_tokens(ids)
        parts = [text[:, :1], patches]
        masks = [text_mask[:, :1], torch.ones(patches.shape[:2], dtype=torch.bool,
                                              device=self.device)]
        if self.proprio_projector is not None:
            proprio = batch["proprio"].to(self.device, self.dtype)
            parts.append(self.proprio_projector(proprio).unsqueeze(1))
            masks.append(torch.ones(proprio.shape[0], 1, dtype=torch.bool, device=self.device))
        return torch.cat(parts, 1), torch.cat(masks, 1)

    def _text_tail(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = batch["input_ids"].to(self.device)
        return self.embed_tokens(ids[:, 1:]), batch["attention_mask"].to(self.device).bool()[:, 1:]

    def run_llm(self, embeds: torch.Tensor, key_mask: torch.Tensor,
                causal: bool = False) -> torch.Tensor:
        """One language-model pass with an explicit 4D mask.

        embeds (B, L, H); key_mask (B, L) bool (False = padding). Bidirectional unless
        ``causal``. Returns the final-norm hidden states (B, L, H).
        """
        b, length = key_mask.shape
        allowed = key_mask[:, None, None, :].expand(b, 1, length, length)
        if causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool,
                                           device=key_mask.device).tril()
        mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
        mask.masked_fill_(~allowed, torch.finfo(embeds.dtype).min)
        positions = (key_mask.long().cumsum(1) - 1).clamp(min=0)
        out = self.language_model.model(inputs_embeds=embeds, attention_mask=mask,
                                        position_ids=positions, use_cache=False)
        return out.last_hidden_state

    def _assemble(self, prefix: torch.Tensor, prefix_mask: torch.Tensor, extra: list[torch.Tensor],
                  tail: torch.Tensor, tail_mask: torch.Tensor,
                  slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concatenate one sequence per row; also return ``reads`` (B, K*D + 1): each row's own
        last prompt token followed by every action slot (the positions that see, in a causal
        LM, the next action)."""
        b = prefix.shape[0]
        stop = self.embed_tokens(torch.full((b, 1), self.eos_token_id, device=self.device))
        ones = torch.ones(b, 1, dtype=torch.bool, device=self.device)
        embeds = torch.cat([prefix, *extra, tail, slots, stop], 1)
        key_mask = torch.cat([prefix_mask, *([ones] * len(extra)), tail_mask,
                              torch.ones(slots.shape[:2], dtype=torch.bool, device=self.device),
                              ones], 1)
        first_slot = embeds.shape[1] - slots.shape[1] - 1
        # Padding sits between the prompt and the slots: the last prompt token is at the row's
        # own index, not at first_slot - 1 (that is a PAD position for shorter prompts).
        last_prompt = (prefix.shape[1] + len(extra) - 1
                       + tail_mask.long().sum(1, keepdim=True))
        slot_index = torch.arange(first_slot, first_slot + slots.shape[1], device=self.device)
        reads = torch.cat([last_prompt, slot_index.expand(b, -1)], 1)
        return embeds, key_mask, reads

    def sequence_hidden_states(self, batch: dict[str, torch.Tensor],
                               slots: torch.Tensor | None = None,
                               timestep_token: torch.Tensor | None = None,
                               prefix: tuple[torch.Tensor, torch.Tensor] | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bidirectional pass over the whole sequence.

        Returns the final hidden states (B, L, H) and the action read positions (B, K*D):
        each row's last prompt token through the second-to-last action slot.
        slots: (B, K*D, H) slot embeddings (default zeros, OFT's empty action embeddings).
        """
        prefix_embeds, prefix_mask = prefix if prefix is not None else self._prefix(batch)
        b, n_slots = prefix_embeds.shape[0], self.config.num_action_slots
        if slots is None:
            slots = torch.zeros(b, n_slots, prefix_embeds.shape[2], dtype=self.dtype,
                                device=self.device)
        extra = [] if timestep_token is None else [timestep_token.unsqueeze(1).to(self.dtype)]
        tail, tail_mask = self._text_tail(batch)
        embeds, key_mask, reads = self._assemble(prefix_embeds, prefix_mask, extra, tail,
                                                 tail_mask, slots)
        return self.run_llm(embeds, key_mask), reads[:, :n_slots]

    def action_hidden_states(self, batch: dict[str, torch.Tensor],
                             slots: torch.Tensor | None = None,
                             timestep_token: torch.Tensor | None = None,
                             prefix: tuple[torch.Tensor, torch.Tensor] | None = None
                             ) -> torch.Tensor:
        """The K*D hidden states the action head reads (B, K*D, H).

        As the reference (modeling_prismatic.py:914-918 inference, :862-866 diffusion; the
        same offset in finetune.py's training forward): from the last prompt token (the
        29871 after "Out:") through the second-to-last action slot, a causal-LM offset kept
        although attention is bidirectional. Training and inference both read these.
        """
        hidden, reads = self.sequence_hidden_states(batch, slots, timestep_token, prefix)
        return gather_positions(hidden, reads)

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, torch.Tensor],
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar loss: L1 on normalized actions (L1 head), noise MSE (diffusion), token
        cross-entropy (discrete). ``batch["actions"]``: (B, K, D) normalized."""
        actions = batch["actions"].to(self.device, self.dtype)
        expected = (self.config.chunk_length, self.config.action_dim)
        if tuple(actions.shape[1:]) != expected:
            raise ValueError(f"batch actions have shape {tuple(actions.shape)}, expected "
                             f"(B, {expected[0]}, {expected[1]})")
        if self.config.action_head == "l1":
            pred = self.action_head.predict_action(self.action_hidden_states(batch))
            return F.l1_loss(pred.float(), actions.float())
        if self.config.action_head == "diffusion":
            head = self.action_head
            b = actions.shape[0]
            noise = torch.randn(actions.shape, generator=generator, device="cpu").to(actions)
            t = torch.randint(0, head.noise_scheduler.config.num_train_timesteps, (b,),
                              generator=generator, device="cpu").to(self.device)
            noisy = head.noise_scheduler.add_noise(actions, noise, t)
            slots = self.noisy_action_projector(noisy.reshape(b, -1, 1))
            hidden = self.action_hidden_states(batch, slots, head.time_encoder(t).to(self.dtype))
            return F.mse_loss(head.predict_noise(hidden).float(), noise.float())
        return self._discrete_loss(batch, actions)

    def _discrete_loss(self, batch: dict[str, torch.Tensor],
                       actions: torch.Tensor) -> torch.Tensor:
        b = actions.shape[0]
        tokens = torch.as_tensor(self.action_tokenizer.encode(actions.float().cpu().numpy()),
                                 device=self.device).reshape(b, -1)
        prefix, prefix_mask = self._prefix(batch)
        tail, tail_mask = self._text_tail(batch)
        embeds, key_mask, reads = self._assemble(prefix, prefix_mask, [], tail, tail_mask,
                                                 self.embed_tokens(tokens))
        hidden = self.run_llm(embeds, key_mask, causal=True)
        # The row's last prompt token predicts the first action token, ..., the last action
        # token predicts STOP.
        logits = self.language_model.lm_head(gather_positions(hidden, reads))
        targets = torch.cat([tokens, torch.full((b, 1), self.eos_token_id, device=self.device)], 1)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_actions(self, batch: dict[str, torch.Tensor],
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalized action chunks (B, K, D) float32."""
        if self.config.action_head == "l1":
            out = self.action_head.predict_action(self.action_hidden_states(batch))
        elif self.config.action_head == "diffusion":
            out = self._sample_diffusion(batch, generator)
        else:
            out = self._generate_discrete(batch)
        return out.float()

    def _sample_diffusion(self, batch: dict[str, torch.Tensor],
                          generator: torch.Generator | None,
                          noise: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM reverse process (modeling_prismatic.py:793-875): ``diffusion_inference_steps``
        steps (the reference's default 50 = every training step), one LLM pass each, the
        timestep token after the proprio token, each noisy scalar projected to one slot.

        noise: (B, K, D) initial noise (default: drawn from ``generator``). The loop runs in
        ``self.diffusion_loop_dtype`` (float32 by default; the reference draws the noise and
        steps the scheduler in the model dtype, i.e. bf16 in bf16; docs/model.md has the
        measured difference)."""
        head = self.action_head
        scheduler = head.noise_scheduler
        scheduler.set_timesteps(self.config.diffusion_inference_steps)
        # Images, proprio and prompt do not change across denoising steps: encode them once.
        prefix = self._prefix(batch)
        b = prefix[0].shape[0]
        shape = (b, self.config.chunk_length, self.config.action_dim)
        loop_dtype = self.diffusion_loop_dtype or self.dtype
        if noise is None:
            noise = torch.randn(shape, generator=generator, device="cpu")
        if tuple(noise.shape) != shape:
            raise ValueError(f"diffusion noise has shape {tuple(noise.shape)}, expected {shape}")
        x = noise.to(self.device, loop_dtype)
        for t in scheduler.timesteps:
            slots = self.noisy_action_projector(x.to(self.dtype).reshape(b, -1, 1))
            t_batch = torch.full((b,), int(t), device=self.device)
            hidden = self.action_hidden_states(batch, slots,
                                               head.time_encoder(t_batch).to(self.dtype), prefix)
            eps = head.predict_noise(hidden).to(loop_dtype)
            x = scheduler.step(eps, t, x).prev_sample
        return x

    def _generate_discrete(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Greedy autoregressive decoding of K*D action tokens (causal, KV cache), restricted
        to the action-token range so every output decodes to a bin."""
        from transformers import DynamicCache
        prefix, prefix_mask = self._prefix(batch)
        tail, tail_mask = self._text_tail(batch)
        embeds = torch.cat([prefix, tail], 1)
        key_mask = torch.cat([prefix_mask, tail_mask], 1)
        b, length = key_mask.shape
        n = self.config.num_action_slots
        lo, hi = self.action_tokenizer.first_token, self.action_tokenizer.action_token_end
        cache = DynamicCache(config=self.language_model.config)
        allowed = key_mask[:, None, None, :] & torch.ones(
            length, length, dtype=torch.bool, device=self.device).tril()
        positions = (key_mask.long().cumsum(1) - 1).clamp(min=0)
        generated = []
        step_embeds, step_pos = embeds, positions
        for _ in range(n):
            mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=self.device)
            mask.masked_fill_(~allowed, torch.finfo(embeds.dtype).min)
            out = self.language_model.model(inputs_embeds=step_embeds, attention_mask=mask,
                                            position_ids=step_pos, past_key_values=cache,
                                            use_cache=True)
            if not generated:
                # Prompts are right-padded: each row continues from its last real token.
                last = gather_positions(out.last_hidden_state,
                                        key_mask.long().sum(1, keepdim=True) - 1)[:, 0]
            else:
                last = out.last_hidden_state[:, -1]
            logits = self.language_model.lm_head(last)
            token = logits[:, lo:hi].argmax(-1) + lo
            generated.append(token)
            step_embeds = self.embed_tokens(token[:, None])
            step_pos = step_pos[:, -1:] + 1
            key_mask = torch.cat([key_mask, torch.ones(b, 1, dtype=torch.bool,
                                                       device=self.device)], 1)
            allowed = key_mask[:, None, None, :]
        tokens = torch.stack(generated, 1).cpu().numpy()
        actions = self.action_tokenizer.decode(tokens)
        return torch.as_tensor(actions, dtype=torch.float32).reshape(
            b, self.config.chunk_length, self.config.action_dim)

    def forward(self, batch: dict[str, torch.Tensor],
                generator: torch.Generator | None = None) -> Any:
        """Training forward: the loss (same as :meth:`compute_loss`)."""
        return self.compute_loss(batch, generator)


def gather_positions(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """hidden (B, L, H), index (B, N) long -> (B, N, H): per-row positions."""
    return torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return int(sum(p.numel() for p in module.parameters()
                   if p.requires_grad or not trainable_only))


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()
