"""Configuration of the RoboFlamingo family (OpenFlamingo backbone + a policy head over history).

One validated dataclass, :class:`RoboFlamingoConfig`, describes the CLIP vision tower, the
perceiver resampler, the language model with its gated cross-attention layers, the policy head,
the camera fusion and the action space. Presets give the released sizes (random weights) and
``tiny-roboflamingo``, the same classes at CPU-test size. Dimensions and their sources:
docs/roboflamingo.md and ../shared/design/FACTS_roboflamingo.md.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

LM_KINDS = ("mosaic_gpt", "gpt_neox", "mpt")
HEADS = ("lstm", "mlp")
FUSIONS = ("post", "pre")
NORMALIZATIONS = ("none", "bounds", "bounds_q99")
TOKENIZER_KINDS = ("tiny", "gpt_neox")

# open_clip's OpenAI CLIP normalization (the val transform of ViT-L-14 "openai").
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# data.py:900-914 of the release: no BOS, no spaces, end-of-chunk and EOS kept.
PROMPT_TEMPLATE = "<image>{instruction}<|endofchunk|><|endoftext|>"

ALOHA_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
CALVIN_CAMERAS = ("rgb_static", "rgb_gripper")
# DrQ shift pads of the release at 224 px: 10 for the static camera, 4 for the gripper camera.
STATIC_SHIFT, WRIST_SHIFT = 10, 4


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_ints(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        if f.type == "int":
            _positive(f"{prefix}.{f.name}", getattr(obj, f.name))


@dataclass
class CLIPVisionSpec:
    """The CLIP ViT (OpenAI ViT-L/14: 1024 wide, 24 blocks, 16 heads, QuickGELU).

    The features are the raw patch tokens of the last block: no CLS, no ln_post, no proj.
    """

    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    patch_size: int = 14
    image_size: int = 224
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_ints(self, "CLIPVisionSpec")
        if self.width % self.heads:
            raise ValueError(f"CLIP width {self.width} not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIP image_size {self.image_size} not divisible by patch_size "
                             f"{self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class PerceiverSpec:
    """OpenFlamingo's perceiver resampler (width = the CLIP width; no time embeddings)."""

    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_latents: int = 64
    ff_mult: int = 4

    def __post_init__(self) -> None:
        _check_ints(self, "PerceiverSpec")


@dataclass
class LanguageSpec:
    """The language model and its gated cross-attention layers.

    kind: ``mosaic_gpt`` (MPT-1B, our port: QK-LayerNorm, ALiBi, weight-only LayerNorms),
    ``gpt_neox`` (RedPajama-INCITE-3B) or ``mpt`` (MPT-7B), the last two from transformers.
    A gated cross-attention layer sits before decoder block i when
    ``(i + 1) % cross_attn_every_n_layers == 0``.
    """

    kind: str
    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    cross_attn_every_n_layers: int
    expansion_ratio: int = 4
    max_seq_len: int = 2048
    alibi_bias_max: int = 8
    layer_norm_eps: float = 1e-5
    rotary_pct: float = 1.0                 # gpt_neox
    use_parallel_residual: bool = False     # gpt_neox (RedPajama-INCITE-3B: false)
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    xattn_ff_mult: int = 4

    def __post_init__(self) -> None:
        if self.kind not in LM_KINDS:
            raise ValueError(f"LanguageSpec.kind must be one of {LM_KINDS}, got {self.kind!r}")
        _check_ints(self, "LanguageSpec")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"LM hidden_size {self.hidden_size} not divisible by num_heads "
                             f"{self.num_heads}")
        if self.cross_attn_every_n_layers > self.num_layers:
            raise ValueError(f"cross_attn_every_n_layers {self.cross_attn_every_n_layers} > "
                             f"num_layers {self.num_layers}: no cross-attention layer at all")
        if self.kind == "mosaic_gpt" and self.num_layers < 2:
            raise ValueError("mosaic_gpt needs >= 2 layers (features are the input of the last)")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct must be in (0, 1], got {self.rotary_pct}")

    def has_xattn(self, layer: int) -> bool:
        return (layer + 1) % self.cross_attn_every_n_layers == 0


@dataclass
class RoboFlamingoConfig:
    """Everything that defines a RoboFlamingo policy model.

    Attributes:
        camera_names: model image order; "post" fusion runs every camera through the same
            perceiver and concatenates the latents (n_cameras * num_latents media tokens).
        window: W, frames of history the head sees (12 as released).
        frame_stride: dataset frames between two history frames (1 as released: one frame
            per control step). Inference must then run every ``frame_stride`` dataset frames
            (node: trigger fixed_rate at dataset_fps / frame_stride).
        head: ``lstm`` (released: 4-layer LSTM, then MLP heads) or ``mlp`` (no history).
        chunk_length: K actions per step (1 as released; K > 1 is the chunking head, the
            release's ``multi_step_action``).
        action_dim: D. binary_gripper_dims: dims predicted by the sigmoid gripper head
            (CALVIN: (6,), raw values -1 close / +1 open); every other dim goes through the
            Tanh head on [-1, 1]-normalized values. ALOHA's grippers are continuous: empty.
        normalization: how raw actions map to [-1, 1] (``none`` = already there, as CALVIN's
            rel_actions); statistics come from dataset_statistics.json.
        shift_pad: DrQ shift augmentation pad per camera at 224 px (scaled to image_size).
        gripper_loss_weight, huber_delta, lr, weight_decay, warmup_steps, grad_clip: the
            released training recipe (train_utils.py:573-578, train_calvin.py).
    """

    name: str
    vision: CLIPVisionSpec
    perceiver: PerceiverSpec
    lm: LanguageSpec
    camera_names: tuple[str, ...] = ALOHA_CAMERAS
    fusion: str = "post"
    window: int = 12
    frame_stride: int = 1
    head: str = "lstm"
    chunk_length: int = 1
    action_dim: int = 14
    binary_gripper_dims: tuple[int, ...] = ()
    lstm_hidden: int = 1024
    lstm_layers: int = 4
    lstm_dropout: float = 0.1
    mlp_dims: tuple[int, ...] = (1024, 512, 256)
    normalization: str = "bounds"   # ALOHA joint targets: min/max as OFT's ALOHA recipe
    max_text_tokens: int = 32
    tokenizer_kind: str = "gpt_neox"
    clip_mean: tuple[float, ...] = CLIP_MEAN
    clip_std: tuple[float, ...] = CLIP_STD
    prompt_template: str = PROMPT_TEMPLATE
    shift_pad: tuple[int, ...] = (STATIC_SHIFT, WRIST_SHIFT, WRIST_SHIFT)
    gripper_loss_weight: float = 0.01
    huber_delta: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 5000
    grad_clip: float = 1.0
    family: str = field(default="roboflamingo", init=False)

    def __post_init__(self) -> None:
        self.camera_names = tuple(self.camera_names)
        self.binary_gripper_dims = tuple(int(d) for d in self.binary_gripper_dims)
        self.mlp_dims = tuple(int(d) for d in self.mlp_dims)
        self.shift_pad = tuple(int(p) for p in self.shift_pad)
        self.clip_mean = tuple(float(v) for v in self.clip_mean)
        self.clip_std = tuple(float(v) for v in self.clip_std)
        for name in ("window", "frame_stride", "chunk_length", "action_dim", "lstm_hidden",
                     "lstm_layers", "max_text_tokens"):
            _positive(name, getattr(self, name))
        if not self.camera_names or len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"camera_names must be distinct and non-empty, got "
                             f"{self.camera_names}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got "
                             f"{self.normalization!r}")
        if self.tokenizer_kind not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer_kind must be one of {TOKENIZER_KINDS}, got "
                             f"{self.tokenizer_kind!r}")
        bad = [d for d in self.binary_gripper_dims if not 0 <= d < self.action_dim]
        if bad or len(set(self.binary_gripper_dims)) != len(self.binary_gripper_dims):
            raise ValueError(f"binary_gripper_dims {self.binary_gripper_dims} must be distinct "
                             f"dims of 0..{self.action_dim - 1}")
        if len(self.binary_gripper_dims) == self.action_dim:
            raise ValueError("at least one action dim must be continuous")
        if not self.mlp_dims or any(d <= 0 for d in self.mlp_dims):
            raise ValueError(f"mlp_dims must be positive widths, got {self.mlp_dims}")
        if len(self.shift_pad) != len(self.camera_names) or any(p < 0 for p in self.shift_pad):
            raise ValueError(f"shift_pad needs one pad >= 0 per camera ({len(self.camera_names)}"
                             f"), got {self.shift_pad}")
        if len(self.clip_mean) != 3 or len(self.clip_std) != 3 or min(self.clip_std) <= 0:
            raise ValueError("clip_mean/clip_std must be 3 values (std > 0)")
        if not 0.0 <= self.lstm_dropout < 1.0:
            raise ValueError(f"lstm_dropout must be in [0, 1), got {self.lstm_dropout}")
        for name in ("gripper_loss_weight", "huber_delta", "lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.huber_delta <= 0 or self.lr <= 0:
            raise ValueError("huber_delta and lr must be > 0")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if "{instruction}" not in self.prompt_template or "<image>" not in self.prompt_template:
            raise ValueError("prompt_template needs <image> and {instruction}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def continuous_dims(self) -> tuple[int, ...]:
        return tuple(d for d in range(self.action_dim) if d not in self.binary_gripper_dims)

    @property
    def media_tokens(self) -> int:
        """Visual tokens each text token cross-attends to per frame."""
        if self.fusion == "post":
            return len(self.camera_names) * self.perceiver.num_latents
        return self.perceiver.num_latents

    @property
    def proprio_dim(self) -> int:
        # Accepted for the node's contract and ignored, as in the release (issue #26).
        return self.action_dim

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("family")
        return {"family": "roboflamingo", **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RoboFlamingoConfig":
        data = dict(copy.deepcopy(dict(data)))
        family = data.pop("family", "roboflamingo")
        if family != "roboflamingo":
            raise ValueError(f"not a RoboFlamingo config (family {family!r})")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RoboFlamingo config fields {unknown}")
        for key, spec in (("vision", CLIPVisionSpec), ("perceiver", PerceiverSpec),
                          ("lm", LanguageSpec)):
            if key not in data or not isinstance(data[key], Mapping):
                raise ValueError(f"RoboFlamingo config lacks the {key!r} section")
            data[key] = spec(**data[key])
        return cls(**data)

    def replace(self, **changes: Any) -> "RoboFlamingoConfig":
        data = self.to_dict()
        data.update(changes)
        return RoboFlamingoConfig.from_dict(data)


# ---------------------------------------------------------------------- presets
# The released LM configurations (factory.py:11-48; train_calvin.py overrides the CLI interval).
GPT_NEOX_VOCAB = 50280  # 50277 + <|endofchunk|>, <image>, <PAD> (resize_token_embeddings)
RELEASED_LMS: dict[str, LanguageSpec] = {
    "mpt_3b": LanguageSpec("mosaic_gpt", 2048, 24, 16, GPT_NEOX_VOCAB, 1),
    "mpt_dolly_3b": LanguageSpec("mosaic_gpt", 2048, 24, 16, GPT_NEOX_VOCAB, 1),
    "mpt_4b": LanguageSpec("gpt_neox", 2560, 32, 32, GPT_NEOX_VOCAB, 2),
    "mpt_base_4b": LanguageSpec("gpt_neox", 2560, 32, 32, GPT_NEOX_VOCAB, 2),
    "mpt_9b": LanguageSpec("mpt", 4096, 32, 32, GPT_NEOX_VOCAB, 4),
}
TINY_VOCAB = 512
# Our choice for ALOHA (not in the release): the executor needs a plan longer than the
# inference latency, so the head predicts K = 10 actions (0.4 s at 25 Hz) and the history
# holds every 5th frame (inference at 5 Hz, a 2.4 s window of 12 frames).
ALOHA_CHUNKING = {"chunk_length": 10, "frame_stride": 5}


def _released(llm: str, robot: str) -> RoboFlamingoConfig:
    lm = copy.deepcopy(RELEASED_LMS[llm])
    if robot == "calvin":
        # The checkpoints as released: static + gripper camera, CALVIN rel_actions
        # (6 continuous dims already in [-1, 1], binary gripper at dim 6).
        return RoboFlamingoConfig(
            name=f"roboflamingo-{llm}", vision=CLIPVisionSpec(), perceiver=PerceiverSpec(),
            lm=lm, camera_names=CALVIN_CAMERAS, action_dim=7, binary_gripper_dims=(6,),
            normalization="none", shift_pad=(STATIC_SHIFT, WRIST_SHIFT))
    return RoboFlamingoConfig(name=f"roboflamingo-{llm}-aloha", vision=CLIPVisionSpec(),
                              perceiver=PerceiverSpec(), lm=lm, **ALOHA_CHUNKING)


def _tiny() -> RoboFlamingoConfig:
    return RoboFlamingoConfig(
        name="tiny-roboflamingo",
        vision=CLIPVisionSpec(width=32, depth=2, heads=2, mlp_dim=64, image_size=56),
        perceiver=PerceiverSpec(depth=2, heads=2, dim_head=16, num_latents=8),
        lm=LanguageSpec("mosaic_gpt", 64, 4, 4, TINY_VOCAB, 1, max_seq_len=64, xattn_heads=2,
                        xattn_dim_head=16),
        window=12, lstm_hidden=32, lstm_layers=4, mlp_dims=(64, 32, 32),
        tokenizer_kind="tiny", warmup_steps=0, lr=1e-3)


PRESETS: tuple[str, ...] = (
    ("tiny-roboflamingo", "tiny-roboflamingo-chunk")
    + tuple(f"roboflamingo-{k}" for k in RELEASED_LMS)
    + tuple(f"roboflamingo-{k}-aloha" for k in RELEASED_LMS))


def get_preset(name: str) -> RoboFlamingoConfig:
    """A preset configuration (a fresh copy)."""
    if name == "tiny-roboflamingo":
        return _tiny()
    if name == "tiny-roboflamingo-chunk":
        return _tiny().replace(name=name, **ALOHA_CHUNKING)
    if name.startswith("roboflamingo-"):
        llm = name[len("roboflamingo-"):]
        robot = "calvin"
        if llm.endswith("-aloha"):
            llm, robot = llm[:-len("-aloha")], "aloha"
        if llm in RELEASED_LMS:
            return _released(llm, robot)
    raise ValueError(f"unknown RoboFlamingo preset {name!r}; known: {list(PRESETS)}")


__all__ = ["CLIPVisionSpec", "LanguageSpec", "PerceiverSpec", "PRESETS", "RELEASED_LMS",
           "RoboFlamingoConfig", "get_preset"]
