#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv):
#   1. pinned requirements: requirements.txt, which includes requirements-ml.txt (torch CPU, ML
#      stack, simulator) and requirements-ros-wheels.txt (ROS 2 Jazzy wheels, colcon), plus
#      numpy/OpenCV/test tools. (On a ROS install use requirements-ml.txt alone: docs/ros.md.)
#   2. vla_msgs (and, where no Interbotix stack exists, a stand-in interbotix_xs_msgs with its two
#      command messages) built with ament_cmake/rosidl and installed into the venv;
#   3. this package installed editable, so console scripts (vla-demo, vla-bench, ...) exist.
# Idempotent: each step is skipped when its inputs did not change, so a second run takes seconds.
#
# Environment: VLA_VENV (default: <repo>/.venv), PYTHON (default: python3, must be >= 3.10).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VLA_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
BUILD=$ROOT/build/bootstrap
say() { printf '[bootstrap] %s\n' "$*"; }

"$PYTHON" - <<'PY' || { echo "[bootstrap] Python >= 3.10 is required (PYTHON=$PYTHON)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

# System packages: a compiler and cmake build vla_msgs; EGL + Mesa render the simulator headless.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(g++)
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || missing+=(libegl1)
ldconfig -p 2>/dev/null | grep -q 'libGLX_mesa.so.0\|libEGL_mesa.so.0' || missing+=(libgl1-mesa-dri libegl-mesa0)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "[bootstrap] missing system packages; run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
VPY=$VENV/bin/python
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# 1. requirements
REQUIREMENTS=("$ROOT/requirements.txt" "$ROOT/requirements-ml.txt" "$ROOT/requirements-ros-wheels.txt")
req_hash=$(hash_of "${REQUIREMENTS[@]}")
if [ "$(cat "$VENV/.vla-requirements" 2>/dev/null)" != "$req_hash" ]; then
  say "installing pinned requirements (first time: a few minutes)"
  "$VPY" -m pip install --quiet --upgrade pip
  # torch first and pinned, so nothing resolves a CUDA build of it on CPU machines
  "$VPY" -m pip install --quiet "$(grep -hE '^torch==' "${REQUIREMENTS[@]}" | head -1)"
  "$VPY" -m pip install --quiet -r "$ROOT/requirements.txt"
  echo "$req_hash" > "$VENV/.vla-requirements"
  rm -f "$VENV/.vla-interfaces"
else
  say "requirements up to date"
fi

# 2. interface packages
build_interface() {  # build_interface <source dir>
  local src=$1 name
  name=$(basename "$src")
  say "building $name"
  cmake -S "$src" -B "$BUILD/$name" -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
    > "$BUILD/$name.log" 2>&1 \
    && cmake --build "$BUILD/$name" -j "$(nproc)" >> "$BUILD/$name.log" 2>&1 \
    && cmake --install "$BUILD/$name" >> "$BUILD/$name.log" 2>&1 \
    || { echo "[bootstrap] building $name failed; log: $BUILD/$name.log" >&2;
         tail -30 "$BUILD/$name.log" >&2; exit 1; }
}
interfaces=("$ROOT/vla_msgs")
# The stand-in interbotix_xs_msgs unless a real one is importable (the stand-in installs
# share/interbotix_xs_msgs/vla_stand_in; older builds say "Stand-in" in their package.xml).
has_real_interbotix=0
if "$VPY" -c "import interbotix_xs_msgs.msg" 2>/dev/null \
   && [ ! -e "$VENV/share/interbotix_xs_msgs/vla_stand_in" ] \
   && ! grep -qs "Stand-in" "$VENV/share/interbotix_xs_msgs/package.xml"; then
  has_real_interbotix=1
else
  interfaces+=("$ROOT/scripts/interbotix_xs_msgs")
fi
if_hash=$(cd "$ROOT" && { echo "$req_hash"; find vla_msgs scripts/interbotix_xs_msgs -type f \
  -not -name '*.pyc' | sort | xargs cat; } | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.vla-interfaces" 2>/dev/null)" != "$if_hash" ] \
   || ! "$VPY" -c "import vla_msgs.msg" 2>/dev/null; then
  mkdir -p "$BUILD"
  "$VPY" "$ROOT/scripts/fix_ros_wheel_cmake.py"
  for src in "${interfaces[@]}"; do build_interface "$src"; done
  "$VPY" -c "import vla_msgs.msg, interbotix_xs_msgs.msg" \
    || { echo "[bootstrap] built messages do not import" >&2; exit 1; }
  [ "$has_real_interbotix" = 1 ] || echo "$if_hash" > "$VENV/.vla-interfaces"
else
  say "vla_msgs up to date"
fi

# 3. the package itself (editable: code changes need no reinstall)
pkg_hash=$(hash_of "$ROOT/setup.py" "$ROOT/setup.cfg")
if [ "$(cat "$VENV/.vla-package" 2>/dev/null)" != "$pkg_hash" ]; then
  say "installing vla_policy_node (editable)"
  "$VPY" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
  echo "$pkg_hash" > "$VENV/.vla-package"
else
  say "vla_policy_node up to date"
fi
say "ready: $VENV"
