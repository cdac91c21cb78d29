"""Intrusive red-black tree behaving step for step like Linux's lib/rbtree.c (v2.6.33).

KSM keeps its stable and unstable trees in the kernel's generic red-black tree.
That tree is *intrusive*: the links live inside the user's own structures
(``struct stable_node``, ``struct rmap_item``) and the user walks the tree
itself, comparing keys however it likes (KSM compares live page contents).
The library only links nodes in and rebalances.  This module offers the same
contract:

* :class:`RbNode` carries the links and the colour; subclass it (with your own
  ``__slots__``) to add payload.
* :class:`RbRoot` holds the root pointer.
* A caller searches down from ``root.rb_node`` itself, then calls
  :func:`rb_link_node` followed by :func:`rb_insert_color`.
* :func:`rb_erase` unlinks a node and rebalances.

Every rebalancing decision (which rotation, which recolouring, that a node with
two children is replaced by its in-order successor, that the successor inherits
the erased node's colour) follows v2.6.33, so tree shapes and colours match the
kernel's for the same sequence of operations.  This matters for a model: the
order in which KSM meets nodes while walking a tree depends on the shape.

"Not in a tree" convention
--------------------------
The kernel of that era marks a detached node by pointing its parent at itself
(``RB_CLEAR_NODE``/``RB_EMPTY_NODE``).  Here a detached node instead has all
three links set to ``None``; :func:`rb_erase` (and :func:`rb_replace_node` for the
victim) leave nodes in that state, as does :class:`RbNode`'s constructor.
Because a lone root also has ``None`` links, :func:`rb_empty_node` takes the
root as well.  This avoids the self-reference cycle that would otherwise keep
every erased node alive until the cyclic garbage collector runs.  Nodes of a
tree discarded wholesale with :meth:`RbRoot.clear` keep their stale links, just
as in the kernel; do not ask :func:`rb_empty_node` about them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "RbNode",
    "RbRoot",
    "RbTreeError",
    "rb_clear_node",
    "rb_empty_node",
    "rb_erase",
    "rb_first",
    "rb_insert_color",
    "rb_iter",
    "rb_last",
    "rb_link_node",
    "rb_next",
    "rb_prev",
    "rb_replace_node",
    "validate_rbtree",
]


class RbNode:
    """Tree links and colour embedded in a user object (models ``struct rb_node``).

    The kernel packs parent pointer and colour into one word; here they are
    separate slots.  ``rb_red`` is ``True`` for red and ``False`` for black.
    """

    __slots__ = ("rb_left", "rb_parent", "rb_red", "rb_right")

    rb_parent: RbNode | None
    rb_left: RbNode | None
    rb_right: RbNode | None
    rb_red: bool

    def __init__(self) -> None:
        """Create a detached black node with no links."""
        self.rb_parent = None
        self.rb_left = None
        self.rb_right = None
        self.rb_red = False


class RbRoot:
    """Handle on one tree: the root node or ``None`` (models ``struct rb_root``)."""

    __slots__ = ("rb_node",)

    rb_node: RbNode | None

    def __init__(self) -> None:
        """Create an empty tree (models ``RB_ROOT``)."""
        self.rb_node = None

    def clear(self) -> None:
        """Forget every node in O(1), as KSM does with ``root_unstable_tree = RB_ROOT``.

        The nodes themselves are not touched and keep their (now stale) links.
        """
        self.rb_node = None

    def is_empty(self) -> bool:
        """Tell whether the tree holds no node (models ``RB_EMPTY_ROOT``)."""
        return self.rb_node is None


class RbTreeError(AssertionError):
    """Raised by :func:`validate_rbtree` when a red-black invariant is broken."""


# ---------------------------------------------------------------------------
# Rotations (models the static __rb_rotate_left/__rb_rotate_right helpers)
# ---------------------------------------------------------------------------


def _rotate_left(node: RbNode, root: RbRoot) -> None:
    """Lift ``node``'s right child into its place (models ``__rb_rotate_left``)."""
    right = node.rb_right
    assert right is not None
    parent = node.rb_parent
    inner = right.rb_left
    node.rb_right = inner
    if inner is not None:
        inner.rb_parent = node
    right.rb_left = node
    right.rb_parent = parent
    if parent is None:
        root.rb_node = right
    elif parent.rb_left is node:
        parent.rb_left = right
    else:
        parent.rb_right = right
    node.rb_parent = right


def _rotate_right(node: RbNode, root: RbRoot) -> None:
    """Lift ``node``'s left child into its place (models ``__rb_rotate_right``)."""
    left = node.rb_left
    assert left is not None
    parent = node.rb_parent
    inner = left.rb_right
    node.rb_left = inner
    if inner is not None:
        inner.rb_parent = node
    left.rb_right = node
    left.rb_parent = parent
    if parent is None:
        root.rb_node = left
    elif parent.rb_right is node:
        parent.rb_right = left
    else:
        parent.rb_left = left
    node.rb_parent = left


# ---------------------------------------------------------------------------
# Linking and insertion
# ---------------------------------------------------------------------------


def rb_link_node(node: RbNode, parent: RbNode | None, is_left: bool, root: RbRoot) -> None:
    """Hang a new red leaf under ``parent`` (models ``rb_link_node`` in include/linux/rbtree.h).

    The kernel passes a pointer to the empty child slot; here the slot is named
    by ``parent`` and ``is_left``, and ``parent=None`` means "make it the root"
    (``is_left`` is then ignored).  The slot must be empty.  The tree is not
    rebalanced: call :func:`rb_insert_color` next.
    """
    node.rb_parent = parent
    node.rb_left = None
    node.rb_right = None
    node.rb_red = True
    if parent is None:
        root.rb_node = node
    elif is_left:
        parent.rb_left = node
    else:
        parent.rb_right = node


def rb_insert_color(node: RbNode, root: RbRoot) -> None:
    """Restore the red-black rules after linking ``node`` (models ``rb_insert_color``, v2.6.33).

    Walks up while the parent is red: a red uncle means recolour and continue
    from the grandparent; otherwise one rotation (two when ``node`` is an inner
    grandchild) finishes the job.  The root is painted black at the end.
    """
    parent = node.rb_parent
    while parent is not None and parent.rb_red:
        gparent = parent.rb_parent
        assert gparent is not None  # a red node is never the root
        if parent is gparent.rb_left:
            uncle = gparent.rb_right
            if uncle is not None and uncle.rb_red:
                uncle.rb_red = False
                parent.rb_red = False
                gparent.rb_red = True
                node = gparent
                parent = node.rb_parent
                continue
            if parent.rb_right is node:
                _rotate_left(parent, root)
                parent, node = node, parent
            parent.rb_red = False
            gparent.rb_red = True
            _rotate_right(gparent, root)
        else:
            uncle = gparent.rb_left
            if uncle is not None and uncle.rb_red:
                uncle.rb_red = False
                parent.rb_red = False
                gparent.rb_red = True
                node = gparent
                parent = node.rb_parent
                continue
            if parent.rb_left is node:
                _rotate_right(parent, root)
                parent, node = node, parent
            parent.rb_red = False
            gparent.rb_red = True
            _rotate_left(gparent, root)
        # The kernel loops once more here, but node's parent is now the black
        # subtree top, so the loop test fails; leaving directly is equivalent.
        break
    top = root.rb_node
    assert top is not None
    top.rb_red = False


# ---------------------------------------------------------------------------
# Erasure
# ---------------------------------------------------------------------------


def _rb_erase_color(node: RbNode | None, parent: RbNode | None, root: RbRoot) -> None:
    """Repair a missing black after an erase (models ``__rb_erase_color``, v2.6.33).

    ``node`` (possibly ``None``) sits where a black node was removed and
    ``parent`` is its parent.  The sibling cases are the kernel's: a red
    sibling is rotated up first; a black sibling with two black children is
    turned red and the deficit moves up; otherwise one or two rotations end it.
    """
    while (node is None or not node.rb_red) and node is not root.rb_node:
        assert parent is not None
        if parent.rb_left is node:
            other = parent.rb_right
            assert other is not None  # the sibling of a short path always exists
            if other.rb_red:
                other.rb_red = False
                parent.rb_red = True
                _rotate_left(parent, root)
                other = parent.rb_right
                assert other is not None
            near = other.rb_left
            far = other.rb_right
            if (near is None or not near.rb_red) and (far is None or not far.rb_red):
                other.rb_red = True
                node = parent
                parent = node.rb_parent
            else:
                if far is None or not far.rb_red:
                    assert near is not None
                    near.rb_red = False
                    other.rb_red = True
                    _rotate_right(other, root)
                    other = parent.rb_right
                    assert other is not None
                    far = other.rb_right
                other.rb_red = parent.rb_red
                parent.rb_red = False
                assert far is not None
                far.rb_red = False
                _rotate_left(parent, root)
                node = root.rb_node
                break
        else:
            other = parent.rb_left
            assert other is not None
            if other.rb_red:
                other.rb_red = False
                parent.rb_red = True
                _rotate_right(parent, root)
                other = parent.rb_left
                assert other is not None
            near = other.rb_right
            far = other.rb_left
            if (near is None or not near.rb_red) and (far is None or not far.rb_red):
                other.rb_red = True
                node = parent
                parent = node.rb_parent
            else:
                if far is None or not far.rb_red:
                    assert near is not None
                    near.rb_red = False
                    other.rb_red = True
                    _rotate_left(other, root)
                    other = parent.rb_left
                    assert other is not None
                    far = other.rb_left
                other.rb_red = parent.rb_red
                parent.rb_red = False
                assert far is not None
                far.rb_red = False
                _rotate_right(parent, root)
                node = root.rb_node
                break
    if node is not None:
        node.rb_red = False


def rb_erase(node: RbNode, root: RbRoot) -> None:
    """Unlink ``node`` from the tree and rebalance (models ``rb_erase``, v2.6.33).

    A node with at most one child is spliced out.  A node with two children is
    replaced by its in-order successor (leftmost node of its right subtree),
    which takes over the erased node's parent, children and colour; the
    successor's own old position is what gets spliced.  If the spliced-out
    position lost a black node, :func:`_rb_erase_color` repairs it.

    Afterwards ``node``'s three links are ``None`` (its colour is left alone).
    """
    left = node.rb_left
    right = node.rb_right
    if left is None:
        child = right
    elif right is None:
        child = left
    else:
        succ = right
        nxt = succ.rb_left
        while nxt is not None:
            succ = nxt
            nxt = succ.rb_left

        above = node.rb_parent
        if above is None:
            root.rb_node = succ
        elif above.rb_left is node:
            above.rb_left = succ
        else:
            above.rb_right = succ

        child = succ.rb_right
        parent = succ.rb_parent
        lost_black = not succ.rb_red
        assert parent is not None
        if parent is node:
            parent = succ
        else:
            if child is not None:
                child.rb_parent = parent
            parent.rb_left = child
            succ.rb_right = right
            right.rb_parent = succ

        succ.rb_parent = above
        succ.rb_red = node.rb_red
        succ.rb_left = left
        left.rb_parent = succ

        node.rb_parent = None
        node.rb_left = None
        node.rb_right = None
        if lost_black:
            _rb_erase_color(child, parent, root)
        return

    parent = node.rb_parent
    lost_black = not node.rb_red
    if child is not None:
        child.rb_parent = parent
    if parent is None:
        root.rb_node = child
    elif parent.rb_left is node:
        parent.rb_left = child
    else:
        parent.rb_right = child

    node.rb_parent = None
    node.rb_left = None
    node.rb_right = None
    if lost_black:
        _rb_erase_color(child, parent, root)


# ---------------------------------------------------------------------------
# Traversal and replacement
# ---------------------------------------------------------------------------


def rb_first(root: RbRoot) -> RbNode | None:
    """Return the leftmost (smallest) node, or ``None`` if empty (models ``rb_first``)."""
    n = root.rb_node
    if n is None:
        return None
    nxt = n.rb_left
    while nxt is not None:
        n = nxt
        nxt = n.rb_left
    return n


def rb_last(root: RbRoot) -> RbNode | None:
    """Return the rightmost (largest) node, or ``None`` if empty (models ``rb_last``)."""
    n = root.rb_node
    if n is None:
        return None
    nxt = n.rb_right
    while nxt is not None:
        n = nxt
        nxt = n.rb_right
    return n


def rb_next(node: RbNode) -> RbNode | None:
    """Return the in-order successor of ``node``, or ``None`` (models ``rb_next``).

    A detached node (no links) has no successor.
    """
    n = node.rb_right
    if n is not None:
        nxt = n.rb_left
        while nxt is not None:
            n = nxt
            nxt = n.rb_left
        return n
    parent = node.rb_parent
    while parent is not None and parent.rb_right is node:
        node = parent
        parent = node.rb_parent
    return parent


def rb_prev(node: RbNode) -> RbNode | None:
    """Return the in-order predecessor of ``node``, or ``None`` (models ``rb_prev``).

    A detached node (no links) has no predecessor.
    """
    n = node.rb_left
    if n is not None:
        nxt = n.rb_right
        while nxt is not None:
            n = nxt
            nxt = n.rb_right
        return n
    parent = node.rb_parent
    while parent is not None and parent.rb_left is node:
        node = parent
        parent = node.rb_parent
    return parent


def rb_replace_node(victim: RbNode, new: RbNode, root: RbRoot) -> None:
    """Put ``new`` exactly where ``victim`` is, without rebalancing (models ``rb_replace_node``).

    ``new`` takes ``victim``'s parent, children and colour; the caller must make
    sure ``new`` sorts into the same place.  Unlike the kernel, ``victim``'s
    links are then cleared so it reads as detached (see the module docstring).
    """
    if new is victim:
        return
    parent = victim.rb_parent
    left = victim.rb_left
    right = victim.rb_right
    if parent is None:
        root.rb_node = new
    elif parent.rb_left is victim:
        parent.rb_left = new
    else:
        parent.rb_right = new
    if left is not None:
        left.rb_parent = new
    if right is not None:
        right.rb_parent = new
    new.rb_parent = parent
    new.rb_left = left
    new.rb_right = right
    new.rb_red = victim.rb_red
    victim.rb_parent = None
    victim.rb_left = None
    victim.rb_right = None


def rb_clear_node(node: RbNode) -> None:
    """Mark ``node`` as detached by clearing its links (plays the role of ``RB_CLEAR_NODE``)."""
    node.rb_parent = None
    node.rb_left = None
    node.rb_right = None


def rb_empty_node(node: RbNode, root: RbRoot) -> bool:
    """Tell whether ``node`` is detached from ``root`` (plays the role of ``RB_EMPTY_NODE``).

    True when ``node`` has no parent and is not the root.  Only meaningful for
    nodes that are linked into ``root`` or were detached by this module (see
    the module docstring).
    """
    return node.rb_parent is None and root.rb_node is not node


def rb_iter(root: RbRoot) -> Iterator[RbNode]:
    """Yield the nodes in order, smallest first (convenience loop over ``rb_first``/``rb_next``).

    The tree must not be modified while iterating.
    """
    n = rb_first(root)
    while n is not None:
        yield n
        n = rb_next(n)


# ---------------------------------------------------------------------------
# Checking (no kernel counterpart; for tests and debugging)
# ---------------------------------------------------------------------------


def _label(node: RbNode, key: Callable[[Any], Any] | None) -> str:
    if key is not None:
        try:
            return f"node key={key(node)!r}"
        except Exception:  # a corrupt node may not even have a key
            pass
    return f"{type(node).__name__} at {id(node):#x}"


def validate_rbtree(root: RbRoot, key: Callable[[Any], Any] | None = None) -> None:
    """Check every red-black invariant and raise :class:`RbTreeError` on the first failure.

    Checks: the root has no parent and is black; every child points back at
    its parent; no node is reachable twice (no cycles or sharing); no red node
    has a red child; every path from the root to a missing child passes the
    same number of black nodes.  With ``key``, also checks that keys never
    decrease in order (the caller's search order).  Has no kernel counterpart.
    Runs in O(n) without recursion, so even badly broken trees are reported.
    """
    top = root.rb_node
    if top is None:
        return
    if top.rb_parent is not None:
        raise RbTreeError(f"root {_label(top, key)} has a parent link")
    if top.rb_red:
        raise RbTreeError(f"root {_label(top, key)} is red")

    seen: set[int] = set()
    black_height: int | None = None
    stack: list[tuple[RbNode, int]] = [(top, 1)]
    while stack:
        n, blacks = stack.pop()
        if id(n) in seen:
            raise RbTreeError(f"{_label(n, key)} is reachable twice (cycle or shared node)")
        seen.add(id(n))
        for side, c in (("left", n.rb_left), ("right", n.rb_right)):
            if c is None:
                if black_height is None:
                    black_height = blacks
                elif blacks != black_height:
                    raise RbTreeError(
                        f"black height mismatch below {_label(n, key)} ({side}): "
                        f"{blacks} black nodes on this path, {black_height} on another"
                    )
                continue
            if c.rb_parent is not n:
                raise RbTreeError(
                    f"{side} child {_label(c, key)} of {_label(n, key)} "
                    "does not point back at it as parent"
                )
            if n.rb_red and c.rb_red:
                raise RbTreeError(f"red {_label(n, key)} has red {side} child {_label(c, key)}")
            stack.append((c, blacks if c.rb_red else blacks + 1))

    if key is not None:
        prev: RbNode | None = None
        for n in rb_iter(root):
            if prev is not None and key(n) < key(prev):
                raise RbTreeError(f"order broken: {_label(n, key)} follows {_label(prev, key)}")
            prev = n
