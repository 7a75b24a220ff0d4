"""``vla-bench executor`` end to end, short: under inference load, gap-free, parseable."""

from __future__ import annotations

import json

from vla_policy_node.bench import cli


def test_executor_bench_runs_under_load_without_starving(tmp_path, capsys):
    out = tmp_path / "executor.json"
    args = cli.build_parser().parse_args([
        "executor", "--rates", "50", "500", "--latencies", "0.1", "--duration", "1.0",
        "--load-threads", "1", "--realtime-priority", "0", "--json", str(out)])
    result = args._module.run(args)
    cli.report.write_json(args.json, result)
    printed = capsys.readouterr().out
    assert "| rate Hz |" in printed and "forwards/s" in printed
    assert result["load_forwards_per_s"] > 0  # the load process really ran inference
    rows = {r["rate_hz"]: r for r in result["scenarios"]}
    assert set(rows) == {50.0, 500.0}
    for rate, row in rows.items():
        assert row["starved_ticks"] == 0
        assert row["rejected_chunks"] == 0 and row["accepted_chunks"] >= 2
        assert row["ticks"] > 0.2 * rate  # the loop ran (timing itself is not asserted)
        assert 0 <= row["tick_error_p50_ms"] <= row["tick_error_p99_ms"] \
            <= row["tick_error_max_ms"]
    saved = json.loads(out.read_text())
    assert saved["scenarios"][0]["rate_hz"] == 50.0


def test_executor_bench_help_describes_options(capsys):
    try:
        cli.build_parser().parse_args(["executor", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    text = capsys.readouterr().out
    for option in ("--rates", "--latencies", "--load-threads", "--realtime-priority",
                   "--update-docs", "--json"):
        assert option in text
