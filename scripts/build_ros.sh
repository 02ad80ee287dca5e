#!/usr/bin/env bash
# Builds the vlsam_ros messages (and installs the package) with colcon inside a Python venv
# that got ROS 2 from PyPI wheels (no system ROS). See docs design.md section 5.
#
# Usage: VIRTUAL_ENV=/path/to/.venv bash scripts/build_ros.sh [extra colcon args]
#   (VIRTUAL_ENV defaults to <repo>/.venv). Output: <repo>/build, <repo>/install, <repo>/log.
# Then `source scripts/ros_env.sh` to use the generated messages.
#
# On a real ROS 2 install (Humble/Jazzy/Kilted) none of this is needed:
#   source /opt/ros/$ROS_DISTRO/setup.bash && colcon build --symlink-install
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VIRTUAL_ENV="${VIRTUAL_ENV:-$REPO/.venv}"
VIRTUAL_ENV="$(cd "$VIRTUAL_ENV" && pwd)"
PY="$VIRTUAL_ENV/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "build_ros.sh: no python at $PY; create the venv first (make setup)" >&2
  exit 1
fi

# Workaround 1: the message wheels' CMake exports name the include folders of the machine
# that built them (/opt/python/cp3XX-cp3XX/...). Point them at this venv's Python and numpy
# headers. Idempotent: a second run finds nothing left to rewrite.
"$PY" - "$VIRTUAL_ENV" <<'PYEOF'
import re
import sys
import sysconfig
from pathlib import Path

import numpy

venv = Path(sys.argv[1])
python_include = sysconfig.get_paths()["include"]
numpy_include = numpy.get_include()
if not Path(python_include, "Python.h").is_file():
    sys.exit(f"build_ros.sh: Python.h not found in {python_include}; install the Python "
             "development headers (e.g. apt install python3.11-dev)")
bogus_numpy = re.compile(r"/opt/python/[^;\"]*?/site-packages/numpy/(?:_core|core)/include")
bogus_python = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
changed = 0
for path in sorted(venv.glob("share/*/cmake/*.cmake")):
    text = path.read_text()
    if "/opt/python/" not in text:
        continue
    new = bogus_python.sub(python_include, bogus_numpy.sub(numpy_include, text))
    if new != text:
        path.write_text(new)
        changed += 1
print(f"build_ros.sh: rewrote Python/numpy include paths in {changed} CMake export file(s)")
PYEOF

# Workaround 2: ament/CMake find the wheel-installed ROS packages under the venv prefix.
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export VIRTUAL_ENV
# The rosidl generators run as Python subprocesses of CMake; the ROS wheels' bootstrapper
# would re-exec each of them to set LD_LIBRARY_PATH: do it once here instead.
export LD_LIBRARY_PATH="$VIRTUAL_ENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cd "$REPO"
venv_in_source=OFF
case "$VIRTUAL_ENV/" in "$REPO"/*) venv_in_source=ON ;; esac
# --paths (not a recursive crawl): the venv's share/*/package.xml must not be picked up.
"$VIRTUAL_ENV/bin/colcon" build --symlink-install \
  --paths "$REPO" \
  --build-base "$REPO/build" --install-base "$REPO/install" \
  --cmake-args -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF \
    -DVLSAM_VENV_IN_SOURCE_TREE="$venv_in_source" \
  "$@"
# colcon log base is <cwd>/log by default.
echo "build_ros.sh: built into $REPO/install; now: source scripts/ros_env.sh"
