"""vla-plot: PNGs of converted episodes and runs; bad input gets a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vla_policy_node.data.convert import convert_bags
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.data.synthetic import SyntheticEpisode, write_episode_bag
from vla_policy_node.tools.plot import load_run, main, plot_episode, plot_run, PlotError

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_episode_plots(tmp_path: Path) -> None:
    spec = DataSpec.from_file()
    bag = write_episode_bag(tmp_path / "bags" / "ep", spec,
                            SyntheticEpisode(duration=1.2, image_size=(24, 32)))
    [report] = convert_bags([bag], spec, tmp_path / "data")
    episode = tmp_path / "data" / report.outputs[0]
    written = plot_episode(episode, tmp_path / "plots", thumbnails=3)
    assert [p.name for p in written] == ["ep_joints.png", "ep_cameras.png"]
    assert all(is_png(p) for p in written)
    assert main([str(episode), "--out", str(tmp_path / "cli"), "--thumbnails", "0"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["ep_joints.png"]
    with pytest.raises(PlotError, match="cannot open episode .*nothing.hdf5"):
        plot_episode(tmp_path / "nothing.hdf5", tmp_path)


def test_run_plot_npz_and_json(tmp_path: Path) -> None:
    t = np.linspace(0, 2, 50)
    commanded = np.sin(t)[:, None] * np.arange(1, 5)
    measured = commanded + 0.01
    measured[0] = np.nan  # the demo writes NaN before the first joint state
    names = np.array(["a", "b", "c", "d"])
    np.savez(tmp_path / "run.npz", t=t, commanded=commanded, measured=measured,
             joint_names=names)
    [png] = plot_run(tmp_path / "run.npz", tmp_path / "out")
    assert png.name == "run_run.png" and is_png(png)
    (tmp_path / "r2.json").write_text(
        '{"t": [0, 1], "commanded": [[1, 2], [3, 4]], "measured": [[1, 2], [3, 5]]}')
    assert main(["--run", str(tmp_path / "r2.json"), "--out", str(tmp_path / "out")]) == 0
    assert is_png(tmp_path / "out" / "r2_run.png")
    assert list(load_run(tmp_path / "r2.json")["joint_names"]) == ["joint_0", "joint_1"]


@pytest.mark.parametrize("arrays, message", [
    ({"t": np.arange(3), "commanded": np.zeros((3, 2))}, r"missing arrays \['measured'\]"),
    ({"t": np.arange(3), "commanded": np.zeros((4, 2)), "measured": np.zeros((4, 2))},
     r"commanded must be \(T=3, D\), got \(4, 2\)"),
    ({"t": np.arange(3), "commanded": np.zeros((3, 2)), "measured": np.zeros((3, 3))},
     r"measured \(3, 3\) differ|commanded \(3, 2\) and measured \(3, 3\) differ"),
    ({"t": np.zeros(0), "commanded": np.zeros((0, 2)), "measured": np.zeros((0, 2))},
     "t must be a non-empty"),
    ({"t": np.arange(2), "commanded": np.zeros((2, 2)), "measured": np.zeros((2, 2)),
      "joint_names": np.array(["x"])}, "1 joint_names for D=2"),
])
def test_bad_run_files(tmp_path: Path, arrays: dict, message: str,
                       capsys: pytest.CaptureFixture) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PlotError, match=message):
        load_run(tmp_path / "bad.npz")
    assert main(["--run", str(tmp_path / "bad.npz"), "--out", str(tmp_path)]) == 1
    assert "bad.npz" in capsys.readouterr().err


def test_unreadable_run_files(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PlotError, match="cannot read run file .*junk.npz"):
        load_run(tmp_path / "junk.npz")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(PlotError, match="expected a JSON object, got list"):
        load_run(tmp_path / "list.json")
    with pytest.raises(PlotError, match="run file not found"):
        load_run(tmp_path / "missing.npz")
    with pytest.raises(SystemExit):
        main([])
