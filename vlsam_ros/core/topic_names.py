"""ROS 2 topic-name rules for the ``cameras`` entries, checked without importing rclpy.

The rules are those of rcl's ``rcl_validate_topic_name`` followed by
``rmw_validate_full_topic_name`` after expansion (test_config_topics.py compares the two on
a table of names): a name is not empty, uses only ASCII letters, digits, ``_`` and ``/``,
does not end with ``/``, has no ``//``, and none of its ``/``-separated tokens starts with a
digit. Camera topics may be absolute (``/cam/image_raw``) or relative to the node's
namespace (``cam/image_raw``); private (``~``) names and ``{}`` substitutions are valid ROS
names, but the node does not support them for cameras, so they are refused too.
"""

from __future__ import annotations

import string

_ALLOWED = frozenset(string.ascii_letters + string.digits + "_/")


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a camera topic, or None when it can."""
    if not name:
        return "a topic name must not be empty"
    if name.startswith("~") or "{" in name or "}" in name:
        return ("private ('~') names and '{}' substitutions are not supported for cameras; "
                "give an absolute (/ns/image_raw) or relative (ns/image_raw) name")
    bad = sorted({c for c in name if c not in _ALLOWED})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return (f"it contains {shown}; ROS topic names use only letters, digits, '_' and "
                "'/'")
    if name.endswith("/"):
        return "a topic name must not end with '/'"
    if "//" in name:
        return "a topic name must not contain '//'"
    for token in name.split("/"):
        if token and token[0].isdigit():
            return f"the name part {token!r} starts with a digit, which ROS does not allow"
    return None
