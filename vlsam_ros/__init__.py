"""vlsam_ros: open-ended detection and segmentation with VL-SAM for ROS 2.

``vlsam_ros.core`` is the ROS-free algorithm, ``vlsam_ros.ros`` the ROS 2 shell,
``vlsam_ros.offline`` the desk tools, ``vlsam_ros.testing`` the test-model builders and
``vlsam_ros.tools`` the command-line plumbing (README, "Layout"). The generated
message module ``vlsam_ros.msg`` may live in a colcon install space rather than beside this
file, so the package path is extended across every ``vlsam_ros`` folder on ``sys.path``.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
