"""Locked-page trackers: the per-process `_LOCK_HEADER` and its trees of `_LOCK_TRACKER`s.

With TrackLockedPages on, EPROCESS.LockedPagesList points to a `_LOCK_HEADER` (pool tag MmTx) whose
LockTree (and LockMdlSwitchedTree) is an RTL_AVL_TREE: one pointer to the root `RTL_BALANCED_NODE`. Every
node is the LockTrackerNode of a `_LOCK_TRACKER` (pool tag MmLk) describing one locked MDL: its page
count, first page frame, the process and the saved stack of whoever locked it. A node's Left and Right
children are its first two pointers; the third word holds the parent pointer with the balance bits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Set, Tuple

from ..layouts import Layouts
from ..targets.base import PAGE_SIZE, MemoryReadError, Module, Target
from .mdl import MAX_MDL_SIZE
from .modules import ModuleMap

# A process with more tracked MDLs than this is corrupt (or the walk is lost); the walk stops there.
MAX_TREE_NODES = 16384
# RTL_BALANCED_NODE.ParentValue keeps the AVL balance (or red-black colour) in its low two bits.
PARENT_FLAG_BITS = 0x3


@dataclass
class LockHeader:
    address: int
    lock_tree: int  # root node of LockTree
    switched_tree: int  # root node of LockMdlSwitchedTree (0 when absent or empty)
    count: int
    valid: int
    problems: List[str] = field(default_factory=list)


@dataclass
class LockTracker:
    address: int
    mdl: int
    start_va: int
    count: int  # pages locked through the MDL
    offset: int
    length: int
    who: int  # which memory-manager routine added the tracker
    page: int  # first page frame number
    stack: List[int]  # saved return addresses, innermost first, zero padding dropped
    process: int
    problems: List[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass
class TreeWalk:
    nodes: List[int] = field(default_factory=list)  # node addresses in visit order (in-order)
    problems: List[str] = field(default_factory=list)
    truncated: bool = False


def read_lock_header(target: Target, layouts: Layouts, address: int) -> LockHeader:
    """Decode the `_LOCK_HEADER` at ``address``. Raises MemoryReadError, LayoutError."""
    view = layouts.view("_LOCK_HEADER", address)
    header = LockHeader(address, view["LockTree"],
                        view["LockMdlSwitchedTree"] if view.layout.has("LockMdlSwitchedTree") else 0,
                        view["Count"], view["Valid"] if view.layout.has("Valid") else 1)
    for name, root in (("LockTree", header.lock_tree), ("LockMdlSwitchedTree", header.switched_tree)):
        if root and not target.is_kernel_address(root):
            header.problems.append(f"{name} root {root:#x} is not a kernel address")
    if not header.valid:
        header.problems.append("Valid is 0: the kernel stopped tracking this process (tracking was aborted)")
    return header


def walk_tree(target: Target, layouts: Layouts, root: int, limit: int = MAX_TREE_NODES) -> TreeWalk:
    """Every node of the RTL_AVL_TREE rooted at ``root``, in order; bounded and cycle-safe.

    A child whose parent pointer does not lead back to its parent is not followed: it is not part of
    this tree (corruption, or a stale pointer).
    """
    walk = TreeWalk()
    if not root:
        return walk
    mask = ~PARENT_FLAG_BITS
    seen: Set[int] = set()
    # In-order traversal with an explicit stack of (node, expected parent, children pushed?).
    stack: List[Tuple[int, int, bool]] = [(root, 0, False)]
    while stack:
        node, parent, expanded = stack.pop()
        if expanded:
            walk.nodes.append(node)
            continue
        if node in seen:
            walk.problems.append(f"tree node {node:#x} is reached twice (a cycle); not followed again")
            continue
        if len(seen) >= limit:
            walk.truncated = True
            walk.problems.append(f"the tree has more than {limit} nodes; the walk stopped there")
            break
        if not target.is_kernel_address(node):
            walk.problems.append(f"tree node {node:#x} is not a kernel address")
            continue
        try:
            view = layouts.view("_RTL_BALANCED_NODE", node)
        except MemoryReadError:
            walk.problems.append(f"tree node {node:#x} is unreadable; its subtree is lost")
            continue
        if parent and (view["ParentValue"] & mask) != parent:
            walk.problems.append(f"tree node {node:#x} does not point back to its parent {parent:#x}; not followed")
            continue
        seen.add(node)  # only once it is known to belong here: its real parent may still reach it
        left, right = view["Left"], view["Right"]
        if right:
            stack.append((right, node, False))
        stack.append((node, parent, True))
        if left:
            stack.append((left, node, False))
    return walk


def max_tracker_pages(target: Target, layouts: Layouts) -> int:
    """The most pages one MDL can describe: its Size field is 16 bits wide."""
    return (MAX_MDL_SIZE - layouts.get("_MDL").size) // target.pointer_size


def read_tracker(target: Target, layouts: Layouts, address: int, process: Optional[int] = None) -> LockTracker:
    """Decode and validate the `_LOCK_TRACKER` at ``address``. Raises MemoryReadError, LayoutError.

    ``process`` is the EPROCESS the tracker must belong to, when known.
    """
    view = layouts.view("_LOCK_TRACKER", address)
    layout = view.layout
    frames = layout.array_length("StackTrace", target.pointer_size) or 0
    raw_stack = target.read_pointers(view["StackTrace"], frames) if frames else []
    tracker = LockTracker(
        address=address, mdl=view["Mdl"], start_va=view["StartVa"], count=view["Count"],
        offset=view["Offset"] if layout.has("Offset") else 0, length=view["Length"] if layout.has("Length") else 0,
        who=view["Who"] if layout.has("Who") else 0, page=view["Page"], stack=[], process=view["Process"])
    problems = tracker.problems
    for index, frame in enumerate(raw_stack):
        if frame == 0:
            break
        if not target.is_kernel_address(frame):
            problems.append(f"StackTrace[{index}] {frame:#x} is not a kernel address")
            break
        tracker.stack.append(frame)
    if not tracker.mdl or not target.is_kernel_address(tracker.mdl):
        problems.append(f"Mdl {tracker.mdl:#x} is not a kernel address")
    limit = max_tracker_pages(target, layouts)
    if not 1 <= tracker.count <= limit:
        problems.append(f"Count {tracker.count:#x} is not a page count an MDL can hold (1..{limit})")
    max_pfn = target.max_pfn or target.architecture.max_pfn
    if not 0 < tracker.page <= max_pfn:
        problems.append(f"Page {tracker.page:#x} is not a page frame number that exists")
    if process is not None and tracker.process != process:
        problems.append(f"Process {tracker.process:#x} is not the process {process:#x}")
    elif not target.is_kernel_address(tracker.process):
        problems.append(f"Process {tracker.process:#x} is not a kernel address")
    if tracker.start_va % PAGE_SIZE:
        problems.append(f"StartVa {tracker.start_va:#x} is not page aligned")
    return tracker


def tracker_at_node(layouts: Layouts, node: int) -> int:
    """The tracker whose LockTrackerNode is ``node`` (the node is at offset 0 on every known layout)."""
    return node - layouts.get("_LOCK_TRACKER").offset("LockTrackerNode")


def first_frame_outside_kernel(modules: ModuleMap, stack: List[int]) -> Tuple[Optional[int], Optional[Module]]:
    """The first saved frame that is not in nt or hal, and its module (None outside every image)."""
    for frame in stack:
        module = modules.find(frame)
        if not ModuleMap.is_kernel_or_hal(module):
            return frame, module
    return None, None
