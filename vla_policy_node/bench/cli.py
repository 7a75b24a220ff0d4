"""``vla-bench``: the project's benchmarks, one subcommand each.

Each benchmark module exposes ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> dict``; it prints its own table. This entry point adds the common
``--json PATH`` and ``--update-docs`` options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vla_policy_node.bench import report

BENCHMARKS = ("transport", "model", "executor", "sim", "convert", "finetune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-bench",
        description="Benchmarks of the VLA suite. Each prints a table; --json writes the "
                    "numbers; --update-docs records them in docs/benchmarks.md.")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"vla_policy_node.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vla_policy_node.bench.{name}":
                raise
            continue
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.add_argument("--json", metavar="PATH", default=None, help="write results as JSON")
        p.add_argument("--update-docs", action="store_true",
                       help="record the table in docs/benchmarks.md")
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args._module.run(args)
    report.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
