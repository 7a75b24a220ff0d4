"""Shared output of the benchmarks: a printed table, a JSON file, a section of the docs."""

from __future__ import annotations

import json
import os
from pathlib import Path
import platform
import re
from typing import Any, Mapping, Sequence

DOCS_PATH = Path(__file__).resolve().parent.parent.parent / "docs" / "benchmarks.md"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> str:
    """One line naming the machine a benchmark ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, no GPU"


def write_json(path: str | os.PathLike | None, result: Mapping[str, Any]) -> None:
    """Write ``result`` as indented JSON to ``path`` (no-op when ``path`` is None)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")


def update_docs_section(section: str, markdown: str, path: str | os.PathLike = DOCS_PATH) -> None:
    """Replace (or append) the block between ``<!-- bench:SECTION -->`` markers in the docs.

    Each benchmark owns one section, so benchmarks update the file independently.
    """
    path = Path(path)
    begin, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
