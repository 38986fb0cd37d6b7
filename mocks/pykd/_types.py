"""Type information for the stand-in pykd: a tree of structures, as a PDB would describe them.

Built from a flat description ``{type name: (size, {"Field" or "Outer.Inner.Field": (offset, size)})}``
whose offsets are from the start of the outermost structure; nested paths become nested structures,
so ``fieldOffset`` answers for direct members only and a nested field is reached through ``field()``,
as with real symbols.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from pykd_ext.layouts import BUILD_LAYOUTS_X64, KIND_SIZES, STABLE_LAYOUTS, builtin_layout

from mocks.arm64_layouts import ARM64_BUILD_LAYOUTS, arm64_layout

FlatType = Tuple[int, Dict[str, Tuple[int, int]]]


class TypeNode:
    """One type: its size and its direct members as (offset from this type's start, member type)."""

    def __init__(self, name: str, size: int):
        self.name = name
        self.size = size
        self.members: Dict[str, Tuple[int, "TypeNode"]] = {}


def build_tree(name: str, flat: FlatType) -> TypeNode:
    size, fields = flat
    return _node(name, size, 0, "", fields)


def _node(name: str, size: int, base: int, prefix: str, fields: Dict[str, Tuple[int, int]]) -> TypeNode:
    node = TypeNode(name, size)
    children: Dict[str, List[str]] = {}
    for path in fields:
        if prefix and not path.startswith(prefix):
            continue
        rest = path[len(prefix):]
        children.setdefault(rest.split(".", 1)[0], []).append(path)
    for child, paths in children.items():
        full = prefix + child
        descendants = [fields[p][0] for p in paths if p != full]
        start = fields[full][0] if full in fields else min(descendants)
        child_size = max(fields[p][0] + fields[p][1] for p in paths) - start
        kind = "<unnamed-tag>" if descendants else _base_type_name(child_size)
        node.members[child] = (start - base, _node(kind, child_size, start, full + ".", fields) if descendants
                               else TypeNode(kind, child_size))
    return node


def _base_type_name(size: int) -> str:
    return {1: "UChar", 2: "Uint2B", 4: "Uint4B", 8: "Uint8B"}.get(size, "<struct>")


def flat_from_layouts(pointer_size: int, build: Optional[int], arch: str = "") -> Dict[str, FlatType]:
    """Every structure leakhunt's built-in tables know for this architecture and build, as 'symbols' (an
    ARM64 kernel's structures that move between builds from the test ARM64 kernel's tables)."""
    result: Dict[str, FlatType] = {}
    for name in list(STABLE_LAYOUTS) + list(BUILD_LAYOUTS_X64) + list(ARM64_BUILD_LAYOUTS):
        layout = builtin_layout(name, pointer_size, build, arch)
        if layout is None and arch == "arm64":
            layout = arm64_layout(name)
        if layout is None:
            continue
        ends = sorted(set(layout.offsets.values()) | {layout.size})
        fields = {}
        for field_name, offset in layout.offsets.items():
            kind = layout.kinds[field_name]
            if kind == "ptr":
                size = pointer_size
            elif kind in KIND_SIZES:
                size = KIND_SIZES[kind]
            else:  # an embedded structure: up to the next field
                later = [end for end in ends if end > offset]
                size = (later[0] if later else offset + pointer_size) - offset
            fields[field_name] = (offset, size)
        size = layout.size or max(o + s for o, s in fields.values())
        result[name] = (size, fields)
    return result
