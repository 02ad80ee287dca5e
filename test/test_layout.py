"""The README's "Layout" tree is the package's folder tree: every folder drawn exists, and
every package folder (one with an ``__init__.py``) is drawn, with the same nesting."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_tree(text: str) -> set[str]:
    """Folder paths drawn in the first code block of the "## Layout" section. Each line is
    ``<2 spaces per level><name>/  <description>``; the first line is the package root."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    paths, stack = set(), []
    for line in block.splitlines():
        match = re.match(r"^( *)([A-Za-z0-9_]+)/(\s|$)", line)
        if not match:
            assert not line.strip(), f"README Layout: cannot read the tree line {line!r}"
            continue
        indent, name = len(match.group(1)), match.group(2)
        assert indent % 2 == 0, f"README Layout: odd indentation in {line!r}"
        level = indent // 2
        assert level <= len(stack), f"README Layout: {name}/ skips a level"
        stack[level:] = [name]
        paths.add("/".join(stack))
    return paths


def package_tree() -> set[str]:
    """``vlsam_ros`` and every folder below it that holds an ``__init__.py``."""
    package = ROOT / "vlsam_ros"
    return {"vlsam_ros"} | {"vlsam_ros/" + str(p.parent.relative_to(package))
                            for p in package.rglob("__init__.py") if p.parent != package}


def test_readme_layout_tree_matches_the_package_folders():
    drawn = readme_tree((ROOT / "README.md").read_text())
    actual = package_tree()
    assert drawn - actual == set(), "drawn in README but not a package folder"
    assert actual - drawn == set(), "package folder missing from the README's Layout tree"


def test_the_tree_reader_sees_nesting_and_catches_a_missing_folder():
    text = "x\n## Layout\n\n```\nvlsam_ros/\n  core/   a\n    vlm/  b\n  ros/    c\n```\n## Next\n"
    assert readme_tree(text) == {"vlsam_ros", "vlsam_ros/core", "vlsam_ros/core/vlm",
                                 "vlsam_ros/ros"}
    assert "vlsam_ros/ros/vlm" not in readme_tree(text)


def test_in_tree_paths_computed_from_module_files_point_into_this_checkout():
    """Modules that find repository files from ``__file__`` must follow their own moves."""
    from vlsam_ros.core.config_files import profile_dirs
    from vlsam_ros.offline.replay.bag_io import msg_dir

    assert msg_dir() == ROOT / "msg"
    assert profile_dirs()[0] == ROOT / "config" / "profiles"
