"""The C helpers of ksmsim._speedups against their pure-Python twins.

* ``PageText`` against the bytes it stands for: every comparison (with bytes and with other
  PageTexts, both ways round), hash, len, indexing, slicing, bytes(), the buffer protocol
  (memoryview, hashlib, xxhash, jhash2) and pickling.
* ``unstable_skip`` and ``stable_skip`` against ``unstable_skip_py`` and ``stable_skip_py`` on
  random trees with every stopping condition (no recorded page, freed pages, chains, stale
  keyhole, zero count, pinned nodes, equal contents), for contents held as bytes and as
  PageTexts.
* ``PageBase`` against ``PageFields``: the same attributes and defaults; and whole scenarios
  run in a subprocess on the pure-Python base (``KSMSIM_SHORTCUTS=-c_helpers``) dump the very
  same machine state as with the C base here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import xxhash

from ksmsim.kernel import ksm_shortcuts as ks
from ksmsim.kernel.jhash import jhash2_py
from ksmsim.kernel.ksm import RmapItem, StableNode
from ksmsim.kernel.page import Page, PageFields
from ksmsim.kernel.rbtree import RbRoot, rb_insert_color, rb_link_node

ks._setup_c()
needs_c = pytest.mark.skipif(not ks.HAVE_C_HELPERS, reason="ksmsim._speedups not built")
ROOT = Path(__file__).resolve().parents[2]


def random_text(rng: random.Random, size: int = 64) -> tuple[bytes, int]:
    """Return a (head, filler) pair, often with the filler repeated at the head's end."""
    filler = rng.choice((0x5A, 0xA5, 0, 255, rng.randrange(256)))
    n = rng.choice((0, 1, 2, 5, 17, size - 1, size, rng.randrange(size + 1)))
    alphabet = (filler, (filler + 1) % 256, (filler - 1) % 256, ord("U"), ord("|"))
    head = bytes(rng.choice(alphabet) for _ in range(min(n, size)))
    return head, filler


@needs_c
def test_pagetext_behaves_as_its_bytes() -> None:
    P = ks.PageText
    rng = random.Random(8)
    ops = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__")
    for _ in range(3000):
        size = rng.choice((1, 7, 64))
        h1, f1 = random_text(rng, size)
        h2, f2 = random_text(rng, rng.choice((size, size, size + 1, max(1, size - 1))))
        s2 = max(len(h2), rng.choice((size, size + 1, max(1, size - 1))))
        a, b = P(h1, f1, size), P(h2, f2, s2)
        ab, bb = bytes(a), bytes(b)
        assert ab == h1 + bytes([f1]) * (size - len(h1))
        assert len(a) == size and hash(a) == hash(ab)
        for x, y, xb, yb in ((a, b, ab, bb), (a, bb, ab, bb), (ab, b, ab, bb)):
            for op in ops:
                want = getattr(xb, op)(yb)
                got = {
                    "__eq__": x == y,
                    "__ne__": x != y,
                    "__lt__": x < y,
                    "__le__": x <= y,
                    "__gt__": x > y,
                    "__ge__": x >= y,
                }[op]
                assert got == want, (x, y, op)
        i = rng.randrange(-size, size)
        assert a[i] == ab[i]
        j, k = rng.randrange(-size - 2, size + 2), rng.randrange(-size - 2, size + 2)
        step = rng.choice((1, 1, 2, 3, -1, -2))
        assert a[j:k:step] == ab[j:k:step]
        assert a[j:] == ab[j:] and a[:k] == ab[:k]
        assert bytes(memoryview(a)) == ab
        assert pickle.loads(pickle.dumps(a)) == a
    page = P(b"U||p|r|1|", 0x5A)
    data = bytes(page)
    assert xxhash.xxh64_intdigest(page) == xxhash.xxh64_intdigest(data)
    assert jhash2_py(page, 17) == jhash2_py(data, 17)
    assert hashlib.sha256(page).digest() == hashlib.sha256(data).digest()
    with pytest.raises(IndexError):
        page[4096]
    with pytest.raises(ValueError):
        P(b"xx", 1, 1)
    with pytest.raises(ValueError):
        P(b"", 256)
    assert page.startswith(b"U||p|r|1|Z") and page.hex() == data.hex()
    assert page.count(b"Z") == data.count(b"Z") and page.find(b"|1|") == data.find(b"|1|")
    with pytest.raises(AttributeError):
        page.no_such_method  # noqa: B018
    assert (page == "text") is False
    with pytest.raises(TypeError):
        page < "text"  # noqa: B015


# -- the tree walks ------------------------------------------------------------------------------
def _contents(rng: random.Random, n: int, lazy: bool) -> list[Any]:
    heads = sorted({b"U|%d|" % rng.randrange(10 * n) for _ in range(n)})
    if lazy and ks.PageText is not None:
        return [ks.PageText(h, 0x5A, 64) for h in heads]
    return [h + b"Z" * (64 - len(h)) for h in heads]


def _insert(root: RbRoot, node: Any, key: Any) -> None:
    parent = None
    left = False
    cur = root.rb_node
    while cur is not None:
        parent = cur
        left = key < cur.key
        cur = cur.rb_left if left else cur.rb_right
    node.key = key
    rb_link_node(node, parent, left, root)
    rb_insert_color(node, root)


class _Item(RmapItem):
    __slots__ = ("key",)


class _Stable(StableNode):
    __slots__ = ("key",)


def _build_stable(rng: random.Random, contents: list[Any]) -> RbRoot:
    root = RbRoot()
    order = list(range(len(contents)))
    rng.shuffle(order)
    for k in order:
        page = Page(k + 1)
        page.data = contents[k]
        node = _Stable(page)
        r = rng.random()
        page.mapping = node if r > 0.05 else None
        page.mapping_flags = 3 if r > 0.08 else 1
        page.count = 0 if r < 0.1 else 2
        if rng.random() < 0.05:
            node.rmap_hlist_len = ks.STABLE_NODE_CHAIN
        _insert(root, node, contents[k])
    return root


def _unstable_tree(rng: random.Random, contents: list[Any]) -> RbRoot:
    root = RbRoot()
    order = list(range(len(contents)))
    rng.shuffle(order)
    for k in order:
        item = _Item(None, k << 12)  # type: ignore[arg-type]
        page = Page(k + 1)
        page.data = contents[k]
        item.tree_page = page if rng.random() > 0.05 else None
        if rng.random() < 0.03:
            page.data = None
        _insert(root, item, contents[k])
    return root


@needs_c
@pytest.mark.parametrize("lazy", [False, True])
def test_unstable_skip_c_equals_py(lazy: bool) -> None:
    rng = random.Random(1 if lazy else 2)
    assert ks.unstable_skip_c is not None
    for _ in range(60):
        contents = _contents(rng, rng.choice((1, 5, 60, 300)), lazy)
        root = _unstable_tree(rng, contents)
        probes = [*rng.sample(contents, min(10, len(contents)))]
        probes += [b"U|%d|" % rng.randrange(3000) + b"Z" * 58 for _ in range(10)]
        for data in probes:
            data = data[:64] if isinstance(data, bytes) else data
            got = ks.unstable_skip_c(root.rb_node, data)
            want = ks.unstable_skip_py(root.rb_node, data)
            assert got[0] is want[0] and got[1] is want[1] and got[2:] == want[2:]


@needs_c
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("pinned", [False, True])
def test_stable_skip_c_equals_py(lazy: bool, pinned: bool) -> None:
    rng = random.Random(3 + lazy + 2 * pinned)
    assert ks.stable_skip_c is not None
    for _ in range(60):
        contents = _contents(rng, rng.choice((1, 5, 60, 300)), lazy)
        root = _build_stable(rng, contents)
        probes = [*rng.sample(contents, min(10, len(contents)))]
        probes += [b"U|%d|" % rng.randrange(3000) + b"Z" * 58 for _ in range(10)]
        for data in probes:
            got = ks.stable_skip_c(root.rb_node, data, pinned)
            want = ks.stable_skip_py(root.rb_node, data, pinned)
            assert got[0] is want[0] and got[1] is want[1] and got[2:] == want[2:]


@needs_c
@pytest.mark.parametrize("pinned", [False, True])
def test_dup_skip_c_equals_py(pinned: bool) -> None:
    rng = random.Random(11 + pinned)
    assert ks.dup_skip_c is not None
    for _ in range(2000):
        dups = []
        for k in range(rng.choice((1, 2, 5, 40))):
            page = Page(k + 1) if rng.random() > 0.03 else None
            node = StableNode(page)
            if page is not None:
                r = rng.random()
                page.mapping = node if r > 0.05 else None
                page.mapping_flags = 3 if r > 0.08 else 1
                page.count = 0 if r < 0.1 else 2
            node.rmap_hlist_len = rng.choice((0, 1, 3, 4, 5, 255, 256))
            dups.append(node)
        for a, b in itertools.pairwise(dups):
            a.dup_next = b
        start = rng.choice(dups)
        found = rng.choice([None, *dups])
        found_len = rng.randrange(6)
        max_sharing = rng.choice((2, 4, 256))
        prune = rng.random() < 0.5
        got = ks.dup_skip_c(start, found, found_len, max_sharing, prune, pinned)
        want = ks.dup_skip_py(start, found, found_len, max_sharing, prune, pinned)
        assert got[0] is want[0] and got[1] is want[1] and got[2:] == want[2:]


@needs_c
def test_skips_refuse_foreign_nodes() -> None:
    assert ks.unstable_skip_c is not None and ks.stable_skip_c is not None
    with pytest.raises(TypeError):
        ks.unstable_skip_c(_Stable(None), b"x")
    with pytest.raises(TypeError):
        ks.stable_skip_c(_Item(None, 0), b"x", False)  # type: ignore[arg-type]


def _shape(node: Any) -> Any:
    if node is None:
        return None
    assert node.rb_left is None or node.rb_left.rb_parent is node
    assert node.rb_right is None or node.rb_right.rb_parent is node
    return (node.key, node.rb_red, _shape(node.rb_left), _shape(node.rb_right))


@needs_c
def test_rb_insert_color_c_equals_py() -> None:
    """The same inserts (and erases in between) give the same shapes and colours."""
    from ksmsim.kernel.rbtree import rb_erase
    from ksmsim.kernel.rbtree import rb_insert_color as py_insert

    assert ks.rb_insert_color_c is not None
    rng = random.Random(5)
    for _ in range(200):
        roots = (RbRoot(), RbRoot())
        nodes: tuple[dict[int, Any], dict[int, Any]] = ({}, {})
        for _ in range(rng.choice((1, 10, 100, 400))):
            key = rng.randrange(1000)
            if key in nodes[0]:
                for root, live in zip(roots, nodes, strict=True):
                    rb_erase(live.pop(key), root)
                continue
            for root, live, insert in zip(
                roots, nodes, (ks.rb_insert_color_c, py_insert), strict=True
            ):
                node = _Item(None, 0)  # type: ignore[arg-type]
                node.key = key
                parent, left, cur = None, False, root.rb_node
                while cur is not None:
                    parent, left = cur, key < cur.key
                    cur = cur.rb_left if left else cur.rb_right
                rb_link_node(node, parent, left, root)
                insert(node, root)
                live[key] = node
            assert _shape(roots[0].rb_node) == _shape(roots[1].rb_node)


# -- the frame base ------------------------------------------------------------------------------
FIELDS = (
    "count",
    "csum",
    "csum_of",
    "data",
    "flags",
    "index",
    "mapcount",
    "mapping",
    "mapping_flags",
    "pfn",
    "private",
)


def test_page_bases_have_the_same_fields() -> None:
    c = Page(77)
    py = PageFields(77)
    for name in FIELDS:
        assert getattr(c, name) == getattr(py, name), name
    for name, value in (
        ("count", 5),
        ("flags", 1 << 9),
        ("index", 1 << 40),
        ("private", 9),
        ("csum", 0xFFFFFFFF),
        ("mapping", object()),
        ("data", b"x"),
        ("mapcount", 2),
        ("mapping_flags", 3),
        ("csum_of", b"x"),
    ):
        setattr(c, name, value)
        setattr(py, name, value)
        assert getattr(c, name) == getattr(py, name), name
    c.count -= 6
    py.count -= 6
    assert c.count == py.count == -1


TWIN_SCENARIOS = [
    *sorted((ROOT / "tests" / "scenarios").glob("*.toml"))[:8],
    ROOT / "examples" / "swap_pressure.toml",
]


@needs_c
def test_pure_python_frames_give_the_same_state() -> None:
    """Scenarios on the C frame base here and on the pure-Python base in a subprocess."""
    from .twin_run import state_digest

    env = dict(os.environ, KSMSIM_SHORTCUTS="-c_helpers", PYTHONPATH=str(ROOT))
    paths = [str(p) for p in TWIN_SCENARIOS]
    out = subprocess.run(
        [sys.executable, "-m", "tests.perf.twin_run", *paths],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    theirs = json.loads(out.stdout)
    assert theirs["page_base"] == "PageFields"
    mine = {p: state_digest(Path(p)) for p in paths}
    assert Page.__mro__[1].__name__ == "PageBase"
    assert theirs["digests"] == mine


def _stable_find_py(
    node: Any, data: Any, pinned: bool, chains: bool, max_sharing: int, floor: int
) -> tuple[Any, Any, int]:
    """stable_find's twin: stable_skip_py() and the tests stable_tree_search() makes after it
    (a regular node's page, or a chain's first dup's, taken at once)."""
    node, _, _, n = ks.stable_skip_py(node, data, pinned)
    if node is None:
        return None, None, n
    if node.rmap_hlist_len != ks.STABLE_NODE_CHAIN:
        owner, page = node, node.page
        if chains and not 0 < node.rmap_hlist_len < max_sharing:
            return None, node, n
    elif chains:
        owner = node.dups
        if owner is None or owner.dup_next is None:
            return None, node, n
        if not 0 < owner.rmap_hlist_len < max_sharing or not node.chain_prune_time > floor:
            return None, node, n
        page = owner.page
    else:
        return None, node, n
    if (
        page is not None
        and page.mapping is owner
        and page.mapping_flags == ks.KSM_MAPPING_FLAGS
        and (pinned or page.count)
        and not page.flags & 1
        and page.data == data
    ):
        page.count += 1
        return page, None, n + 1
    return None, node, n


@needs_c
@pytest.mark.parametrize("pinned", [False, True])
@pytest.mark.parametrize("chains", [False, True])
def test_stable_find_c_equals_py(pinned: bool, chains: bool) -> None:
    rng = random.Random(20 + pinned + 2 * chains)
    assert ks.stable_find_c is not None
    hits = [0, 0]
    for _ in range(40):
        contents = _contents(rng, rng.choice((1, 5, 60)), rng.random() < 0.5)
        tree_seed = rng.random()
        trees = [(_build_stable(random.Random(tree_seed), contents), None) for _twin in range(2)]
        # Identical trees (same seed); give their chains the same dups.
        seed = rng.random()
        for root, _r in trees:
            dr = random.Random(seed)
            stack = [root.rb_node]
            while stack:
                node = stack.pop()
                if node is None:
                    continue
                stack += [node.rb_left, node.rb_right]
                node.rmap_hlist_len = dr.choice((0, 1, 2, 5, 256, 256))
                node.chain_prune_time = dr.choice((0, 10, 20))
                node.page.flags = 1 if dr.random() < 0.1 else 0
                if dr.random() < 0.3:
                    node.rmap_hlist_len = ks.STABLE_NODE_CHAIN
                    prev = None
                    for k in range(dr.choice((0, 1, 2, 3))):
                        dup = StableNode(Page(1000 + k))
                        dup.page.data = node.key if dr.random() < 0.8 else contents[0]
                        dup.page.mapping = dup if dr.random() < 0.9 else None
                        dup.page.mapping_flags = 3
                        dup.page.count = dr.choice((0, 1, 2, 2, 2))
                        dup.page.flags = 1 if dr.random() < 0.1 else 0
                        dup.rmap_hlist_len = dr.choice((0, 1, 3, 256))
                        if prev is None:
                            node.dups = dup
                        else:
                            prev.dup_next = dup
                        prev = dup
        probes = [*rng.sample(contents, min(6, len(contents))), b"U|x|" + b"Z" * 60]
        for data in probes:
            floor = rng.choice((5, 15))
            got = ks.stable_find_c(trees[0][0].rb_node, data, pinned, chains, 4, floor)
            want = _stable_find_py(trees[1][0].rb_node, data, pinned, chains, 4, floor)
            assert got[2] == want[2]
            assert (got[0] is None) == (want[0] is None)
            assert (got[1] is None) == (want[1] is None)
            if got[0] is not None:
                assert got[0].pfn == want[0].pfn and got[0].count == want[0].count
                hits[got[0].pfn >= 1000] += 1
            if got[1] is not None:
                assert got[1].key == want[1].key
    assert hits[0] > 0 and (hits[1] > 0) == chains, hits
