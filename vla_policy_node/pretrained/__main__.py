"""`python3 -m vla_policy_node.pretrained [NAME]`: print a shipped policy's checkpoint directory.

For launch arguments, e.g.
``ros2 launch vla_policy_node aloha.launch.py sim:=true checkpoint:=$(python3 -m
vla_policy_node.pretrained)``.
"""

from __future__ import annotations

import sys

from vla_policy_node.pretrained import DEFAULT_POLICY, MissingPolicyError, shipped_policy_dir


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print(__doc__.strip(), file=sys.stderr if len(args) > 1 else sys.stdout)
        return 2 if len(args) > 1 else 0
    try:
        print(shipped_policy_dir(args[0] if args else DEFAULT_POLICY))
    except MissingPolicyError as exc:
        print(f"vla_policy_node.pretrained: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
