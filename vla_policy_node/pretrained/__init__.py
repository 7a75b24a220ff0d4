"""Policies shipped inside the package.

``sim_transfer_cube``: the OFT ``sim-s`` model trained from scratch on scripted transfer_cube
demonstrations of the simulated ALOHA (its ``README.md`` says how, on what, and how well it does
on held-out seeds). It is the default policy of ``vla-demo`` and ``vla-eval``; it has never seen a
real camera and must not drive a real robot.
"""

from __future__ import annotations

from pathlib import Path

#: The folder of each shipped policy, by name.
SHIPPED = {"sim_transfer_cube": Path(__file__).resolve().parent / "sim_transfer_cube"}
DEFAULT_POLICY = "sim_transfer_cube"
#: What a shipped policy folder holds (a partial install or a damaged clone lacks some).
REQUIRED_FILES = ("model.safetensors", "oft_config.json", "dataset_statistics.json",
                  "tokenizer.json", "tokenizer_ids.json", "training_provenance.json",
                  "README.md")


class MissingPolicyError(FileNotFoundError):
    """A shipped policy's files are not where the package expects them."""


def shipped_policy_dir(name: str = DEFAULT_POLICY) -> Path:
    """The checkpoint directory of a shipped policy (load it with ``load_policy``).

    Raises:
        MissingPolicyError: unknown name, or files missing (the message lists them).
    """
    if name not in SHIPPED:
        raise MissingPolicyError(f"no shipped policy {name!r}; shipped: {sorted(SHIPPED)}")
    directory = SHIPPED[name]
    missing = [f for f in REQUIRED_FILES if not (directory / f).is_file()]
    if missing:
        raise MissingPolicyError(
            f"the shipped policy {name!r} is incomplete in {directory} (missing: "
            f"{', '.join(missing)}); reinstall the package, or in a git clone run "
            f"`git checkout -- {directory}`")
    return directory


__all__ = ["DEFAULT_POLICY", "MissingPolicyError", "REQUIRED_FILES", "SHIPPED",
           "shipped_policy_dir"]
