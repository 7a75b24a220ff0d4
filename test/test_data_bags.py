"""BagReader.index/fetch (memory-mapped mcap, sqlite3 blobs, generic) read what rosbags reads."""

from __future__ import annotations

import contextlib
from pathlib import Path
import shutil
import signal
import sqlite3
import subprocess
import sys
import zlib

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

from vla_policy_node.data import bags
from vla_policy_node.data.bags import BagError, BagReader, make_typestore
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.data.synthetic import SyntheticEpisode, write_episode_bag

SPEC = DataSpec.from_file()
STORE = make_typestore()
T = STORE.types


def reference(bag: Path, topics: list[str]) -> dict[str, list[tuple[int, bytes]]]:
    """What rosbags reads (a directory without metadata.yaml: its storage file)."""
    if bag.is_dir() and not (bag / "metadata.yaml").exists():
        [bag] = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    out: dict[str, list[tuple[int, bytes]]] = {t: [] for t in topics}
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic in topics]
        for conn, log_ns, raw in reader.messages(connections=connections):
            out[conn.topic].append((log_ns, bytes(raw)))
    return out


def check_against_rosbags(bag: Path, store: str) -> None:
    with BagReader(bag) as reader:
        topics = sorted(reader.contents().topics)
        load = [t for t in topics if "joint" in t]
        index = reader.index(topics + ["/not/in/the/bag"], load=load)
        assert sorted(index) == topics
        assert type(reader._store).__name__ == store  # the fast path, where there is one
        ref = reference(bag, topics)
        assert {t: [(n, bytes(r)) for tt, _, n, r in reader.messages(topics) if tt == t]
                for t in topics} == ref
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
    with BagReader(bag) as reader:
        contents = reader.contents()
    if not metadata:  # mcap: rosbags reads the file's summary; sqlite3: the tables, here
        (bag / "metadata.yaml").unlink()
        with BagReader(bag) as reader:
            assert (reader.contents().topics, reader.contents().start_ns,
                    reader.contents().end_ns) == (
                        contents.topics, contents.start_ns, contents.end_ns)
    check_against_rosbags(bag, "_McapStore" if storage == "mcap" else "_SqliteStore")


def test_split_sqlite3_bag_without_metadata_reads_every_file(tmp_path: Path) -> None:
    source = write_episode_bag(tmp_path / "source", SPEC, SyntheticEpisode(
        duration=0.5, storage="sqlite3"))
    [db3] = source.glob("*.db3")
    split = tmp_path / "split"
    split.mkdir()
    for part, keep in (("9", "id <= 100"), ("10", "id > 100")):  # _10 after _9
        target = split / f"split_{part}.db3"
        shutil.copy(db3, target)
        with contextlib.closing(sqlite3.connect(target)) as con, con:
            con.execute(f"DELETE FROM messages WHERE NOT ({keep})")
    topics = sorted(SPEC.record_topics())
    with BagReader(source) as reader:
        whole = {t: (tm.log_ns.tolist(), [bytes(p) for p in tm.payloads])
                 for t, tm in reader.index(topics, load=topics).items()}
    with BagReader(split) as reader:
        assert reader.warnings == ["no metadata.yaml (recording interrupted?): read "
                                   "split_9.db3, split_10.db3 directly"]
        index = reader.index(topics, load=topics)
        assert {t: (tm.log_ns.tolist(), [bytes(p) for p in tm.payloads])
                for t, tm in index.items()} == whole
        assert sorted(set(np.concatenate([tm.locators[:, 0] for tm in index.values()]))) == [
            0, 1]


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


# ---- interrupted recordings ------------------------------------------------------------------

def write_chunky_bag(path: Path, mode: CompressionMode, messages: int = 3600) -> Path:
    """About 2.5 MB of 1 KB strings and joint states at distinct log times: three chunks
    (the rosbags writer's size), chunk k holding the messages up to its end time."""
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if mode != CompressionMode.NONE:
        writer.set_compression(mode, CompressionFormat.ZSTD)
    writer.set_custom_data("vla.test", "kept")
    rng = np.random.default_rng(0)
    with writer:
        text = writer.add_connection("/text", "std_msgs/msg/String", typestore=STORE)
        joints = writer.add_connection("/joints", "sensor_msgs/msg/JointState",
                                       typestore=STORE)
        for k in range(messages):
            if k % 3:
                raw = STORE.serialize_cdr(T["std_msgs/msg/String"](data=bytes(
                    rng.integers(97, 123, 1000, np.uint8)).decode()), "std_msgs/msg/String")
                writer.write(text, 10**9 + k * 10**6, raw)
            else:
                writer.write(joints, 10**9 + k * 10**6, STORE.serialize_cdr(
                    T["sensor_msgs/msg/JointState"](header=T["std_msgs/msg/Header"](
                        stamp=T["builtin_interfaces/msg/Time"](sec=k, nanosec=0), frame_id=""),
                        name=["a"], position=np.array([float(k)]), velocity=np.zeros(0),
                        effort=np.zeros(0)), "sensor_msgs/msg/JointState"))
    return path


def mcap_records(data: bytes) -> list[tuple[int, int, int]]:
    """(opcode, start, end) of the data section's records, DataEnd included."""
    records, pos = [], 8 + 9 + int.from_bytes(data[9:17], "little")
    while True:
        end = pos + 9 + int.from_bytes(data[pos + 1:pos + 9], "little")
        records.append((data[pos], pos, end))
        if data[pos] == 0x0F:
            return records
        pos = end


@pytest.mark.parametrize("mode", [CompressionMode.NONE, CompressionMode.STORAGE],
                         ids=["plain", "zstd-chunks"])
@pytest.mark.parametrize("cut", ["inside-a-chunk", "after-a-chunk", "zero-filled",
                                 "inside-the-summary"])
def test_killed_mcap_recording_is_read_up_to_its_last_complete_record(
        tmp_path: Path, mode: CompressionMode, cut: str) -> None:
    bag = write_chunky_bag(tmp_path / "bag", mode)
    topics = ["/joints", "/text"]
    whole = reference(bag, topics)
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    records = mcap_records(data)
    chunks = [(start, end) for op, start, end in records if op == 0x06]
    assert len(chunks) == 3
    (start, end), keep = chunks[1], 1  # keep: how many chunks stay readable
    if cut == "inside-a-chunk":  # the writer was killed while writing the second chunk
        data = data[:(start + end) // 2]
    elif cut == "after-a-chunk":  # killed between two records
        data, keep = data[:end], 2
    elif cut == "zero-filled":  # the file system had allocated the chunk, never written
        data = data[:start] + bytes(end - start)
    else:  # killed while closing: DataEnd written, the summary not
        data, keep = data[:records[-1][2] + 100], 3
    mcap.write_bytes(data)
    if cut != "after-a-chunk":  # with metadata.yaml, only its custom data is used
        (bag / "metadata.yaml").unlink()
    last = (max(t for ts in whole.values() for t, _ in ts) if keep == 3 else
            int.from_bytes(data[chunks[keep - 1][0] + 17:chunks[keep - 1][0] + 25], "little"))
    expected = {t: [m for m in whole[t] if m[0] <= last] for t in topics}
    assert 0 < sum(map(len, expected.values())) < sum(map(len, whole.values())) or keep == 3
    with BagReader(bag) as reader:
        contents = reader.contents()
        assert {t: i.count for t, i in contents.topics.items()} == {
            t: len(m) for t, m in expected.items()}
        assert contents.custom_data == ({"vla.test": "kept"} if cut == "after-a-chunk" else {})
        assert contents.start_ns == 10**9 and contents.end_ns == last + 1
        index = reader.index(topics, load=topics)
        for topic in topics:
            assert index[topic].log_ns.tolist() == [t for t, _ in expected[topic]]
            assert [bytes(p) for p in index[topic].payloads] == [r for _, r in expected[topic]]
        got = list(reader.messages(topics))
        assert [(n, r) for _, _, n, r in got] == sorted(
            m for ms in expected.values() for m in ms)
        assert reader.deserialize(index["/joints"].payloads[-1], "sensor_msgs/msg/JointState")
        lost = len(data) - start if keep == 1 else 0  # from the second chunk on
        *no_yaml, warning = reader.warnings
        assert no_yaml == ([] if cut == "after-a-chunk" else [
            "no metadata.yaml (recording interrupted?): read bag.mcap directly"])
        if keep == 3:
            assert "no mcap footer: writing its summary was interrupted" in warning
        else:
            assert f"recording interrupted: read its first {len(data) - lost} bytes, lost " \
                   f"the last {lost} " in warning
            assert {"inside-a-chunk": "record (opcode 0x06) cut after",
                    "after-a-chunk": "the file ends after a complete record",
                    "zero-filled": "zero bytes instead of a record"}[cut] in warning


def test_mcap_recording_killed_before_a_complete_chunk_is_a_bag_error(tmp_path: Path) -> None:
    bag = write_chunky_bag(tmp_path / "bag", CompressionMode.NONE)
    (bag / "metadata.yaml").unlink()
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    first_chunk = next(start for op, start, _ in mcap_records(data) if op == 0x06)
    for size, error in [(first_chunk + 5000, "interrupted before any message was completely "
                                             "written .*record \\(opcode 0x06\\) cut after"),
                        (20, "cut inside its header after 20 bytes"),
                        (0, "is empty")]:
        mcap.write_bytes(data[:size])
        with pytest.raises(BagError, match=error):
            BagReader(bag)
    mcap.write_bytes(b"PK\x03\x04" + data[4:first_chunk + 5000])
    with pytest.raises(BagError, match="damaged.*file magic is invalid"):
        BagReader(bag)


KILLED_SQLITE_WRITER = """
import os, signal, sqlite3, sys
source, target, wal, messages, commit_every = sys.argv[1:]
src = sqlite3.connect(source)
con = sqlite3.connect(target)
if wal == "wal":  # what ros2 bag record's `resilient` storage preset sets
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")  # everything stays in the log
for name, sql in src.execute("SELECT name, sql FROM sqlite_master WHERE type='table'"):
    con.execute(sql)
    if name != "messages":
        rows = src.execute(f"SELECT * FROM {name}").fetchall()
        con.executemany(f"INSERT INTO {name} VALUES ({','.join('?' * len(rows[0]))})", rows)
con.commit()
rows = src.execute(f"SELECT * FROM messages ORDER BY id LIMIT {int(messages)}").fetchall()
for i, row in enumerate(rows, 1):
    con.execute("INSERT INTO messages VALUES (?, ?, ?, ?)", row)
    if i % int(commit_every) == 0:
        con.commit()
os.kill(os.getpid(), signal.SIGKILL)
"""


def kill_sqlite_recording(source: Path, target: Path, messages: int, commit_every: int,
                          wal: bool = True) -> Path:
    """A sqlite3 bag whose recorder was SIGKILLed after ``messages`` of ``source``'s messages,
    committing every ``commit_every``: no metadata.yaml, and (``wal``) a -wal and -shm file."""
    target.mkdir()
    [db3] = source.glob("*.db3")
    run = subprocess.run([sys.executable, "-c", KILLED_SQLITE_WRITER, str(db3),
                          str(target / f"{target.name}_0.db3"), "wal" if wal else "journal",
                          str(messages), str(commit_every)], capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    return target


def test_killed_wal_recording_is_read_with_its_log(tmp_path: Path) -> None:
    source = write_episode_bag(tmp_path / "source", SPEC, SyntheticEpisode(
        duration=1.0, storage="sqlite3"))
    killed = kill_sqlite_recording(source, tmp_path / "killed", 450, 100)
    files = {p.name: p.read_bytes() for p in killed.iterdir()}
    assert sorted(files) == ["killed_0.db3", "killed_0.db3-shm", "killed_0.db3-wal"]
    with pytest.raises(Exception, match="missing tables"):  # rosbags reads no log
        reference(killed, [])
    with BagReader(source) as reader:
        topics = sorted(reader.contents().topics)
        whole = reader.index(topics, load=topics)
        order = np.argsort(np.concatenate([tm.locators[:, 1] for tm in whole.values()]))
        first = np.zeros(len(order), bool)
        first[order[:400]] = True  # the committed messages: the first 400 by id
        split = np.cumsum([len(tm) for tm in whole.values()])[:-1]
        expected = {t: (tm.log_ns[keep].tolist(),
                        [bytes(p) for p, k in zip(tm.payloads, keep) if k])
                    for (t, tm), keep in zip(whole.items(), np.split(first, split))}
    with BagReader(killed) as reader:
        assert type(reader._store).__name__ == "_SqliteStore"
        contents = reader.contents()
        assert {t: i.count for t, i in contents.topics.items()} == {
            t: len(times) for t, (times, _) in expected.items()}
        index = reader.index(topics, load=topics)
        assert {t: (tm.log_ns.tolist(), [bytes(p) for p in tm.payloads])
                for t, tm in index.items()} == expected
        assert reader.warnings == [
            "no metadata.yaml (recording interrupted?): read killed_0.db3 directly",
            "killed_0.db3: read with its write-ahead log killed_0.db3-wal, never checkpointed "
            "(recording interrupted?)"]
    # Read-only: the database and its log are as the recorder left them (SQLite maintains
    # the -shm index).
    assert {p.name: p.read_bytes() for p in killed.iterdir() if p.suffix != ".db3-shm"} == {
        k: v for k, v in files.items() if not k.endswith("-shm")}


@pytest.mark.parametrize("messages", [10, 3000], ids=["nothing-spilled", "hot-journal"])
def test_killed_rollback_journal_recording_is_a_clear_bag_error(tmp_path: Path,
                                                               messages: int) -> None:
    """vla-record's sqlite3 writer (rosbags) commits at the end only: a killed episode holds
    nothing; once it outgrew SQLite's cache, a hot journal must be rolled back first."""
    source = write_episode_bag(tmp_path / "source", SPEC, SyntheticEpisode(
        duration=6.0, storage="sqlite3"))
    killed = kill_sqlite_recording(source, tmp_path / "killed", messages, 10**9, wal=False)
    with pytest.raises(BagError, match="no message in killed_0.db3 .*before its first commit"
                       if messages == 10 else "interrupted inside a transaction"):
        BagReader(killed)
