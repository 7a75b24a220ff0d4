"""Text tokenizers: Llama's from a checkpoint directory, or a tiny one built in code.

Both are ``tokenizers.Tokenizer`` objects read from ``tokenizer.json`` (no code from the
checkpoint is ever run). Conventions follow Llama/OpenVLA: ``<s>`` = BOS, ``</s>`` = STOP/EOS,
and PAD is the id right after the base vocabulary, whose top ``n_action_bins`` ids are the
discrete action tokens.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"

# A small corpus of robot-instruction English, enough for a few hundred BPE merges.
_OBJECTS = ("towel", "cube", "cup", "bowl", "peg", "socket", "block", "box", "lid", "bottle",
            "spoon", "plate", "ball", "drawer", "door", "shirt", "bag", "tape", "pen", "marker",
            "sponge", "banana", "apple", "candy", "battery", "cable", "screw", "tray", "bin")
_VERBS = ("pick up", "put", "place", "fold", "move", "push", "pull", "open", "close", "stack",
          "insert", "transfer", "lift", "grasp", "hand over", "wipe", "pour", "turn", "slide")
_PLACES = ("on the table", "into the bowl", "in the box", "to the left", "to the right",
           "onto the plate", "into the drawer", "next to the cup", "in the basket")
_COLORS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple")


def _corpus() -> list[str]:
    lines = ["In: What action should the robot take to do something?\nOut:"]
    for verb in _VERBS:
        for obj in _OBJECTS:
            for color, place in zip(_COLORS, _PLACES):
                lines.append(f"{verb} the {color} {obj} {place}")
    return lines


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus the ids the model needs.

    Attributes:
        bos_id / eos_id / pad_id: special ids (pad = first id after the base vocabulary).
        base_vocab_size: ids below PAD (Llama: 32000).
    """

    def __init__(self, tokenizer, bos_id: int, eos_id: int, pad_id: int) -> None:
        self.tokenizer = tokenizer
        self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        for name, value in (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id)):
            if not 0 <= value < max(size, self.pad_id + 1):
                raise ValueError(f"tokenizer {name} id {value} outside the vocabulary ({size})")

    @property
    def base_vocab_size(self) -> int:
        return self.pad_id

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        (directory / "tokenizer_ids.json").write_text(json.dumps(
            {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TextTokenizer":
        """Read ``tokenizer.json`` from a checkpoint directory (ours or an HF/Llama one)."""
        from tokenizers import Tokenizer
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no {TOKENIZER_FILE} in {directory}: a Llama checkpoint needs its fast "
                "tokenizer file (tokenizer.model alone is not supported)")
        tok = Tokenizer.from_file(str(path))
        ids_file = directory / "tokenizer_ids.json"
        if ids_file.is_file():
            ids = json.loads(ids_file.read_text())
            return cls(tok, ids["bos_id"], ids["eos_id"], ids["pad_id"])

        def token_id(*names: str) -> int | None:
            for name in names:
                value = tok.token_to_id(name)
                if value is not None:
                    return value
            return None
        bos, eos = token_id("<s>"), token_id("</s>")
        pad = token_id("<PAD>", "<pad>")
        if bos is None or eos is None:
            raise ValueError(f"{path}: no <s>/</s> tokens; not a Llama tokenizer")
        if pad is None:  # OpenVLA adds <PAD> right after the base vocabulary
            pad = tok.get_vocab_size(with_added_tokens=False)
        return cls(tok, bos, eos, pad)


def build_tiny_tokenizer(vocab_size: int = 384, n_action_tokens: int = 256) -> TextTokenizer:
    """A byte-level BPE trained in code on a small instruction corpus (deterministic).

    Ids: 0 <unk>, 1 <s>, 2 </s>, BPE tokens, then ``n_action_tokens`` reserved action tokens
    (so the discrete action range never collides with text), then <PAD>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([f"<act_{i}>" for i in range(n_action_tokens)])
    pad = tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens(["<PAD>"])
    return TextTokenizer(tok, tok.token_to_id("<s>"), tok.token_to_id("</s>"), pad)
