"""Tests for ksmsim.kernel.rbtree: invariants under random use, and exact kernel shapes."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList  # type: ignore[import-untyped]

from ksmsim.kernel.rbtree import (
    RbNode,
    RbRoot,
    RbTreeError,
    rb_empty_node,
    rb_erase,
    rb_first,
    rb_insert_color,
    rb_iter,
    rb_last,
    rb_link_node,
    rb_next,
    rb_prev,
    rb_replace_node,
    validate_rbtree,
)


class KeyNode(RbNode):
    """Test payload: an integer key carried by a subclass, like KSM's rmap_item."""

    __slots__ = ("key",)

    def __init__(self, key: int) -> None:
        super().__init__()
        self.key = key


def key_of(n: RbNode) -> int:
    assert isinstance(n, KeyNode)
    return n.key


def insert(root: RbRoot, node: KeyNode) -> None:
    """Caller-side search then link + recolour, the way mm/ksm.c inserts."""
    parent: RbNode | None = None
    is_left = False
    cur = root.rb_node
    while cur is not None:
        parent = cur
        if node.key < key_of(cur):
            is_left = True
            cur = cur.rb_left
        else:  # equal keys go right; the random tests keep keys unique anyway
            is_left = False
            cur = cur.rb_right
    rb_link_node(node, parent, is_left, root)
    rb_insert_color(node, root)


def find(root: RbRoot, key: int) -> KeyNode | None:
    cur = root.rb_node
    while cur is not None:
        k = key_of(cur)
        if key == k:
            assert isinstance(cur, KeyNode)
            return cur
        cur = cur.rb_left if key < k else cur.rb_right
    return None


def keys(root: RbRoot) -> list[int]:
    return [key_of(n) for n in rb_iter(root)]


def keys_backwards(root: RbRoot) -> list[int]:
    out = []
    n = rb_last(root)
    while n is not None:
        out.append(key_of(n))
        n = rb_prev(n)
    return out


Shape = tuple[Any, ...] | None


def shape(n: RbNode | None) -> Shape:
    """Nested (key, "R"/"B", left, right) tuple for exact-shape assertions."""
    if n is None:
        return None
    return (key_of(n), "R" if n.rb_red else "B", shape(n.rb_left), shape(n.rb_right))


def mirror(s: Shape, size: int) -> Shape:
    """The mirror image of a shape, relabelling key k as size + 1 - k."""
    if s is None:
        return None
    k, colour, left, right = s
    return (size + 1 - k, colour, mirror(right, size), mirror(left, size))


def build(seq: list[int]) -> tuple[RbRoot, dict[int, KeyNode]]:
    root = RbRoot()
    nodes: dict[int, KeyNode] = {}
    for k in seq:
        nodes[k] = KeyNode(k)
        insert(root, nodes[k])
        validate_rbtree(root, key_of)
    return root, nodes


def erase(root: RbRoot, nodes: dict[int, KeyNode], k: int) -> None:
    rb_erase(nodes.pop(k), root)
    validate_rbtree(root, key_of)


def T(k: int, c: str, left: Shape = None, right: Shape = None) -> Shape:
    return (k, c, left, right)


# ---------------------------------------------------------------------------
# (b) exact shapes, derived by hand from the 2.6.33 fix-up rules
# ---------------------------------------------------------------------------

# Inserting 1..7 ascending.  Derivation (uncle = sibling of parent):
#   1: root, black.            2: right of 1, parent black, done.
#   3: parent 2 red, uncle none, outer grandchild -> rotate left at 1: 2B(1R,3R).
#   4: uncle 1 red -> recolour 1B 3B 2R, 2 is root -> black again.
#   5: parent 4 red, uncle none -> rotate left at 3: 4B(3R,5R) under 2.
#   6: uncle 3 red -> recolour 3B 5B 4R; 4's parent 2 is black, stop.
#   7: parent 6 red, uncle none -> rotate left at 5: 6B(5R,7R) under 4.
ASC_7 = T(2, "B", T(1, "B"), T(4, "R", T(3, "B"), T(6, "B", T(5, "R"), T(7, "R"))))

# 1..8: 8 under 7: uncle 5 red -> 5B 7B 6R; now 6 red under red 4 whose
# uncle 1 is black and 6 is an outer grandchild -> 4B 2R, rotate left at 2.
ASC_8 = T(
    4,
    "B",
    T(2, "R", T(1, "B"), T(3, "B")),
    T(6, "R", T(5, "B"), T(7, "B", None, T(8, "R"))),
)


def test_insert_ascending_1_to_7() -> None:
    root, _ = build([1, 2, 3, 4, 5, 6, 7])
    assert shape(root.rb_node) == ASC_7


def test_insert_ascending_1_to_8() -> None:
    root, _ = build(list(range(1, 9)))
    assert shape(root.rb_node) == ASC_8


def test_insert_descending_is_mirror_image() -> None:
    root, _ = build([7, 6, 5, 4, 3, 2, 1])
    assert shape(root.rb_node) == mirror(ASC_7, 7)
    assert shape(root.rb_node) == T(
        6, "B", T(4, "R", T(2, "B", T(1, "R"), T(3, "R")), T(5, "B")), T(7, "B")
    )


def test_insert_inner_grandchild_double_rotation() -> None:
    # 2 goes right of 1 (left of 3): rotate left at 1, then right at 3.
    root, _ = build([3, 1, 2])
    assert shape(root.rb_node) == T(2, "B", T(1, "R"), T(3, "R"))
    root, _ = build([1, 3, 2])
    assert shape(root.rb_node) == T(2, "B", T(1, "R"), T(3, "R"))


def test_erase_two_children_successor_deeper() -> None:
    # Erase 4 (red, children 3 and 6) from ASC_7.  Its successor is 5, the
    # leftmost of 6's subtree: 5 leaves 6 and takes 4's place and red colour.
    # 5 was red, so no fix-up.  A predecessor-based erase would put 3 there.
    root, nodes = build(list(range(1, 8)))
    erase(root, nodes, 4)
    assert shape(root.rb_node) == T(
        2, "B", T(1, "B"), T(5, "R", T(3, "B"), T(6, "B", None, T(7, "R")))
    )


def test_erase_two_children_successor_is_right_child() -> None:
    # Erase 6 (children 5R, 7R) from ASC_7: successor 7 is 6's right child
    # and moves straight up, taking 6's black colour, keeping 5 on its left.
    # (Predecessor-based: 5B(-, 7R).)
    root, nodes = build(list(range(1, 8)))
    erase(root, nodes, 6)
    assert shape(root.rb_node) == T(2, "B", T(1, "B"), T(4, "R", T(3, "B"), T(7, "B", T(5, "R"))))


def test_erase_root_black_successor_needs_fixup() -> None:
    # Erase root 2 from ASC_7: successor 3 (black leaf) becomes the black root.
    # 3's old slot (left of 4) loses a black: sibling 6B has a red far child
    # 7 -> 6 takes 4's red, 4 and 7 go black, rotate left at 4.
    # (Predecessor-based would give root 1 instead.)
    root, nodes = build(list(range(1, 8)))
    erase(root, nodes, 2)
    assert shape(root.rb_node) == T(
        3, "B", T(1, "B"), T(6, "R", T(4, "B", None, T(5, "R")), T(7, "B"))
    )


def test_erase_root_of_eight() -> None:
    # Erase 4 from ASC_8: successor 5 (black leaf under 6R) becomes the black
    # root; 6's left loses a black; sibling 7B has only a red far child 8 ->
    # 7 takes 6's red, 6 and 8 black, rotate left at 6.
    root, nodes = build(list(range(1, 9)))
    erase(root, nodes, 4)
    assert shape(root.rb_node) == T(
        5, "B", T(2, "R", T(1, "B"), T(3, "B")), T(7, "R", T(6, "B"), T(8, "B"))
    )


def test_erase_successor_with_red_child() -> None:
    # Erase 6 (red, children 5B and 7B->8R) from ASC_8: successor 7 is the
    # right child; it takes 6's red; its black is lost but its red child 8
    # steps into the gap and is simply painted black.
    root, nodes = build(list(range(1, 9)))
    erase(root, nodes, 6)
    assert shape(root.rb_node) == T(
        4, "B", T(2, "R", T(1, "B"), T(3, "B")), T(7, "R", T(5, "B"), T(8, "B"))
    )


LEAF_ERASE_CASES = [
    # Erase 1 from ASC_7: black leaf; sibling 4 red -> 4B 2R, rotate left at 2;
    # new sibling 3 has black children -> 3 red, the deficit moves to red 2,
    # which is painted black.
    ([1], T(4, "B", T(2, "B", None, T(3, "R")), T(6, "B", T(5, "R"), T(7, "R")))),
    # Erase 7 (red leaf, no fix-up), then 3 (black leaf under 4R): sibling 6B
    # has only a red near child 5 -> 5B 6R, rotate right at 6; then 5 takes
    # 4's red, 4 and 6 go black, rotate left at 4.
    ([7, 3], T(2, "B", T(1, "B"), T(5, "R", T(4, "B"), T(6, "B")))),
]


@pytest.mark.parametrize(("erased", "expected"), LEAF_ERASE_CASES)
def test_erase_leaves(erased: list[int], expected: Shape) -> None:
    root, nodes = build(list(range(1, 8)))
    for k in erased:
        erase(root, nodes, k)
    assert shape(root.rb_node) == expected


@pytest.mark.parametrize(("erased", "expected"), LEAF_ERASE_CASES)
def test_erase_leaves_mirrored(erased: list[int], expected: Shape) -> None:
    # Leaf erasure has no left/right bias, so mirrored input gives mirrored output;
    # this drives the other half of every fix-up case.
    root, nodes = build(list(range(7, 0, -1)))
    for k in erased:
        erase(root, nodes, 8 - k)
    assert shape(root.rb_node) == mirror(expected, 7)


def test_erase_everything_to_empty() -> None:
    root, nodes = build([5, 3, 8, 1, 4, 7, 9, 2, 6])
    for k in [5, 1, 9, 3, 7, 2, 8, 4, 6]:
        erase(root, nodes, k)
    assert root.rb_node is None
    assert root.is_empty()


# ---------------------------------------------------------------------------
# (a) random operation sequences against a sorted oracle
# ---------------------------------------------------------------------------


def run_ops(ops: list[tuple[bool, int]]) -> None:
    root = RbRoot()
    oracle: SortedList[int] = SortedList()
    nodes: dict[int, KeyNode] = {}
    for is_insert, k in ops:
        if is_insert:
            if k in nodes:
                continue
            nodes[k] = KeyNode(k)
            insert(root, nodes[k])
            oracle.add(k)
        else:
            if k not in nodes:
                continue
            node = nodes.pop(k)
            rb_erase(node, root)
            oracle.remove(k)
            assert node.rb_parent is None and node.rb_left is None and node.rb_right is None
            assert rb_empty_node(node, root)
        validate_rbtree(root, key_of)
        assert keys(root) == list(oracle)
    assert keys_backwards(root) == list(reversed(oracle))
    first, last = rb_first(root), rb_last(root)
    if oracle:
        assert first is not None and last is not None
        assert key_of(first) == oracle[0] and key_of(last) == oracle[-1]
    else:
        assert first is None and last is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=150))
def test_random_ops_hypothesis(ops: list[tuple[bool, int]]) -> None:
    run_ops(ops)


@pytest.mark.parametrize("seed", range(8))
def test_random_ops_seeded(seed: int) -> None:
    rng = random.Random(seed)
    span = rng.choice([16, 200, 5000])
    ops = [(rng.random() < 0.6, rng.randrange(span)) for _ in range(1500)]
    run_ops(ops)


def test_many_inserts_then_drain() -> None:
    rng = random.Random(1234)
    ks = rng.sample(range(100_000), 3000)
    root, nodes = build(ks)
    assert keys(root) == sorted(ks)
    rng.shuffle(ks)
    for i, k in enumerate(ks):
        rb_erase(nodes.pop(k), root)
        if i % 97 == 0:
            validate_rbtree(root, key_of)
    assert root.rb_node is None


# ---------------------------------------------------------------------------
# Traversal, replacement, detached nodes, root handling
# ---------------------------------------------------------------------------


def test_next_prev_walk_and_detached() -> None:
    root, nodes = build(list(range(1, 9)))
    assert [key_of(n) for n in rb_iter(root)] == list(range(1, 9))
    n4 = nodes[4]
    nxt, prv = rb_next(n4), rb_prev(n4)
    assert nxt is not None and key_of(nxt) == 5
    assert prv is not None and key_of(prv) == 3
    assert rb_next(nodes[8]) is None and rb_prev(nodes[1]) is None
    loose = KeyNode(99)
    assert rb_next(loose) is None and rb_prev(loose) is None
    assert rb_empty_node(loose, root)
    assert not rb_empty_node(nodes[4], root)  # the root is linked
    assert not rb_empty_node(nodes[1], root)


def test_lone_root_is_not_empty_node() -> None:
    root, nodes = build([1])
    assert not rb_empty_node(nodes[1], root)
    rb_erase(nodes[1], root)
    assert rb_empty_node(nodes[1], root)
    assert root.is_empty()


def test_replace_node_keeps_shape_and_colour() -> None:
    root, nodes = build(list(range(1, 8)))
    before = shape(root.rb_node)
    for k in (4, 2, 7):  # inner red, the root, a red leaf
        new = KeyNode(k)
        old = nodes[k]
        rb_replace_node(old, new, root)
        nodes[k] = new
        validate_rbtree(root, key_of)
        assert shape(root.rb_node) == before
        assert find(root, k) is new
        assert rb_empty_node(old, root)
    rb_replace_node(nodes[3], nodes[3], root)  # no-op
    assert shape(root.rb_node) == before


def test_clear_root_is_o1_reset() -> None:
    root, _ = build(list(range(50)))
    root.clear()
    assert root.rb_node is None and rb_first(root) is None
    validate_rbtree(root)
    # a reset tree is reusable with fresh nodes
    insert(root, KeyNode(3))
    validate_rbtree(root, key_of)
    assert keys(root) == [3]


def test_fresh_node_defaults() -> None:
    n = KeyNode(1)
    assert (n.rb_parent, n.rb_left, n.rb_right, n.rb_red) == (None, None, None, False)
    root = RbRoot()
    rb_link_node(n, None, True, root)
    assert n.rb_red and root.rb_node is n
    rb_insert_color(n, root)
    assert not n.rb_red


# ---------------------------------------------------------------------------
# validate_rbtree catches each kind of damage
# ---------------------------------------------------------------------------


def test_validate_red_root() -> None:
    root, nodes = build([2, 1, 3])
    nodes[2].rb_red = True
    with pytest.raises(RbTreeError, match=r"root .* is red"):
        validate_rbtree(root, key_of)


def test_validate_red_red() -> None:
    root, nodes = build(list(range(1, 8)))
    nodes[6].rb_red = True  # 4R -> 6R
    with pytest.raises(RbTreeError, match="red"):
        validate_rbtree(root, key_of)


def test_validate_black_height() -> None:
    root, nodes = build(list(range(1, 8)))
    nodes[7].rb_red = False
    with pytest.raises(RbTreeError, match="black height"):
        validate_rbtree(root, key_of)


def test_validate_parent_link() -> None:
    root, nodes = build(list(range(1, 8)))
    nodes[5].rb_parent = nodes[4]
    with pytest.raises(RbTreeError, match="point back"):
        validate_rbtree(root, key_of)


def test_validate_root_parent() -> None:
    root, nodes = build([1, 2])
    nodes[1].rb_parent = nodes[2]
    with pytest.raises(RbTreeError, match="parent link"):
        validate_rbtree(root)


def test_validate_cycle() -> None:
    root, nodes = build([2, 1, 3])
    nodes[2].rb_right = nodes[1]  # 1 is now both children of 2
    with pytest.raises(RbTreeError, match="reachable twice"):
        validate_rbtree(root)


def test_validate_order() -> None:
    root, nodes = build([2, 1, 3])
    nodes[1].key = 10
    validate_rbtree(root)  # structure alone is fine
    with pytest.raises(RbTreeError, match="order"):
        validate_rbtree(root, key_of)


def test_validate_error_is_assertion_error() -> None:
    assert issubclass(RbTreeError, AssertionError)
