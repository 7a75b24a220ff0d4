"""Episode recording: one rosbag2 per episode, written from serialized messages.

The core of ``vla-record`` (no rclpy here): the node feeds the CDR bytes it receives
(subscriptions with ``raw=True``) straight into :class:`EpisodeRecorder`, so images are never
deserialized. An episode's bag is written in a hidden directory (``.partial/episode_...``) and
moved next to the finished ones when it is stopped, so a crash or a discard never leaves
something that looks like a finished episode; a discarded episode leaves nothing at all. The
bag keeps its final name inside (``episode_....mcap``), so the moved bag has no trace of it.

What an episode holds besides the recorded topics: the instruction (as a message on the
instruction topic at the start and at every change, and as ``vla.instruction`` metadata) and
the outcome (a ``std_msgs/Bool`` on the success topic at the end and ``vla.success``).
"""

from __future__ import annotations

from dataclasses import dataclass
import datetime
import logging
import os
from pathlib import Path
import shutil
import threading
from typing import Mapping

from vla_policy_node.data.bags import (
    BagWriter, META_ACTION_SOURCE, META_EPISODE, META_INSTRUCTION, META_SUCCESS)

logger = logging.getLogger(__name__)

STORAGES = ("mcap", "sqlite3")
#: Where episodes are written until they are stopped (hidden, inside the output directory).
PARTIAL_DIR = ".partial"


class RecordingError(RuntimeError):
    """A control that does not fit the recorder's state (the message says why)."""


@dataclass
class EpisodeSummary:
    """A finished (saved) episode."""

    path: Path
    duration: float
    messages: dict[str, int]
    instruction: str
    success: bool


class EpisodeRecorder:
    """Start / stop / discard / mark-success of episodes; thread-safe.

    Args:
        output_dir: where episode bags go (created).
        topics: topic -> ROS 2 type name (``sensor_msgs/msg/Image``) of everything recorded.
        instruction_topic / success_topic: std_msgs String / Bool topics (added to ``topics``).
        storage: ``mcap`` or ``sqlite3``.
        instruction: initial instruction (may be empty; then set one before saving or the
            converter needs ``--instruction``).
        action_source: stored as ``vla.action_source`` metadata (``leader``/``commands``) so
            that the converter takes the actions from the right topics.
    """

    def __init__(self, output_dir: str | os.PathLike, topics: Mapping[str, str],
                 instruction_topic: str, success_topic: str, storage: str = "mcap",
                 instruction: str = "", action_source: str | None = None) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if not topics:
            raise ValueError("no topics to record")
        self.output_dir = Path(output_dir).expanduser()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.topics = dict(topics)
        self.action_source = action_source
        self.topics[instruction_topic] = "std_msgs/msg/String"
        self.topics[success_topic] = "std_msgs/msg/Bool"
        self.instruction_topic = instruction_topic
        self.success_topic = success_topic
        self.storage = storage
        self.instruction = instruction
        self._lock = threading.Lock()
        self._writer: BagWriter | None = None
        self._final_path: Path | None = None
        self._start_ns = 0
        self._last_ns = 0
        self._success = False
        self.episodes_saved = 0
        self.episodes_discarded = 0
        self.dropped_messages = 0  # raw messages that could not be written (counted, logged)

    # ---- state ---------------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        return self._writer is not None

    @property
    def current_path(self) -> Path | None:
        return self._final_path

    def elapsed(self, now_ns: int) -> float:
        """Seconds since the current episode started (0 when idle)."""
        return (now_ns - self._start_ns) * 1e-9 if self.recording else 0.0

    def _next_name(self) -> str:
        stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
        existing = [p.name for p in self.output_dir.glob("episode_*") if p.is_dir()]
        numbers = [int(n.split("_")[1]) for n in existing if n.split("_")[1].isdigit()]
        return f"episode_{max(numbers, default=-1) + 1:04d}_{stamp}"

    # ---- controls ------------------------------------------------------------------------
    def start(self, now_ns: int) -> Path:
        """Open a new episode bag; returns its final path."""
        with self._lock:
            if self._writer is not None:
                raise RecordingError(f"already recording {self._final_path.name}")
            name = self._next_name()
            final = self.output_dir / name
            partial = self.output_dir / PARTIAL_DIR / name
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            writer = BagWriter(partial, self.storage)
            try:
                for topic, msgtype in self.topics.items():
                    writer.add_topic(topic, msgtype)
                if self.instruction:
                    writer.write(self.instruction_topic, now_ns, self._string(writer))
            except Exception:
                writer.close()
                shutil.rmtree(partial, ignore_errors=True)
                raise
            self._writer, self._final_path = writer, final
            self._start_ns = self._last_ns = int(now_ns)
            self._success = False
            logger.info("recording %s", final)
            return final

    def _string(self, writer: BagWriter) -> object:
        return writer.typestore.types["std_msgs/msg/String"](data=self.instruction)

    def write(self, topic: str, now_ns: int, raw: bytes | memoryview) -> bool:
        """Write one serialized message received at ``now_ns``; False when idle/unknown."""
        with self._lock:
            if self._writer is None:
                return False
            if topic not in self.topics:
                self.dropped_messages += 1
                return False
            try:
                self._writer.write_raw(topic, now_ns, raw)
            except Exception as exc:  # noqa: BLE001 - one bad write must not end the episode
                self.dropped_messages += 1
                logger.error("cannot write a message of %s: %s", topic, exc)
                return False
            self._last_ns = max(self._last_ns, int(now_ns))
            return True

    def set_instruction(self, text: str, now_ns: int) -> None:
        """Change the instruction; recorded into the current episode at ``now_ns``."""
        text = text.strip()
        if not text:
            raise RecordingError("empty instruction")
        with self._lock:
            self.instruction = text
            if self._writer is not None:
                self._writer.write(self.instruction_topic, now_ns, self._string(self._writer))

    def mark_success(self, success: bool = True) -> None:
        """Mark the episode being recorded as successful (or not)."""
        with self._lock:
            if self._writer is None:
                raise RecordingError("no episode is being recorded")
            self._success = bool(success)

    def stop(self, now_ns: int) -> EpisodeSummary:
        """Close the episode and keep it (success as marked, False otherwise)."""
        with self._lock:
            writer, final = self._writer, self._final_path
            if writer is None or final is None:
                raise RecordingError("no episode is being recorded")
            end_ns = max(int(now_ns), self._last_ns)
            success_msg = writer.typestore.types["std_msgs/msg/Bool"](data=self._success)
            writer.write(self.success_topic, end_ns, success_msg)
            if self.instruction:
                writer.set_custom_data(META_INSTRUCTION, self.instruction)
            writer.set_custom_data(META_SUCCESS, str(self._success).lower())
            writer.set_custom_data(META_EPISODE, final.name)
            if self.action_source:
                writer.set_custom_data(META_ACTION_SOURCE, self.action_source)
            counts = dict(writer.counts)
            writer.close()
            os.replace(writer.path, final)
            self._remove_empty_partial_dir()
            self._writer = self._final_path = None
            self.episodes_saved += 1
            summary = EpisodeSummary(final, (end_ns - self._start_ns) * 1e-9, counts,
                                     self.instruction, self._success)
            logger.info("saved %s (%.1f s, success=%s)", final, summary.duration,
                        summary.success)
            return summary

    def _remove_empty_partial_dir(self) -> None:
        try:
            (self.output_dir / PARTIAL_DIR).rmdir()
        except OSError:
            pass  # another episode's (a killed one's) bag is still in it

    def discard(self) -> Path:
        """Drop the episode being recorded: nothing of it stays on disk."""
        with self._lock:
            writer, final = self._writer, self._final_path
            if writer is None or final is None:
                raise RecordingError("no episode is being recorded")
            try:
                writer.close()
            finally:
                shutil.rmtree(writer.path, ignore_errors=True)
                self._writer = self._final_path = None
                self._remove_empty_partial_dir()
            self.episodes_discarded += 1
            logger.info("discarded %s", final.name)
            return final

    def close(self) -> None:
        """Shut down: an episode still recording is discarded (it was never stopped)."""
        if self.recording:
            logger.warning("an episode was still recording at shutdown: discarded")
            self.discard()
