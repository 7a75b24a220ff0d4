"""Configuration of the OFT model (OpenVLA backbone + OFT action decoding).

One validated dataclass, :class:`OFTConfig`, describes everything needed to build the model:
the two vision towers, the projector, the Llama language model, the OFT parts (cameras, chunk,
proprio, FiLM, action head) and the image/prompt pipeline. Presets give the published
``openvla-7b`` dimensions and ``tiny`` versions of the same classes for CPU tests.

Chunk length, action dim and proprio dim are configuration (ALOHA 25/14/14, LIBERO 8/7/8):
they come from a preset or a checkpoint, never from a command line.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

ACTION_HEADS = ("l1", "diffusion", "discrete")
NORMALIZATIONS = ("bounds", "bounds_q99")
QUANTIZATIONS = ("none", "8bit", "4bit")

# Per-tower pixel normalization of the Prismatic "dinosiglip" backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"

ALOHA_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
LIBERO_CAMERAS = ("agentview", "wrist")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass
class ViTConfig:
    """One vision tower (DINOv2-with-registers or SigLIP), as transformers builds it.

    ``image_size // patch_size`` squared patches come out of the tower; the OFT backbone uses
    the output of block ``depth - 2`` (the second-to-last block), without class/register tokens.
    """

    kind: str                 # "dinov2_reg" or "siglip"
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int = 14
    image_size: int = 224
    num_registers: int = 0    # dinov2_reg only
    layerscale_init: float = 1e-5
    layer_norm_eps: float = 1e-6
    timm_id: str = ""         # the name official checkpoints give this tower

    def __post_init__(self) -> None:
        if self.kind not in ("dinov2_reg", "siglip"):
            raise ValueError(f"ViTConfig.kind must be 'dinov2_reg' or 'siglip', got {self.kind!r}")
        for name in ("width", "depth", "heads", "mlp_dim", "patch_size", "image_size"):
            _positive(f"ViTConfig.{name}", getattr(self, name))
        if self.depth < 2:
            raise ValueError(f"ViTConfig.depth must be >= 2 (features of the second-to-last "
                             f"block), got {self.depth}")
        if self.width % self.heads:
            raise ValueError(f"ViTConfig.width {self.width} not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig.image_size {self.image_size} not divisible by "
                             f"patch_size {self.patch_size}")
        if self.kind == "dinov2_reg" and self.mlp_dim % self.width:
            raise ValueError(f"DINOv2 mlp_dim {self.mlp_dim} must be a multiple of width "
                             f"{self.width} (transformers' integer mlp_ratio)")
        if self.kind == "siglip" and self.num_registers:
            raise ValueError("SigLIP has no register tokens")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class LlamaTextConfig:
    """The Llama language model (vocab already padded, as in OpenVLA's checkpoint)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.type == "int":
                _positive(f"LlamaTextConfig.{f.name}", getattr(self, f.name))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"LlamaTextConfig.hidden_size {self.hidden_size} not divisible by "
                             f"num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not divisible by num_kv_heads "
                             f"{self.num_kv_heads}")


@dataclass
class OFTConfig:
    """Everything that defines an OFT policy model.

    Attributes:
        dino / siglip: the two vision towers (same image, 6-channel input).
        projector_hidden: width of the projector's first layer (OpenVLA: 4 x fused width).
        llm: the Llama language model.
        camera_names: model image order (ALOHA: cam_high, left wrist, right wrist).
        chunk_length (K), action_dim (D), proprio_dim (P): OFT action chunk and proprio sizes.
        use_proprio: add the proprio projector token.
        use_film: FiLM language conditioning in every vision block.
        action_head: "l1" (MLP-ResNet regression), "diffusion" (DDIM), "discrete" (OpenVLA
            256-bin tokens, greedy autoregressive decoding, causal attention).
        head_blocks: residual blocks of the MLP-ResNet head.
        diffusion_train_steps / diffusion_inference_steps: DDIM schedule.
        normalization: "bounds" (min/max, ALOHA) or "bounds_q99" (q01/q99, LIBERO).
        n_action_bins: discrete tokenizer bins.
        resize_size: frames are first resized to this square size (ALOHA training data: 256).
        center_crop: at inference, crop ``crop_scale`` of the area and resize back.
        empty_token_id: token appended after "Out:" (Llama's "▁" 29871), or None.
        tokenizer_kind: "tiny" (built in code) or "llama" (from a checkpoint).
    """

    dino: ViTConfig
    siglip: ViTConfig
    llm: LlamaTextConfig
    projector_hidden: int
    camera_names: tuple[str, ...] = ALOHA_CAMERAS
    chunk_length: int = 25
    action_dim: int = 14
    proprio_dim: int = 14
    use_proprio: bool = True
    use_film: bool = True
    action_head: str = "l1"
    head_blocks: int = 2
    diffusion_train_steps: int = 50
    diffusion_inference_steps: int = 50
    normalization: str = "bounds"
    n_action_bins: int = 256
    resize_size: int = 256
    center_crop: bool = True
    crop_scale: float = 0.9
    prompt_template: str = PROMPT_TEMPLATE
    empty_token_id: int | None = None
    tokenizer_kind: str = "tiny"
    name: str = "custom"
    dino_mean: tuple[float, ...] = IMAGENET_MEAN
    dino_std: tuple[float, ...] = IMAGENET_STD
    siglip_mean: tuple[float, ...] = SIGLIP_MEAN
    siglip_std: tuple[float, ...] = SIGLIP_STD
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.dino, Mapping):
            self.dino = ViTConfig(**self.dino)
        if isinstance(self.siglip, Mapping):
            self.siglip = ViTConfig(**self.siglip)
        if isinstance(self.llm, Mapping):
            self.llm = LlamaTextConfig(**self.llm)
        self.camera_names = tuple(self.camera_names)
        for name in ("dino_mean", "dino_std", "siglip_mean", "siglip_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"OFTConfig.{name} needs 3 values, got {value}")
            setattr(self, name, value)
        if self.dino.kind != "dinov2_reg" or self.siglip.kind != "siglip":
            raise ValueError(f"OFTConfig.dino/siglip kinds are {self.dino.kind!r}/"
                             f"{self.siglip.kind!r}, expected 'dinov2_reg'/'siglip'")
        if (self.dino.image_size, self.dino.patch_size) != (
                self.siglip.image_size, self.siglip.patch_size):
            raise ValueError("the two vision towers must see the same image size and patch size "
                             f"(dino {self.dino.image_size}/{self.dino.patch_size}, siglip "
                             f"{self.siglip.image_size}/{self.siglip.patch_size})")
        if not self.camera_names:
            raise ValueError("OFTConfig.camera_names is empty")
        if len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"OFTConfig.camera_names has duplicates: {self.camera_names}")
        for name in ("projector_hidden", "chunk_length", "action_dim", "proprio_dim",
                     "head_blocks", "diffusion_train_steps", "diffusion_inference_steps",
                     "n_action_bins", "resize_size"):
            _positive(f"OFTConfig.{name}", getattr(self, name))
        if self.action_head not in ACTION_HEADS:
            raise ValueError(f"OFTConfig.action_head must be one of {ACTION_HEADS}, "
                             f"got {self.action_head!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"OFTConfig.normalization must be one of {NORMALIZATIONS}, "
                             f"got {self.normalization!r}")
        if self.diffusion_inference_steps > self.diffusion_train_steps:
            raise ValueError(f"diffusion_inference_steps {self.diffusion_inference_steps} > "
                             f"diffusion_train_steps {self.diffusion_train_steps}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"OFTConfig.crop_scale must be in (0, 1], got {self.crop_scale}")
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} < image_size {self.image_size}")
        if "{instruction}" not in self.prompt_template:
            raise ValueError(f"prompt_template lacks '{{instruction}}': {self.prompt_template!r}")
        if self.tokenizer_kind not in ("tiny", "llama"):
            raise ValueError(f"tokenizer_kind must be 'tiny' or 'llama', "
                             f"got {self.tokenizer_kind!r}")
        if self.action_head == "discrete" and self.n_action_bins >= self.llm.vocab_size:
            raise ValueError(f"n_action_bins {self.n_action_bins} >= vocab {self.llm.vocab_size}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def image_size(self) -> int:
        return self.dino.image_size

    @property
    def num_images(self) -> int:
        return len(self.camera_names)

    @property
    def patches_per_image(self) -> int:
        return self.dino.num_patches

    @property
    def vision_width(self) -> int:
        return self.dino.width + self.siglip.width

    @property
    def num_action_slots(self) -> int:
        """K*D slots (OFT parallel decoding, one token per action scalar)."""
        return self.chunk_length * self.action_dim

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OFTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown OFTConfig fields: {unknown}")
        return cls(**copy.deepcopy(dict(data)))

    def replace(self, **changes: Any) -> "OFTConfig":
        """A copy with ``changes`` applied (validated)."""
        data = self.to_dict()
        data.update(changes)
        return OFTConfig.from_dict(data)


# ---------------------------------------------------------------------- presets
def _openvla_7b_towers() -> tuple[ViTConfig, ViTConfig, LlamaTextConfig]:
    dino = ViTConfig(kind="dinov2_reg", width=1024, depth=24, heads=16, mlp_dim=4096,
                     num_registers=4, timm_id="vit_large_patch14_reg4_dinov2.lvd142m")
    siglip = ViTConfig(kind="siglip", width=1152, depth=27, heads=16, mlp_dim=4304,
                       timm_id="vit_so400m_patch14_siglip_224")
    llm = LlamaTextConfig(hidden_size=4096, intermediate_size=11008, num_layers=32,
                          num_heads=32, num_kv_heads=32, vocab_size=32064,
                          max_position_embeddings=2048, rms_norm_eps=1e-6)
    return dino, siglip, llm


def _tiny_towers() -> tuple[ViTConfig, ViTConfig, LlamaTextConfig]:
    dino = ViTConfig(kind="dinov2_reg", width=32, depth=3, heads=2, mlp_dim=64,
                     num_registers=4, layerscale_init=0.1,
                     timm_id="vla_policy_node/tiny-dinov2-reg4")
    siglip = ViTConfig(kind="siglip", width=32, depth=3, heads=2, mlp_dim=64,
                       timm_id="vla_policy_node/tiny-siglip")
    # vocab: tiny tokenizer (<= 640 ids incl. 256 action tokens) + PAD, padded to 64.
    llm = LlamaTextConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          num_kv_heads=4, vocab_size=704, max_position_embeddings=2048)
    return dino, siglip, llm


#: Presets sized to learn the simulated ALOHA tasks from scratch on a CPU (docs/learning.md):
#: the whole OFT architecture (DINOv2-reg + SigLIP towers, projector, bidirectional Llama, L1
#: head, proprio, FiLM) at small widths, 16-pixel patches of a small square image, 3 cameras.
#: Tokens dominate the cost: (image / 16)^2 per camera. resize_size = image_size: one bicubic
#: resize of the camera frame (the JPEG round trip + lanczos step is for OFT's 256 -> 224
#: ALOHA data, not ours), then the 90% centre crop.
SIM_SIZES = {
    # name: (image, tower width, tower depth, tower heads, llm hidden, llm layers, llm heads)
    "sim-s": (64, 96, 4, 4, 192, 3, 4),
    "sim-m": (96, 128, 4, 4, 256, 4, 4),
    "sim-l": (128, 192, 6, 6, 384, 6, 6),
}


def _sim_towers(name: str) -> tuple[ViTConfig, ViTConfig, LlamaTextConfig, int]:
    image, width, depth, heads, hidden, layers, llm_heads = SIM_SIZES[name]
    dino = ViTConfig(kind="dinov2_reg", width=width, depth=depth, heads=heads,
                     mlp_dim=4 * width, patch_size=16, image_size=image, num_registers=4,
                     layerscale_init=0.1, timm_id=f"vla_policy_node/{name}-dinov2-reg4")
    siglip = ViTConfig(kind="siglip", width=width, depth=depth, heads=heads,
                       mlp_dim=4 * width, patch_size=16, image_size=image,
                       timm_id=f"vla_policy_node/{name}-siglip")
    llm = LlamaTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_layers=layers,
                          num_heads=llm_heads, num_kv_heads=llm_heads, vocab_size=704,
                          max_position_embeddings=2048)
    return dino, siglip, llm, image


def _preset(name: str) -> OFTConfig:
    if name in SIM_SIZES:
        dino, siglip, llm, image = _sim_towers(name)
        return OFTConfig(name=name, dino=dino, siglip=siglip, llm=llm,
                         projector_hidden=4 * 2 * dino.width, tokenizer_kind="tiny",
                         resize_size=image)
    if name.startswith("openvla-7b"):
        dino, siglip, llm = _openvla_7b_towers()
        base = dict(dino=dino, siglip=siglip, llm=llm, projector_hidden=4 * (1024 + 1152),
                    tokenizer_kind="llama", empty_token_id=29871)
    elif name.startswith("tiny"):
        dino, siglip, llm = _tiny_towers()
        base = dict(dino=dino, siglip=siglip, llm=llm, projector_hidden=128,
                    tokenizer_kind="tiny")
    else:
        raise ValueError(f"unknown preset {name!r}; known: {list(PRESETS)}")
    variant = name.split("-", 2)[-1] if name.startswith("openvla-7b-") else (
        name[len("tiny-"):] if name.startswith("tiny-") else "")
    if variant == "":          # ALOHA OFT+: 3 cameras, K=25, D=14, P=14, FiLM, L1
        pass
    elif variant == "libero":  # LIBERO OFT: 2 cameras, K=8, D=7, P=8, no FiLM, BOUNDS_Q99
        base.update(camera_names=LIBERO_CAMERAS, chunk_length=8, action_dim=7, proprio_dim=8,
                    use_film=False, normalization="bounds_q99")
    elif variant == "diffusion":
        base.update(action_head="diffusion")
    elif variant == "discrete":  # OpenVLA baseline: one image, no proprio, K=1, D=7
        base.update(camera_names=LIBERO_CAMERAS[:1], chunk_length=1, action_dim=7,
                    proprio_dim=8, use_proprio=False, use_film=False, action_head="discrete",
                    normalization="bounds_q99")
    else:
        raise ValueError(f"unknown preset {name!r}; known: {list(PRESETS)}")
    return OFTConfig(name=name, **base)


PRESETS = ("tiny", "tiny-libero", "tiny-diffusion", "tiny-discrete",
           "openvla-7b", "openvla-7b-libero", "openvla-7b-diffusion", "openvla-7b-discrete",
           *SIM_SIZES)


def get_preset(name: str) -> OFTConfig:
    """The named preset (a fresh, mutable copy).

    ``tiny*`` use the same classes as ``openvla-7b*`` at small sizes; suffixes pick the platform
    or head: "" = ALOHA OFT+ (3 cameras, K=25, D=14, P=14, FiLM, L1), "-libero" (2 cameras, K=8,
    D=7, P=8), "-diffusion" (ALOHA dims, DDIM head), "-discrete" (OpenVLA 256-bin baseline).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {list(PRESETS)}")
    return _preset(name)
