"""Point the ROS wheels' exported CMake files at this venv's Python headers and numpy.

The ROS 2 PyPI wheels were built under /opt/python/cpXY-cpXY and their
``share/*/cmake/*.cmake`` still name that interpreter's include directories; building a
rosidl package (vla_msgs) against them fails until those paths name this interpreter's.
Idempotent: rewrites only what still points elsewhere.
"""

from __future__ import annotations

from pathlib import Path
import re
import sys
import sysconfig

import numpy


def main() -> int:
    prefix = Path(sys.prefix)
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    patterns = [
        (re.compile(r"/opt/python/cp\d+-cp\d+/lib/python[\d.]+/site-packages/numpy/"
                    r"(?:_core|core)/include"), numpy_include),
        (re.compile(r"/opt/python/cp\d+-cp\d+/include/python[\d.]+"), python_include),
    ]
    changed = 0
    for path in sorted(prefix.glob("share/*/cmake/*.cmake")):
        text = path.read_text()
        new = text
        for pattern, replacement in patterns:
            new = pattern.sub(replacement, new)
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"fix_ros_wheel_cmake: {changed} CMake file(s) now use {python_include}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
