"""Bag -> ALOHA-style HDF5 episodes + dataset_statistics.json (the core of ``vla-convert``).

One bag is one episode. Conversion indexes a bag once and never holds more than a few images
in memory, so hour-long 3-camera episodes convert on a small machine:

1. :meth:`BagReader.index` lists every message of the used topics (log time and where it
   lies; mcap files are memory-mapped). Joint states are read whole and decoded a topic at
   a time (:func:`vla_policy_node.data.cdr.parse_joint_states`); the rare messages
   (commands, instruction, success) go through the generic deserializer; of the images only
   the header stamps are read (12 bytes each, no decoding);
2. the streams are resampled on a reference clock at ``rate_hz`` (latest message at or before
   each tick, no older than ``max_age``); frames where a stream is stale are dropped, which
   splits the episode into segments (``<bag>.hdf5`` or ``<bag>_seg<i>.hdf5``);
3. only the image messages that some frame uses are fetched (a 30 Hz camera resampled at
   25 Hz skips one in six) and decoded, each once, through
   :func:`vla_policy_node.data.images.decode_image` (the function the policy node uses); raw
   frames are views of the mapped bag and go to HDF5 as raw chunks without a copy, JPEG/PNG
   frames are decoded on a worker thread while this one writes.

A bag that cannot be read, lacks a topic, names other joints or holds undecodable images is
reported and skipped. ``conversion.json`` in the output directory records what was converted
from what, so re-running converts only new or changed bags and gives identical results.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from dataclasses import asdict, dataclass, field
import hashlib
import json
import logging
import os
from pathlib import Path
import re
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from vla_policy_node.data.align import align, make_clock, runs
from vla_policy_node.data.bags import (
    BagError, BagReader, META_ACTION_SOURCE, META_INSTRUCTION, META_SUCCESS,
    TopicMessages)
from vla_policy_node.data.cdr import (
    CdrError, header_stamps, parse_compressed_image, parse_image, parse_joint_states)
from vla_policy_node.data.episodes import COMPRESSIONS, EpisodeWriter, write_json_atomic
from vla_policy_node.data.images import decode_image, ImageDecodeError
from vla_policy_node.data.spec import ACTION_SOURCES, DataSpec
from vla_policy_node.data.stats import compute_statistics, STATISTICS_FILE, write_statistics

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1
MANIFEST_FILE = "conversion.json"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
_BLOCK = 32  # frames buffered per camera before an HDF5 write
#: Threads decoding JPEG/PNG frames (0: none, decode inline; -1: one per CPU core but one,
#: at most 4). On 2 cores one decoder gives 1.3-1.5x on JPEG bags when the machine is
#: otherwise idle (and costs ~10% when other processes keep both cores busy).
_DECODE_THREADS = -1
_DECODE_BATCH = 8  # compressed frames per decoding task


class ConversionError(ValueError):
    """A bag that cannot become an episode (missing topic, wrong joints, ...)."""


@dataclass
class ConvertOptions:
    """Options of one conversion run.

    Attributes:
        instruction: use this instruction for every bag (bags from ``ros2 bag record``
            usually have none); None: the one stored in the bag.
        only_success: skip episodes not marked successful.
        image_size: (H, W) to resize frames to (cv2 INTER_AREA); None keeps the camera size,
            so the model's own preprocessing sees the same pixels as on the robot.
        compression: None, "lzf" or "gzip" for raw image datasets; "jpeg" or "png": each
            distinct frame stored once, encoded (see :mod:`vla_policy_node.data.episodes`).
        dataset_name: key of dataset_statistics.json.
        force: convert again even when the manifest says the bag is unchanged.
        action_source_from_bag: a bag that records its action source (``vla-record`` writes
            ``vla.action_source``) is converted with it instead of the spec's; False: the spec
            decides (the user chose a source).
    """

    instruction: str | None = None
    only_success: bool = False
    image_size: tuple[int, int] | None = None
    compression: str | None = None
    dataset_name: str = "aloha"
    force: bool = False
    action_source_from_bag: bool = True

    def __post_init__(self) -> None:
        if self.image_size is not None:
            if len(self.image_size) != 2 or min(self.image_size) <= 0:
                raise ValueError(f"image_size must be (H, W) > 0, got {self.image_size}")
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be None, lzf, gzip, jpeg or png, got "
                             f"{self.compression!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.dataset_name):
            raise ValueError(f"dataset_name must be a simple name, got {self.dataset_name!r}")


@dataclass
class EpisodeReport:
    """What happened to one bag.

    ``status``: converted, unchanged (already converted, same settings), skipped (not
    successful with --only-success) or failed (``error`` says why). ``warnings``: what is
    wrong with the bag but did not stop it (an interrupted recording: what was lost).
    """

    bag: str
    status: str = "failed"
    outputs: list[str] = field(default_factory=list)
    frames: int = 0
    dropped_frames: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    instruction: str = ""
    success: bool | None = None
    duration: float = 0.0
    error: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Stream:
    """One resampled stream: (N,) times and, for joint streams, (N, k) values per row."""

    topic: str
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    values: np.ndarray | None = None
    velocity: np.ndarray | None = None
    effort: np.ndarray | None = None


# ---- pass 1: streams ------------------------------------------------------------------------

class _JointExtractor:
    """Driver joint names of one arm out of a topic of JointState messages, all at once."""

    def __init__(self, topic: str, names: Sequence[str], gripper: bool,
                 normalize: Callable[[np.ndarray], np.ndarray]) -> None:
        self.topic = topic
        self.names = list(names)
        self.gripper = gripper
        self.normalize = normalize

    def __call__(self, raws: Sequence[Any]) -> tuple[
            np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(N,) header stamps (0: unset), (N, k) positions, velocities and efforts (or None).

        The gripper column is normalized, its velocity scaled by d(normalized)/d(raw).
        """
        try:
            states = parse_joint_states(raws, self.names, self.topic)
        except CdrError as exc:
            hint = (" (robot.arm_joint_names / gripper_joint_name in the config)"
                    if "not in the message's names" in str(exc) else "")
            raise ConversionError(f"{exc}{hint}") from None
        values, velocity = states.position, states.velocity
        if self.gripper:
            raw = values[:, -1].copy()
            values[:, -1] = self.normalize(raw)
            if velocity is not None:
                velocity[:, -1] *= self.normalize(raw + 1.0) - values[:, -1]
        return states.stamps, values, velocity, states.effort


def _stamps(clock: str, stamps: np.ndarray, log_ns: np.ndarray) -> np.ndarray:
    """(N,) header stamps where set and the header clock is asked for, else log times."""
    if clock != "header":
        return log_ns
    return np.where(stamps != 0, stamps, log_ns)


class _BagStreams:
    """Everything pass 1 reads out of one bag."""

    def __init__(self, reader: BagReader, spec: DataSpec) -> None:
        self.spec = spec
        contents = reader.contents()
        self.custom = contents.custom_data
        topics = contents.topics
        robot = spec.robot
        groups = robot.arm_group_indices()

        other = next(s for s in ACTION_SOURCES if s != spec.action_source)
        source_hint = (
            f" (action source {spec.action_source}, from the config or the bag's "
            f"{META_ACTION_SOURCE}; if this bag recorded the "
            f"{'leader arms' if other == 'leader' else 'follower commands'}, pass "
            f"--action-source {other})")

        def require(topic: str, types: Sequence[str], what: str, hint: str = "") -> None:
            info = topics.get(topic)
            if info is None or info.count == 0:
                raise ConversionError(
                    f"bag has no messages on {topic} ({what}){hint}; topics: {sorted(topics)}")
            if info.msgtype not in types:
                raise ConversionError(
                    f"{topic} ({what}) has type {info.msgtype}, expected {' or '.join(types)}")

        # Cameras: the configured topic, or its image_transport "/compressed" sibling.
        self.camera_topics: dict[str, str] = {}
        for name, topic, transport in zip(spec.camera_names, spec.camera_topics,
                                          spec.camera_transports):
            candidates = [topic, topic + "/compressed"]
            if transport == "compressed":
                candidates.reverse()
            found = next((c for c in candidates if c in topics and topics[c].count), None)
            if found is None:
                raise ConversionError(
                    f"bag has no images for camera {name!r} (topic {topic} or "
                    f"{topic}/compressed); topics: {sorted(topics)}")
            require(found, IMAGE_TYPES, f"camera {name}")
            self.camera_topics[name] = found

        self.extractors: dict[str, Any] = {}   # stream name -> how to read it
        self.stream_topic: dict[str, str] = {}
        self.arm_slots: dict[str, list[int]] = {}
        for arm in robot.arms:
            group = groups[arm]
            has_gripper = group["gripper_index"] is not None
            slots = list(group["joint_indices"]) + ([group["gripper_index"]] if has_gripper
                                                    else [])
            self.arm_slots[arm] = slots
            names = list(group["driver_joint_names"]) + (
                [robot.gripper_joint_name] if has_gripper else [])
            topic = spec.follower_topic(arm)
            require(topic, ("sensor_msgs/msg/JointState",), f"follower {arm} joint states")
            self.extractors[f"proprio:{arm}"] = _JointExtractor(
                topic, names, has_gripper, robot.normalize_gripper)
            self.stream_topic[f"proprio:{arm}"] = topic
            action_topics = spec.action_topics()[arm]
            if spec.action_source == "leader":
                topic = action_topics["joints"]
                require(topic, ("sensor_msgs/msg/JointState",), f"leader of {arm}",
                        source_hint)
                self.extractors[f"action:{arm}"] = _JointExtractor(
                    topic, names, has_gripper, spec.normalize_leader_gripper)
                self.stream_topic[f"action:{arm}"] = topic
            else:
                topic = action_topics["joints"]
                require(topic, ("interbotix_xs_msgs/msg/JointGroupCommand",),
                        f"joint commands of {arm}", source_hint)
                self.stream_topic[f"action:{arm}:joints"] = topic
                if has_gripper:
                    topic = action_topics["gripper"]
                    require(topic, ("interbotix_xs_msgs/msg/JointSingleCommand",),
                            f"gripper commands of {arm}")
                    self.stream_topic[f"action:{arm}:gripper"] = topic

        self.streams: dict[str, _Stream] = {
            name: _Stream(topic) for name, topic in self.stream_topic.items()}
        self.camera_streams = {name: _Stream(topic)
                               for name, topic in self.camera_topics.items()}
        self.instructions: list[tuple[int, str]] = []
        self.successes: list[tuple[int, bool]] = []
        self._read(reader, topics)

    def _read(self, reader: BagReader, topics: dict[str, Any]) -> None:
        spec = self.spec
        by_topic: dict[str, list[str]] = {}
        for name, topic in self.stream_topic.items():
            by_topic.setdefault(topic, []).append(name)
        extras = [t for t in (spec.instruction_topic, spec.success_topic) if t in topics]
        # Everything but the images is small and read whole; of the images only the index.
        self.index = reader.index(sorted(set(by_topic) | set(self.camera_topics.values())
                                         | set(extras)), load=set(by_topic) | set(extras))
        n_joints = len(spec.robot.arm_joint_names)
        if spec.instruction_topic in self.index:
            messages = self.index[spec.instruction_topic]
            self.instructions = [
                (int(log_ns), str(reader.deserialize(raw, messages.msgtype).data))
                for log_ns, raw in zip(messages.log_ns, messages.payloads or [])]
        if spec.success_topic in self.index:
            messages = self.index[spec.success_topic]
            self.successes = [
                (int(log_ns), bool(reader.deserialize(raw, messages.msgtype).data))
                for log_ns, raw in zip(messages.log_ns, messages.payloads or [])]
        for camera, topic in self.camera_topics.items():
            messages = self.index[topic]
            stamps = np.zeros(len(messages), np.int64)
            if spec.clock == "header":
                # 12 bytes per image (encapsulation + stamp): no image is read here.
                heads: list[Any] = [b""] * len(messages)
                for _, row, raw in reader.fetch([(messages, np.arange(len(messages)))],
                                                head=12):
                    heads[row] = raw
                try:
                    stamps = header_stamps(heads)
                except CdrError as exc:
                    raise ConversionError(f"{topic} (camera {camera}): {exc}") from None
            self.camera_streams[camera].times = _stamps(spec.clock, stamps, messages.log_ns)
        for topic, names in by_topic.items():
            messages = self.index[topic]
            raws = messages.payloads or []
            for name in names:
                stream = self.streams[name]
                if name.endswith(":joints"):
                    values = []
                    for raw in raws:
                        msg = reader.deserialize(raw, messages.msgtype)
                        cmd = np.asarray(msg.cmd, dtype=np.float64)
                        if cmd.shape != (n_joints,):
                            raise ConversionError(
                                f"{topic}: JointGroupCommand {msg.name!r} has {cmd.size} "
                                f"values, expected {n_joints} "
                                f"({list(spec.robot.arm_joint_names)})")
                        values.append(cmd)
                    stream.times = messages.log_ns
                    stream.values = np.array(values).reshape(len(values), n_joints)
                elif name.endswith(":gripper"):
                    times, values = [], []
                    for log_ns, raw in zip(messages.log_ns.tolist(), raws):
                        msg = reader.deserialize(raw, messages.msgtype)
                        if msg.name != spec.robot.gripper_joint_name:
                            continue  # single commands to other joints are not the gripper
                        times.append(log_ns)
                        values.append(spec.robot.normalize_gripper(float(msg.cmd)))
                    stream.times = np.array(times, np.int64)
                    stream.values = np.array(values, np.float64).reshape(-1, 1)
                else:
                    stamps, stream.values, stream.velocity, stream.effort = (
                        self.extractors[name](raws))
                    stream.times = _stamps(spec.clock, stamps, messages.log_ns)
            messages.payloads = None  # parsed: let the buffers go
        for name, stream in {**self.streams, **{
                f"camera:{k}": v for k, v in self.camera_streams.items()}}.items():
            if not len(stream.times):
                raise ConversionError(f"no usable messages on {stream.topic} ({name})")

    def sorted_times(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Stream -> sorted (N,) times, and stream -> order (sorted position -> read index)."""
        times, orders = {}, {}
        for name, stream in list(self.streams.items()) + [
                (f"camera:{k}", v) for k, v in self.camera_streams.items()]:
            t = stream.times
            order = np.argsort(t, kind="stable")
            times[name], orders[name] = t[order], order
        return times, orders


# ---- one bag --------------------------------------------------------------------------------

def _instruction(streams: _BagStreams, options: ConvertOptions) -> str:
    if options.instruction is not None:
        return options.instruction
    if streams.custom.get(META_INSTRUCTION):
        return streams.custom[META_INSTRUCTION]
    texts = [text for _, text in streams.instructions if text.strip()]
    if not texts:
        raise ConversionError(
            f"no instruction in the bag (metadata {META_INSTRUCTION} or topic "
            f"{streams.spec.instruction_topic}); pass --instruction")
    if len(set(texts)) > 1:
        logger.warning("instruction changes within the episode %s; using the last, %r",
                       sorted(set(texts)), texts[-1])
    return texts[-1]


def _success(streams: _BagStreams) -> bool | None:
    value = streams.custom.get(META_SUCCESS)
    if value is not None and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return streams.successes[-1][1] if streams.successes else None


def _assemble(streams: _BagStreams, names: Iterable[str], key: str, rows: dict[str, np.ndarray],
              dim: int, frames: int) -> np.ndarray | None:
    """(T, D) vector of the per-arm streams ``names`` at the selected message rows."""
    out = np.zeros((frames, dim))
    for name in names:
        stream = streams.streams[name]
        arm = name.split(":")[1]
        slots = streams.arm_slots[arm]
        if name.endswith(":joints"):
            slots = slots[:len(streams.spec.robot.arm_joint_names)]
        elif name.endswith(":gripper"):
            slots = slots[-1:]
        series = getattr(stream, key)
        if series is None:
            return None
        out[:, slots] = series[rows[name]]
    return out


def _output_names(bag: Path, segments: int) -> list[str]:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", bag.name if bag.is_dir() else bag.stem)
    if segments == 1:
        return [f"{stem}.hdf5"]
    return [f"{stem}_seg{i}.hdf5" for i in range(segments)]


def convert_bag(bag: str | os.PathLike, spec: DataSpec, out_dir: str | os.PathLike,
                options: ConvertOptions | None = None,
                output_stem: str | None = None) -> EpisodeReport:
    """Convert one bag into one or more episode files in ``out_dir``.

    Never raises for a bad bag: the report's ``status`` is ``failed`` and ``error`` says why.
    Any exception fails only this bag, so that no bag can abort a batch; KeyboardInterrupt
    (not an Exception) still stops the run.
    """
    options = options or ConvertOptions()
    bag, out_dir = Path(bag), Path(out_dir)
    report = EpisodeReport(bag=str(bag))
    started = time.perf_counter()
    temporaries: list[Path] = []
    try:
        _convert(bag, spec, out_dir, options, report, temporaries, output_stem)
    except Exception as exc:  # noqa: BLE001 - one bag's failure, whatever it is, is reported
        report.status, report.outputs = "failed", []
        report.error = f"{type(exc).__name__}: {exc}"
        expected = isinstance(exc, (BagError, ConversionError, ImageDecodeError, ValueError,
                                    OSError, KeyError))
        # Anything else is a bug (ours or a library's) that the bag triggered: keep its trace.
        logger.error("skipping %s: %s", bag, report.error, exc_info=not expected)
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        report.seconds = time.perf_counter() - started
    return report


def _spec_for_bag(reader: BagReader, spec: DataSpec, options: ConvertOptions) -> DataSpec:
    """``spec`` with the bag's recorded action source, unless the user chose one."""
    source = reader.contents().custom_data.get(META_ACTION_SOURCE)
    if not options.action_source_from_bag or source in (None, spec.action_source):
        return spec
    if source not in ACTION_SOURCES:
        raise ConversionError(f"bag metadata {META_ACTION_SOURCE}={source!r} is not one of "
                              f"{ACTION_SOURCES}; pass --action-source")
    return dataclasses.replace(spec, action_source=source)


def _convert(bag: Path, spec: DataSpec, out_dir: Path, options: ConvertOptions,
             report: EpisodeReport, temporaries: list[Path], output_stem: str | None) -> None:
    robot = spec.robot
    with BagReader(bag) as reader:
        report.warnings = reader.warnings  # the same list: reading may find more
        spec = _spec_for_bag(reader, spec, options)
        streams = _BagStreams(reader, spec)
        report.instruction = _instruction(streams, options)
        recorded = [text for _, text in streams.instructions if text.strip()]
        stored = streams.custom.get(META_INSTRUCTION)
        if stored and recorded and recorded[-1].strip() != stored.strip():
            # The recorder writes both; the messages are checksummed, metadata.yaml is not.
            reader.warnings.append(
                f"metadata {META_INSTRUCTION} {stored!r} differs from the last message on "
                f"{spec.instruction_topic} {recorded[-1]!r} (metadata.yaml damaged or "
                f"edited?); used {report.instruction!r}")
        report.success = _success(streams)
        if options.only_success and report.success is not True:
            report.status = "skipped"
            report.error = f"not marked successful (success={report.success})"
            return
        times, orders = streams.sorted_times()
        try:
            ticks = make_clock(times, spec.rate_hz)
        except ValueError as exc:
            raise ConversionError(str(exc)) from None
        alignment = align(times, ticks, int(round(spec.max_age * 1e9)))
        period = 1.0 / spec.rate_hz
        min_frames = max(1, int(np.ceil(spec.min_segment_duration * spec.rate_hz - 1e-9)))
        all_runs = runs(alignment.valid)
        segments = [(a, b) for a, b in all_runs if b - a >= min_frames]
        for a, b in runs(~alignment.valid):
            stale = sorted(n for n, s in alignment.stale.items() if s[a:b].any())
            report.gaps.append({"start": round(a * period, 4), "duration": round(
                (b - a) * period, 4), "streams": stale})
        kept = np.concatenate([np.arange(a, b) for a, b in segments]) if segments else (
            np.zeros(0, np.int64))
        report.frames = int(len(kept))
        report.dropped_frames = int(len(ticks) - len(kept))
        report.duration = float((ticks[-1] - ticks[0]) / 1e9) if len(ticks) else 0.0
        if not segments:
            raise ConversionError(
                f"no run of {min_frames} fresh frames (max_age {spec.max_age} s) in "
                f"{len(ticks)} ticks; gaps: {report.gaps[:3]}")

        # Message row (read order) of each stream for each kept frame.
        rows = {name: orders[name][alignment.indices[name][kept]] for name in times}
        dim = robot.dim
        proprio_names = [f"proprio:{arm}" for arm in robot.arms]
        action_names = [n for n in streams.streams if n.startswith("action:")]
        qpos = _assemble(streams, proprio_names, "values", rows, dim, len(kept))
        qvel = _assemble(streams, proprio_names, "velocity", rows, dim, len(kept))
        effort = _assemble(streams, proprio_names, "effort", rows, dim, len(kept))
        action = _assemble(streams, action_names, "values", rows, dim, len(kept))
        assert qpos is not None and action is not None
        for name, values in (("qpos", qpos), ("action", action)):
            if not np.all(np.isfinite(values)):
                row, col = np.argwhere(~np.isfinite(values))[0]
                raise ConversionError(
                    f"non-finite {name} {values[row, col]} for joint {robot.joint_names[col]} "
                    f"at {ticks[kept[row]]} ns")

        names = _output_names(Path(output_stem) if output_stem else bag, len(segments))
        out_dir.mkdir(parents=True, exist_ok=True)
        writers: list[EpisodeWriter] = []
        offsets = np.cumsum([0] + [b - a for a, b in segments])
        try:
            for i, (name, (a, b)) in enumerate(zip(names, segments)):
                tmp = out_dir / f".{name}.tmp"
                temporaries.append(tmp)
                writer = EpisodeWriter(tmp, b - a, robot.joint_names, spec.camera_names,
                                       options.compression)
                sl = slice(offsets[i], offsets[i + 1])
                writer.write_arrays(qpos[sl], action[sl], ticks[a:b] / 1e9,
                                    None if qvel is None else qvel[sl],
                                    None if effort is None else effort[sl])
                writer.set_attrs(
                    instruction=report.instruction, success=report.success,
                    rate_hz=spec.rate_hz, max_age=spec.max_age, clock=spec.clock,
                    action_source=spec.action_source, source_bag=str(bag.resolve()),
                    segment=i, segments=len(segments), start_ns=int(ticks[a]),
                    converter_version=CONVERTER_VERSION,
                    qvel_recorded=qvel is not None, effort_recorded=effort is not None,
                    camera_topics=streams.camera_topics)
                writers.append(writer)
            _write_images(reader, streams, spec, options, rows, offsets, writers)
            for writer in writers:
                missing = writer.missing_images()
                if missing:
                    raise ConversionError(f"frames without images: {missing}")
        finally:
            for writer in writers:
                writer.close()
    # All files complete: move them into place, then drop outputs of an earlier conversion.
    for tmp, name in zip(temporaries, names):
        os.replace(tmp, out_dir / name)
    temporaries.clear()
    report.outputs = names
    report.status = "converted"


def _write_images(reader: BagReader, streams: _BagStreams, spec: DataSpec,
                  options: ConvertOptions, rows: dict[str, np.ndarray], offsets: np.ndarray,
                  writers: list[EpisodeWriter]) -> None:
    """Pass 2: read and decode each used image once, write it to every frame that uses it.

    Images no frame uses (30 Hz cameras resampled at 25 Hz, stale stretches) are never read.
    """
    requests: list[tuple[TopicMessages, np.ndarray]] = []
    users: dict[str, dict[int, list[int]]] = {}
    cameras: dict[str, str] = {}
    for camera, topic in streams.camera_topics.items():
        table: dict[int, list[int]] = {}
        for frame, msg_row in enumerate(rows[f"camera:{camera}"].tolist()):
            table.setdefault(msg_row, []).append(frame)
        users[camera] = table
        cameras[topic] = camera
        requests.append((streams.index[topic], np.array(sorted(table), np.int64)))
    buffers: dict[str, _FrameBuffer] = {c: _FrameBuffer(c, offsets, writers)
                                        for c in streams.camera_topics}
    for messages, row, image in _decoded_images(reader, requests, cameras, options.image_size):
        camera = cameras[messages.topic]
        for frame in users[camera][row]:
            buffers[camera].put(frame, image)
    for buffer in buffers.values():
        buffer.flush()


def _decode(msg: Any, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a parsed image message, resized to ``size`` (H, W) if given."""
    image = decode_image(msg)
    if size is not None and image.shape[:2] != size:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return image


def _decoded_images(reader: BagReader, requests: list[tuple[TopicMessages, np.ndarray]],
                    cameras: dict[str, str], size: tuple[int, int] | None
                    ) -> Iterator[tuple[TopicMessages, int, np.ndarray]]:
    """``(topic, row, image)`` for every requested image; JPEG/PNG decoded on worker threads.

    Decoding a compressed frame is the one costly step that releases the GIL (OpenCV), so
    batches of frames are decoded on ``_DECODE_THREADS`` threads while this thread reads
    and writes (batches, not frames: a future per frame costs more than it saves). Raw
    frames are views of the message buffer and are yielded at once, so a camera's frames
    may come out of order.
    """
    # One core stays with this thread (reading, writing); more than a few decoders would
    # only wait for it.
    workers = (_DECODE_THREADS if _DECODE_THREADS >= 0
               else min(4, max(1, (os.cpu_count() or 1) - 1)))
    pending: collections.deque[tuple[list[tuple[TopicMessages, int]], Any]] = (
        collections.deque())
    batch: list[tuple[TopicMessages, int, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        try:
            for messages, row, raw in reader.fetch(requests):
                try:
                    if not messages.msgtype.endswith("CompressedImage"):
                        yield messages, row, _decode(parse_image(raw), size)
                        continue
                    batch.append((messages, row, parse_compressed_image(raw)))
                except (CdrError, ImageDecodeError) as exc:
                    raise _image_error(cameras, messages, row, exc) from None
                if len(batch) >= _DECODE_BATCH:
                    pending.append(_submit(pool if workers else None, batch, size))
                    batch = []
                    while len(pending) > 2 * workers:
                        yield from _collect(cameras, *pending.popleft())
            if batch:
                pending.append(_submit(pool if workers else None, batch, size))
            while pending:
                yield from _collect(cameras, *pending.popleft())
        finally:
            for _, result in pending:
                if isinstance(result, concurrent.futures.Future):
                    result.cancel()


def _submit(pool: concurrent.futures.Executor | None,
            batch: list[tuple[TopicMessages, int, Any]], size: tuple[int, int] | None
            ) -> tuple[list[tuple[TopicMessages, int]], Any]:
    """Decode ``batch`` on ``pool`` (a future) or here (None: the images or the error)."""
    keys = [(messages, row) for messages, row, _ in batch]
    msgs = [msg for _, _, msg in batch]
    if pool is not None:
        return keys, pool.submit(_decode_batch, msgs, size)
    return keys, _decode_batch(msgs, size)


def _decode_batch(msgs: list[Any], size: tuple[int, int] | None
                  ) -> list[np.ndarray | ImageDecodeError]:
    """Images of ``msgs``; a message that does not decode gives its error (not raised here,
    so the caller can name the camera and message)."""
    out: list[np.ndarray | ImageDecodeError] = []
    for msg in msgs:
        try:
            out.append(_decode(msg, size))
        except ImageDecodeError as exc:
            out.append(exc)
    return out


def _collect(cameras: dict[str, str], keys: list[tuple[TopicMessages, int]], result: Any
             ) -> Iterator[tuple[TopicMessages, int, np.ndarray]]:
    images = result.result() if isinstance(result, concurrent.futures.Future) else result
    for (messages, row), image in zip(keys, images):
        if isinstance(image, ImageDecodeError):
            raise _image_error(cameras, messages, row, image)
        yield messages, row, image


def _image_error(cameras: dict[str, str], messages: TopicMessages, row: int,
                 exc: Exception) -> ImageDecodeError:
    return ImageDecodeError(
        f"camera {cameras[messages.topic]} ({messages.topic}) message {row}: {exc}")


class _FrameBuffer:
    """Collects consecutive frames of one camera and writes them in blocks."""

    def __init__(self, camera: str, offsets: np.ndarray, writers: list[EpisodeWriter]) -> None:
        self.camera, self.offsets, self.writers = camera, offsets, writers
        self.start = -1
        self.frames: list[np.ndarray] = []

    def put(self, frame: int, image: np.ndarray) -> None:
        segment = int(np.searchsorted(self.offsets, frame, side="right") - 1)
        writer = self.writers[segment]
        if writer.compression is None or writer.encodes_images:
            # Uncompressed: one raw chunk per frame, straight from the decoded view. Encoded:
            # each frame by itself, so a picture used by several frames is stored once.
            self.flush()
            writer.write_image(self.camera, frame - int(self.offsets[segment]), image)
            return
        if self.frames and (frame != self.start + len(self.frames)
                            or segment != self._segment or len(self.frames) >= _BLOCK):
            self.flush()
        if not self.frames:
            self.start, self._segment = frame, segment
        self.frames.append(image)

    def flush(self) -> None:
        if not self.frames:
            return
        segment = self._segment
        shapes = {f.shape for f in self.frames}
        if len(shapes) > 1:
            raise ConversionError(f"camera {self.camera} changes size within the episode: "
                                  f"{sorted(shapes)}")
        self.writers[segment].write_images(
            self.camera, self.start - int(self.offsets[segment]), np.stack(self.frames))
        self.frames = []


# ---- many bags ------------------------------------------------------------------------------

def _fingerprint(bag: Path, spec: DataSpec, options: ConvertOptions) -> str:
    # Not a WAL database's -shm index: reading the bag rewrites it.
    files = sorted(p for p in ([bag] if bag.is_file() else bag.rglob("*"))
                   if p.is_file() and not p.name.endswith("-shm"))
    parts = [f"{p.relative_to(bag) if bag.is_dir() else p.name}:{p.stat().st_size}:"
             f"{p.stat().st_mtime_ns}" for p in files]
    settings = {k: v for k, v in asdict(options).items() if k != "force"}
    spec_fields = {k: str(v) for k, v in vars(spec).items()}
    blob = json.dumps([CONVERTER_VERSION, parts, settings, spec_fields], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _unique_stems(bags: Sequence[Path]) -> dict[Path, str]:
    """Output stem per bag: its name, made unique with a path hash where names collide."""
    stems: dict[Path, str] = {}
    by_name: dict[str, list[Path]] = {}
    for bag in bags:
        by_name.setdefault(bag.name if bag.is_dir() else bag.stem, []).append(bag)
    for name, group in by_name.items():
        for bag in group:
            suffix = "" if len(group) == 1 else "_" + hashlib.sha1(
                str(bag.resolve()).encode()).hexdigest()[:6]
            stems[bag] = name + suffix
    return stems


def load_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / MANIFEST_FILE
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
            if manifest.get("version") == CONVERTER_VERSION:
                return manifest
        except (OSError, ValueError):
            logger.warning("ignoring unreadable %s", path)
    return {"version": CONVERTER_VERSION, "bags": {}}


def convert_bags(bags: Sequence[str | os.PathLike], spec: DataSpec,
                 out_dir: str | os.PathLike, options: ConvertOptions | None = None,
                 progress: Callable[[EpisodeReport], None] | None = None
                 ) -> list[EpisodeReport]:
    """Convert ``bags`` into ``out_dir`` and (re)write dataset_statistics.json.

    Bags already converted with the same settings (per conversion.json) are ``unchanged``.
    Statistics cover every episode the manifest lists, from this and earlier runs.
    """
    options = options or ConvertOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out_dir)
    paths = [Path(b) for b in bags]
    stems = _unique_stems(paths)
    reports = []
    for bag in paths:
        key = str(bag.resolve())
        entry = manifest["bags"].get(key)
        try:
            fingerprint = _fingerprint(bag, spec, options) if bag.exists() else ""
        except Exception:  # noqa: BLE001 - unreadable: convert (and report) it again
            fingerprint = ""
        if (not options.force and entry and fingerprint and entry["fingerprint"] == fingerprint
                and all((out_dir / o).is_file() for o in entry["outputs"])):
            report = EpisodeReport(**{**entry["report"], "status": "unchanged"})
        else:
            report = convert_bag(bag, spec, out_dir, options, output_stem=stems[bag])
            old_outputs = set(entry["outputs"]) if entry else set()
            for stale in old_outputs - set(report.outputs):
                (out_dir / stale).unlink(missing_ok=True)
            if report.status == "converted":
                manifest["bags"][key] = {"fingerprint": fingerprint, "outputs": report.outputs,
                                         "report": asdict(report)}
            else:
                manifest["bags"].pop(key, None)
            write_json_atomic(out_dir / MANIFEST_FILE, manifest)
        reports.append(report)
        if progress is not None:
            progress(report)
    episodes = sorted(out_dir / o for e in manifest["bags"].values() for o in e["outputs"])
    if episodes:
        statistics = compute_statistics(episodes, options.dataset_name, spec.robot.joint_names,
                                        spec.unnormalized_joints)
        write_statistics(out_dir, statistics)
    else:
        (out_dir / STATISTICS_FILE).unlink(missing_ok=True)
    return reports
