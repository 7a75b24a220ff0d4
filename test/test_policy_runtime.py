"""Observation assembly and inference triggers of the policy node (pure core)."""

import threading

import numpy as np
import pytest

from vla_policy_node.config import RobotConfig
from vla_policy_node.policy_runtime import (
    arm_vector, camera_size_ranges, compressed_image_size, ImageSizeRange, InferenceTrigger,
    instruction_from_cdr, ObservationStore, ObservationUnavailable)

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
DRIVER = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper",
          "left_finger", "right_finger"]


@pytest.fixture
def robot():
    return RobotConfig.from_file()


def fill(store, robot, t=10.0, gripper=1.6214):
    for cam in CAMERAS:
        store.set_image(cam, np.zeros((4, 4, 3), np.uint8), t)
    for k, arm in enumerate(robot.arms):
        store.set_joint_state(arm, DRIVER, [0.1 * k + i * 0.01 for i in range(6)]
                              + [gripper, 0.03, -0.03], t)


def test_proprio_follows_config_order_and_normalizes_grippers(robot):
    store = ObservationStore(CAMERAS, robot, max_age=0.5)
    fill(store, robot)
    store.set_instruction("  Fold the towel ")
    obs = store.assemble(now=10.1)
    assert obs.instruction == "Fold the towel"
    np.testing.assert_allclose(obs.proprio[:6], [0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    np.testing.assert_allclose(obs.proprio[7:13], [0.1, 0.11, 0.12, 0.13, 0.14, 0.15])
    assert obs.proprio[6] == pytest.approx(1.0) and obs.proprio[13] == pytest.approx(1.0)
    assert obs.stamp == 10.0 and obs.age == pytest.approx(0.1)
    assert set(obs.images) == set(CAMERAS)


def test_gripper_calibration_comes_from_config(robot):
    _, values = arm_vector(robot, "follower_left", DRIVER, [0] * 6 + [0.6197, 0, 0])
    assert values[-1] == pytest.approx(0.0)


@pytest.mark.parametrize("setup, reason", [
    (lambda s, r: None, "no instruction"),
    (lambda s, r: s.set_instruction("go"), "no data yet"),
])
def test_missing_inputs_give_no_observation(robot, setup, reason):
    store = ObservationStore(CAMERAS, robot, max_age=0.5)
    setup(store, robot)
    with pytest.raises(ObservationUnavailable, match=reason):
        store.assemble(now=1.0)


def test_stale_input_names_the_source(robot):
    store = ObservationStore(CAMERAS, robot, max_age=0.5)
    fill(store, robot, t=10.0)
    store.set_image("cam_left_wrist", np.zeros((4, 4, 3), np.uint8), 9.0)
    store.set_instruction("go")
    with pytest.raises(ObservationUnavailable, match="cam_left_wrist"):
        store.assemble(now=10.2)


@pytest.mark.parametrize("names, positions, message", [
    (DRIVER[:5], [0.0] * 5, "lacks joints"),
    (DRIVER, [0.0] * 3 + [float("nan")] + [0.0] * 5, "non-finite"),
    (DRIVER, [0.0] * 4, "names but"),
])
def test_bad_joint_states_are_rejected_and_not_stored(robot, names, positions, message):
    store = ObservationStore(CAMERAS, robot, max_age=0.5)
    fill(store, robot, t=10.0, gripper=0.6197)
    with pytest.raises(ValueError, match=message):
        store.set_joint_state("follower_left", names, positions, 10.0)
    store.set_instruction("go")
    assert store.assemble(10.0).proprio[6] == pytest.approx(0.0)  # the good state is kept


def test_instructions_are_validated_and_versioned(robot):
    store = ObservationStore(CAMERAS, robot, max_age=0.5)
    with pytest.raises(ValueError, match="empty"):
        store.set_instruction("   ")
    with pytest.raises(ValueError, match="characters"):
        store.set_instruction("x" * 5000)
    assert store.set_instruction("a") and store.instruction_id == 1
    assert not store.set_instruction("a") and store.instruction_id == 1
    assert store.set_instruction("b") and store.instruction_id == 2


def test_lazy_decoder_runs_only_at_assembly(robot):
    store = ObservationStore(CAMERAS, robot, max_age=0.5)
    fill(store, robot)
    calls = []
    store.set_image("cam_high", lambda: calls.append(1) or np.ones((2, 2, 3), np.uint8), 10.0)
    assert calls == []
    store.set_instruction("go")
    assert store.assemble(10.0).images["cam_high"].sum() == 12 and calls == [1]


def test_store_is_thread_safe(robot):
    store = ObservationStore(CAMERAS, robot, max_age=100.0)
    fill(store, robot)
    store.set_instruction("go")
    errors = []

    def writer(k):
        for i in range(300):
            store.set_joint_state("follower_left", DRIVER, [k + i] * 6 + [1.0, 0, 0], 10.0)

    def reader():
        for _ in range(300):
            proprio = store.assemble(10.0).proprio
            if len(set(proprio[:6])) != 1:  # a torn update would mix two writes
                errors.append(proprio)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_on_demand_trigger():
    trigger = InferenceTrigger("on_demand", demand_horizon=0.6)
    assert not trigger.should_start(0.0, instruction_id=0, busy=False)  # no instruction
    assert trigger.should_start(0.0, 1, busy=False)  # a new instruction starts at once
    assert not trigger.should_start(0.0, 1, busy=True)
    trigger.started(0.0, 1)
    assert not trigger.should_start(0.1, 1, busy=False)  # no demand reported yet
    trigger.on_executor_status(1.0)
    assert not trigger.should_start(0.2, 1, busy=False)  # enough buffered
    trigger.on_executor_status(0.5)
    assert trigger.should_start(0.3, 1, busy=False)
    trigger.started(0.3, 1)
    trigger.finished()
    assert not trigger.should_start(0.4, 1, busy=False)  # demand from before the chunk landed
    assert trigger.should_start(0.4, 2, busy=False)  # instruction changed


def test_fixed_rate_and_once_triggers():
    rate = InferenceTrigger("fixed_rate", rate_hz=2.0)
    rate.started(0.0, 1)
    assert not rate.should_start(0.4, 1, busy=False)
    assert rate.should_start(0.5, 1, busy=False)
    once = InferenceTrigger("once")
    assert once.should_start(0.0, 1, busy=False)
    once.started(0.0, 1)
    assert not once.should_start(10.0, 1, busy=False)
    once.failed()  # nothing was published: try again
    assert once.should_start(10.0, 1, busy=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="sometimes"), "not one of"),
    (dict(mode="on_demand", demand_horizon=0.0), "demand_horizon"),
    (dict(mode="fixed_rate", rate_hz=0.0), "rate"),
])
def test_trigger_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InferenceTrigger(**kwargs)


# ---- image sizes, read before decoding --------------------------------------------------------

class RawImage:
    def __init__(self, height, width, step=None, data=None, encoding="rgb8"):
        self.height, self.width, self.encoding = height, width, encoding
        self.step = width * 3 if step is None else step
        self.data = bytes(self.step * height) if data is None else data


class Compressed:
    def __init__(self, data, format="jpeg"):
        self.data, self.format = data, format


def encoded(ext, height, width):
    import cv2
    ok, buf = cv2.imencode(ext, np.zeros((height, width, 3), np.uint8))
    assert ok
    return buf


def test_camera_size_ranges_default_to_four_times_the_configured_resolution():
    ranges = camera_size_ranges(CAMERAS, [480], [640])
    assert set(ranges) == set(CAMERAS)
    assert ranges["cam_high"] == ImageSizeRange(120, 1920, 160, 2560)
    assert camera_size_ranges(["a", "b"], [480, 240], [640, 320], 2.0)["b"] == \
        ImageSizeRange(120, 480, 160, 640)
    with pytest.raises(ValueError, match="cameras.widths has 2 entries for 3 cameras"):
        camera_size_ranges(CAMERAS, [480], [640, 640])
    with pytest.raises(ValueError, match=">= 1"):
        camera_size_ranges(CAMERAS, [480], [640], 0.5)


@pytest.mark.parametrize("msg, message", [
    (RawImage(4000, 4000), "image of 4000x4000 outside the accepted 120..1920 x 160..2560"),
    (RawImage(1, 1), "image of 1x1 outside"),
    (RawImage(480, 640, data=b""), "has 0 bytes of data, not step \\* height = 921600"),
    (RawImage(480, 640, data=bytes(1920 * 2560 * 4 + 1)), "bytes of image data, more than"),
    (Compressed(encoded(".jpg", 1, 1)), "image of 1x1 outside"),
    (Compressed(encoded(".png", 4000, 200)), "image of 4000x200 outside"),
    (Compressed(b"GIF89a" + bytes(100)), "neither JPEG nor PNG"),
    (Compressed(b"\xff\xd8" + b"\xff\xfe\x00\x02" * 1000), "no readable frame header|without"),
    (Compressed(b"\xff\xd8\xff\xda"), "frame header"),
])
def test_images_of_other_sizes_are_rejected_from_their_headers(msg, message):
    with pytest.raises(ValueError, match=message):
        ImageSizeRange.around(480, 640).check(msg)


def test_accepted_sizes_are_read_without_decoding(monkeypatch):
    import cv2
    monkeypatch.setattr(cv2, "imdecode", None)  # nothing may decode
    limits = ImageSizeRange.around(480, 640)
    assert limits.check(RawImage(480, 640)) == (480, 640)
    assert limits.check(RawImage(240, 320)) == (240, 320)
    for ext in (".jpg", ".png"):
        buf = encoded(ext, 240, 320)
        assert limits.check(Compressed(buf)) == (240, 320)  # numpy data, as from rosbags
        assert limits.check(Compressed(bytes(buf))) == (240, 320)
        import array
        assert limits.check(Compressed(array.array("B", bytes(buf)))) == (240, 320)  # rclpy
    assert compressed_image_size(encoded(".jpg", 1920, 7)) == (1920, 7)


def test_an_instruction_with_a_nul_character_is_refused_not_cut(robot):
    """rclpy reads a String up to its first NUL: "fold\\0 the towel" arrived as "fold"."""
    import struct
    text = b"fold\x00 the towel"
    raw = b"\x00\x01\x00\x00" + struct.pack("<I", len(text) + 1) + text + b"\x00"
    with pytest.raises(ValueError, match="NUL character at position 4"):
        instruction_from_cdr(raw)
    good = "plie la serviette, s'il te plaît".encode()
    assert instruction_from_cdr(b"\x00\x01\x00\x00" + struct.pack("<I", len(good) + 1) + good
                                + b"\x00") == good.decode()
    for bad in (b"", raw[:10], raw[:-1] + b"x"):
        with pytest.raises(ValueError, match="malformed"):
            instruction_from_cdr(bad)
    store = ObservationStore(CAMERAS, robot, max_age=0.5)
    with pytest.raises(ValueError, match="NUL character at position 4"):
        store.set_instruction("fold\x00 the towel")
    assert store.instruction_id == 0
