"""``vla-plot``: PNG plots of a converted episode or of a policy run.

  vla-plot EPISODE.hdf5 [...] [--out DIR]      joints (action vs state per joint) and camera
                                               thumbnails of vla-convert episodes
  vla-plot --run RUN.npz|RUN.json [--out DIR]  commanded vs measured joints of a run
                                               (vla-demo writes joints.npz next to joints.png)

A run file holds ``t`` (T,), ``commanded`` (T, D), ``measured`` (T, D) (NaN where unknown) and
``joint_names`` (D,). Headless: matplotlib's Agg backend, nothing is shown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import sys
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from vla_policy_node.data.episodes import Episode, EpisodeError


class PlotError(ValueError):
    """Input that cannot be plotted; the message names the file and the problem."""


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = 2 if n > 1 else 1
    return math.ceil(n / cols), cols


def _joint_axes(plt: Any, names: Sequence[str], title: str) -> tuple[Any, list[Any]]:
    rows, cols = _grid(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 1.8 * rows + 0.6), sharex=True,
                             squeeze=False)
    # Column-major: the left column is the first arm, the right column the second.
    flat = [axes[i % rows, i // rows] for i in range(len(names))]
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(flat, names):
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig, flat


def _save(plt: Any, fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_episode(path: str | os.PathLike, out_dir: str | os.PathLike,
                 thumbnails: int = 6) -> list[Path]:
    """``<stem>_joints.png`` (action vs state per joint) and ``<stem>_cameras.png``
    (``thumbnails`` frames per camera, evenly spaced) of one vla-convert episode."""
    path, out_dir = Path(path), Path(out_dir)
    if thumbnails < 0:
        raise PlotError(f"thumbnails must be >= 0, got {thumbnails}")
    try:
        episode = Episode(path)
    except EpisodeError as exc:
        raise PlotError(str(exc)) from None
    plt = _pyplot()
    written = []
    with episode:
        if len(episode) == 0:
            raise PlotError(f"{path}: the episode has no frames")
        names = list(episode.joint_names or [f"joint_{i}" for i in
                                             range(episode.qpos.shape[1])])
        t = (episode.timestamp - episode.timestamp[0] if episode.timestamp is not None
             else np.arange(len(episode), dtype=float))
        fig, axes = _joint_axes(plt, names, f"{path.name}: {episode.instruction!r} "
                                            f"(success={episode.success})")
        for i, ax in enumerate(axes):
            ax.plot(t, episode.qpos[:, i], lw=1.2, label="state (qpos)")
            ax.plot(t, episode.action[:, i], lw=1.0, ls="--", label="action")
        axes[0].legend(fontsize=7)
        for ax in axes[-2:]:
            ax.set_xlabel("time (s)" if episode.timestamp is not None else "frame")
        written.append(_save(plt, fig, out_dir / f"{path.stem}_joints.png"))
        cameras = list(episode.camera_names)
        if cameras and thumbnails:
            frames = np.unique(np.linspace(0, len(episode) - 1, thumbnails).round().astype(int))
            fig, axes = plt.subplots(len(cameras), len(frames), squeeze=False,
                                     figsize=(1.8 * len(frames), 1.6 * len(cameras) + 0.4))
            for r, camera in enumerate(cameras):
                for c, frame in enumerate(frames):
                    ax = axes[r, c]
                    ax.imshow(episode.image(camera, int(frame)))
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if r == 0:
                        ax.set_title(f"t={t[frame]:.2f}", fontsize=8)
                    if c == 0:
                        ax.set_ylabel(camera, fontsize=8)
            fig.suptitle(f"{path.name}: cameras", fontsize=10)
            written.append(_save(plt, fig, out_dir / f"{path.stem}_cameras.png"))
    return written


def load_run(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and check a run file (.npz or .json); returns t, commanded, measured, joint_names.

    Raises:
        PlotError: unreadable file, missing key, or shapes that do not fit (named).
    """
    path = Path(path)
    if not path.is_file():
        raise PlotError(f"run file not found: {path}")
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise PlotError(f"{path}: expected a JSON object, got {type(raw).__name__}")
            data = {k: np.asarray(v) for k, v in raw.items()}
        else:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
    except PlotError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader error means "not a run file"
        raise PlotError(f"cannot read run file {path}: {type(exc).__name__}: {exc}") from None
    missing = [k for k in ("t", "commanded", "measured") if k not in data]
    if missing:
        raise PlotError(f"{path}: missing arrays {missing} (has {sorted(data)})")
    try:
        t = np.asarray(data["t"], dtype=float)
        commanded = np.asarray(data["commanded"], dtype=float)
        measured = np.asarray(data["measured"], dtype=float)
    except (TypeError, ValueError) as exc:
        raise PlotError(f"{path}: arrays are not numeric: {exc}") from None
    if t.ndim != 1 or t.size == 0:
        raise PlotError(f"{path}: t must be a non-empty (T,) array, got shape {t.shape}")
    for name, array in (("commanded", commanded), ("measured", measured)):
        if array.ndim != 2 or array.shape[0] != t.size:
            raise PlotError(f"{path}: {name} must be (T={t.size}, D), got {array.shape}")
    if commanded.shape != measured.shape:
        raise PlotError(f"{path}: commanded {commanded.shape} and measured {measured.shape} "
                        "differ")
    if "joint_names" in data:
        names = np.asarray(data["joint_names"]).astype(str)
        if names.shape != (commanded.shape[1],):
            raise PlotError(f"{path}: {names.size} joint_names for D={commanded.shape[1]}")
    else:
        names = np.array([f"joint_{i}" for i in range(commanded.shape[1])])
    return {"t": t, "commanded": commanded, "measured": measured, "joint_names": names}


def plot_run(path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """``<stem>_run.png``: commanded vs measured per joint, with the tracking error."""
    path = Path(path)
    run = load_run(path)
    plt = _pyplot()
    t = run["t"] - run["t"][0]
    error = np.abs(run["commanded"] - run["measured"])
    fig, axes = _joint_axes(plt, list(run["joint_names"]), f"{path.name}: commanded vs "
                                                          "measured")
    for i, ax in enumerate(axes):
        ax.plot(t, run["commanded"][:, i], lw=1.2, label="commanded")
        ax.plot(t, run["measured"][:, i], lw=1.0, ls="--", label="measured")
        if np.isfinite(error[:, i]).any():
            ax.set_title(f"{run['joint_names'][i]}  (max |err| "
                         f"{np.nanmax(error[:, i]):.3f})", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax in axes[-2:]:
        ax.set_xlabel("time (s)")
    return [_save(plt, fig, Path(out_dir) / f"{path.stem}_run.png")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vla-plot",
        description="PNG plots of converted episodes (joint trajectories, actions vs states "
                    "per joint, camera thumbnails) and of policy runs (commanded vs measured).")
    p.add_argument("episodes", nargs="*", help="vla-convert episode files (.hdf5)")
    p.add_argument("--run", action="append", default=[], metavar="FILE",
                   help="run file (.npz or .json with t, commanded, measured, joint_names); "
                        "repeatable")
    p.add_argument("--out", default="plots", help="output directory (default: ./plots)")
    p.add_argument("--thumbnails", type=int, default=6,
                   help="camera frames per episode (0: no camera plot)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.episodes and not args.run:
        parser.error("give episode files and/or --run FILE")
    jobs = [(plot_episode, (e, args.out, args.thumbnails)) for e in args.episodes]
    jobs += [(plot_run, (r, args.out)) for r in args.run]
    failed = 0
    for function, job_args in tqdm(jobs, desc="plotting", disable=len(jobs) < 3):
        try:
            for written in function(*job_args):
                print(written)
        except PlotError as exc:
            print(f"vla-plot: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
