"""``vla-convert BAGS... --out DIR``: rosbag2 episodes -> ALOHA-style HDF5 + statistics."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from tqdm import tqdm

from vla_policy_node.data.convert import convert_bags, ConvertOptions, EpisodeReport
from vla_policy_node.data.spec import DataSpec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-convert",
        description="Convert rosbag2 episodes (vla-record or `ros2 bag record`, mcap or "
                    "sqlite3) into ALOHA-style HDF5 episodes and dataset_statistics.json. "
                    "Topics, joints and rates come from the config; bags already converted "
                    "with the same settings are skipped, damaged ones reported and skipped.")
    parser.add_argument("bags", nargs="+", type=Path,
                        help="bag directories (or .mcap/.db3 files); a directory holding "
                             "several bags converts each")
    parser.add_argument("--out", required=True, type=Path, help="dataset directory")
    parser.add_argument("--config", type=Path, default=None,
                        help="parameter file (default: the package's config/aloha.yaml)")
    parser.add_argument("--rate", type=float, default=None,
                        help="training rate in Hz (default: vla_recorder convert.rate_hz)")
    parser.add_argument("--max-age", type=float, default=None,
                        help="seconds a stream's latest message may be old at a frame")
    parser.add_argument("--action-source", choices=("leader", "commands"), default=None,
                        help="leader arms (teleoperation) or executor commands, for every bag "
                             "(default: what each bag recorded in its vla.action_source "
                             "metadata, else vla_recorder action_source)")
    parser.add_argument("--clock", choices=("header", "log"), default=None,
                        help="header stamps or bag receive times")
    parser.add_argument("--instruction", default=None,
                        help="instruction for every bag (for bags that store none)")
    parser.add_argument("--only-success", action="store_true",
                        help="skip episodes not marked successful")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="resize frames (default: keep the camera size)")
    parser.add_argument("--compression", choices=("jpeg", "png", "none", "lzf", "gzip"),
                        default="jpeg",
                        help="image storage: jpeg (quality 90) or png store each distinct "
                             "frame once, encoded (a 10 Hz camera at --rate 25 is not "
                             "repeated); none/lzf/gzip store raw (T, H, W, 3) arrays, every "
                             "frame, as ACT's HDF5 (default: jpeg)")
    parser.add_argument("--dataset-name", default="aloha",
                        help="key of dataset_statistics.json (the policy's unnorm_key)")
    parser.add_argument("--force", action="store_true", help="convert unchanged bags again")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def expand_bags(paths: list[Path]) -> list[Path]:
    """Bag paths; a directory without metadata.yaml or storage file is searched one level."""
    bags: list[Path] = []
    for path in paths:
        if path.is_dir() and not (path / "metadata.yaml").exists() and not any(
                path.glob("*.mcap")) and not any(path.glob("*.db3")):
            children = sorted(p for p in path.iterdir() if p.is_dir())
            bags.extend(children if children else [path])
        else:
            bags.append(path)
    return bags


def format_report(report: EpisodeReport) -> str:
    name = Path(report.bag).name
    if report.status in ("failed", "skipped"):
        return f"{report.status:9s} {name}: {report.error}"
    gaps = ", ".join(f"{g['duration']:.2f}s at {g['start']:.2f}s ({'/'.join(g['streams'])})"
                     for g in report.gaps[:3])
    more = f" (+{len(report.gaps) - 3})" if len(report.gaps) > 3 else ""
    line = (f"{report.status:9s} {name}: {report.frames} frames, {report.dropped_frames} "
            f"dropped, {len(report.gaps)} gaps{': ' + gaps + more if gaps else ''} -> "
            f"{', '.join(report.outputs)}")
    # e.g. an interrupted recording read up to its last complete record
    return "\n".join([line, *(f"          warning: {w}" for w in report.warnings)])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = DataSpec.from_file(args.config, rate_hz=args.rate, max_age=args.max_age,
                                  action_source=args.action_source, clock=args.clock)
        options = ConvertOptions(
            instruction=args.instruction, only_success=args.only_success,
            image_size=tuple(args.image_size) if args.image_size else None,
            compression=None if args.compression == "none" else args.compression,
            dataset_name=args.dataset_name, force=args.force,
            action_source_from_bag=args.action_source is None)
    except (ValueError, FileNotFoundError) as exc:
        print(f"vla-convert: {exc}", file=sys.stderr)
        return 2
    bags = expand_bags(args.bags)
    bar = tqdm(total=len(bags), unit="bag", disable=args.quiet or None)
    lines: list[str] = []

    def progress(report: EpisodeReport) -> None:
        lines.append(format_report(report))
        bar.set_postfix_str(f"{Path(report.bag).name}: {report.status}")
        bar.update(1)

    reports = convert_bags(bags, spec, args.out, options, progress)
    bar.close()
    for line in lines:
        print(line)
    counts = {s: sum(r.status == s for r in reports)
              for s in ("converted", "unchanged", "skipped", "failed")}
    frames = sum(r.frames for r in reports if r.status in ("converted", "unchanged"))
    print(f"{len(reports)} bags: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f"; {frames} frames in {args.out}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
