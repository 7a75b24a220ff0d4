"""BagReader.index/fetch (memory-mapped mcap, sqlite3 blobs, generic) read what rosbags reads."""

from __future__ import annotations

from pathlib import Path
import zlib

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

from vla_policy_node.data import bags
from vla_policy_node.data.bags import BagError, BagReader, make_typestore
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.data.synthetic import SyntheticEpisode, write_episode_bag

SPEC = DataSpec.from_file()
STORE = make_typestore()
T = STORE.types


def reference(reader: BagReader, topics: list[str]) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = {t: [] for t in topics}
    for topic, _, log_ns, raw in reader.messages(topics):
        out[topic].append((log_ns, bytes(raw)))
    return out


def check_against_rosbags(bag: Path, store: str) -> None:
    with BagReader(bag) as reader:
        topics = sorted(reader.contents().topics)
        load = [t for t in topics if "joint" in t]
        index = reader.index(topics + ["/not/in/the/bag"], load=load)
        assert sorted(index) == topics
        assert type(reader._store).__name__ == store  # the fast path, where there is one
        ref = reference(reader, topics)
        for topic in topics:
            messages = index[topic]
            assert messages.log_ns.tolist() == [t for t, _ in ref[topic]]
            if topic in load:
                assert [bytes(p) for p in messages.payloads] == [r for _, r in ref[topic]]
            else:
                assert messages.payloads is None
        # Any subset of rows, several topics at once, whole messages or their first bytes.
        requests = [(index[t], np.arange(len(index[t]))[k % 2::2 + k % 3])
                    for k, t in enumerate(topics)]
        for head in (None, 12):
            got = {(tm.topic, row): bytes(raw) for tm, row, raw in reader.fetch(requests, head)}
            assert got == {(tm.topic, row): ref[tm.topic][row][1][:head]
                           for tm, rows in requests for row in rows.tolist()}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "bare-file"])
def test_index_and_fetch_match_rosbags(tmp_path: Path, storage: str, metadata: bool) -> None:
    bag = write_episode_bag(tmp_path / "bag", SPEC, SyntheticEpisode(duration=0.5,
                                                                     storage=storage))
    if not metadata:  # opened by rosbags through the storage file
        (bag / "metadata.yaml").unlink()
    check_against_rosbags(bag, "_McapStore" if storage == "mcap" else "_SqliteStore")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_metadata_read_without_rosbags_matches_rosbags(tmp_path: Path, storage: str,
                                                       monkeypatch) -> None:
    bag = write_episode_bag(tmp_path / "bag", SPEC, SyntheticEpisode(duration=0.5,
                                                                     storage=storage))
    with BagReader(bag) as reader:
        light = reader.contents()
        assert reader._reader is None  # rosbags never opened
    monkeypatch.setattr(bags, "_read_metadata", lambda *_: None)
    with BagReader(bag) as reader:
        assert reader.contents() == light
        assert reader._reader is not None


def write_small_bag(path: Path, mode: CompressionMode, chunk_messages: int = 300) -> Path:
    """A bag of 300 strings and 300 joint states with identical log times in pairs."""
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if mode != CompressionMode.NONE:
        writer.set_compression(mode, CompressionFormat.ZSTD)
    with writer:
        text = writer.add_connection("/text", "std_msgs/msg/String", typestore=STORE)
        joints = writer.add_connection("/joints", "sensor_msgs/msg/JointState",
                                       typestore=STORE)
        for k in range(chunk_messages):
            stamp = 10**9 + (k // 2) * 10**6  # ties: storage order must be kept
            writer.write(text, stamp, STORE.serialize_cdr(T["std_msgs/msg/String"](
                data=f"m{k}" * (k % 50)), "std_msgs/msg/String"))
            writer.write(joints, stamp, STORE.serialize_cdr(T["sensor_msgs/msg/JointState"](
                header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](
                    sec=k, nanosec=0), frame_id=""), name=["a"],
                position=np.array([float(k)]), velocity=np.zeros(0), effort=np.zeros(0)),
                "sensor_msgs/msg/JointState"))
    return path


@pytest.mark.parametrize("mode,store", [
    (CompressionMode.NONE, "_McapStore"), (CompressionMode.STORAGE, "_McapStore"),
    (CompressionMode.MESSAGE, "_GenericStore"), (CompressionMode.FILE, "_McapStore")],
    ids=["plain", "zstd-chunks", "zstd-messages", "zstd-file"])
def test_compressed_bags_read_the_same(tmp_path: Path, mode: CompressionMode,
                                       store: str) -> None:
    check_against_rosbags(write_small_bag(tmp_path / "bag", mode), store)


def test_damaged_chunk_is_a_bag_error(tmp_path: Path) -> None:
    bag = write_small_bag(tmp_path / "bag", CompressionMode.NONE)
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    chunk = data.index(b"\x06", 8 + 9 + int.from_bytes(data[9:17], "little"))
    data[chunk + 1:chunk + 9] = (len(data) * 2).to_bytes(8, "little")  # runs past the end
    mcap.write_bytes(bytes(data))
    with BagReader(bag) as reader, pytest.raises(BagError, match="damaged.*truncated record"):
        reader.index(["/text"])


def test_sqlite3_without_blobopen(tmp_path: Path, monkeypatch) -> None:
    """Python 3.10 has no Connection.blobopen: whole blobs through SELECT, same bytes."""
    monkeypatch.setattr(bags, "_BLOBOPEN", False)
    check_against_rosbags(write_episode_bag(tmp_path / "bag", SPEC, SyntheticEpisode(
        duration=0.3, storage="sqlite3")), "_SqliteStore")


def set_chunk_crcs(mcap: Path, corrupt: bool = False) -> None:
    """Store the CRC of every (uncompressed) chunk, as ros2 bag record's writer does."""
    data = bytearray(mcap.read_bytes())
    pos = 8 + 9 + int.from_bytes(data[9:17], "little")
    while data[pos] != 0x0F:  # DataEnd
        length = int.from_bytes(data[pos + 1:pos + 9], "little")
        if data[pos] == 0x06:
            body = pos + 9
            size = int.from_bytes(data[body + 16:body + 24], "little")
            start = body + 32 + int.from_bytes(data[body + 28:body + 32], "little") + 8
            data[body + 24:body + 28] = zlib.crc32(data[start:start + size]).to_bytes(4, "little")
            if corrupt:
                data[start + size // 2] ^= 0xFF
                corrupt = False
        pos += 9 + length
    mcap.write_bytes(bytes(data))


def test_mcap_chunk_checksums_are_verified(tmp_path: Path) -> None:
    good = write_small_bag(tmp_path / "good", CompressionMode.NONE)
    set_chunk_crcs(next(good.glob("*.mcap")))
    check_against_rosbags(good, "_McapStore")  # rosbags verifies them too
    bad = write_small_bag(tmp_path / "bad", CompressionMode.NONE)
    set_chunk_crcs(next(bad.glob("*.mcap")), corrupt=True)
    with BagReader(bad) as reader, pytest.raises(BagError, match="checksum mismatch"):
        reader.index(["/text"])


def first_message_offset(data: bytes | bytearray) -> int:
    """Offset of the first message record inside the first (uncompressed) chunk."""
    pos = 8 + 9 + int.from_bytes(data[9:17], "little")
    while data[pos] != 0x06:
        pos += 9 + int.from_bytes(data[pos + 1:pos + 9], "little")
    body = pos + 9
    pos = body + 32 + int.from_bytes(data[body + 28:body + 32], "little") + 8
    while data[pos] != 0x05:
        pos += 9 + int.from_bytes(data[pos + 1:pos + 9], "little")
    return pos


def test_log_time_beyond_int64_is_a_bag_error(tmp_path: Path) -> None:
    """A flipped top bit of an mcap log time (read unsigned) is damage, not an OverflowError."""
    bag = write_small_bag(tmp_path / "bag", CompressionMode.NONE)
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    data[first_message_offset(data) + 9 + 6 + 7] |= 0x80  # no chunk CRC to catch it
    mcap.write_bytes(bytes(data))
    with BagReader(bag) as reader, pytest.raises(BagError, match="damaged.*log time"):
        reader.index(["/text", "/joints"])
