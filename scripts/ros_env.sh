# Source this file (bash) to use vlsam_ros from the Python venv after scripts/build_ros.sh:
#
#   source scripts/ros_env.sh
#   .venv/bin/python -c "from vlsam_ros.msg import DetectionArray"
#
# It puts the in-tree package first on PYTHONPATH and the colcon install space (generated
# vlsam_ros.msg, message libraries) after it; vlsam_ros/__init__.py extends the package path
# across both. The ROS wheels' bootstrapper (ros_wheels_bootstrapper.pth) re-executes every
# venv Python once with LD_LIBRARY_PATH extended by the venv's ROS libraries, keeping what is
# set here; child processes inherit the result, so pass os.environ on to subprocesses.
#
# DDS discovery defaults to this machine only (loopback); export your own values before
# sourcing to change that. Tests also set their own ROS_DOMAIN_ID.
# On a real ROS 2 install use `source install/setup.bash` instead.

_vlsam_repo="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
_vlsam_venv="${VIRTUAL_ENV:-$_vlsam_repo/.venv}"
_vlsam_prefix="$_vlsam_repo/install/vlsam_ros"

if [ ! -d "$_vlsam_prefix/share/vlsam_ros" ]; then
  echo "ros_env.sh: $_vlsam_prefix not built yet; run: bash scripts/build_ros.sh" >&2
fi
_vlsam_site="$(ls -d "$_vlsam_prefix"/lib/python3*/site-packages 2>/dev/null | head -n 1)"

export PYTHONPATH="$_vlsam_repo${_vlsam_site:+:$_vlsam_site}${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$_vlsam_prefix/lib:$_vlsam_venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$_vlsam_prefix:$_vlsam_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_LOCALHOST_ONLY="${ROS_LOCALHOST_ONLY:-1}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"

unset _vlsam_repo _vlsam_venv _vlsam_prefix _vlsam_site
