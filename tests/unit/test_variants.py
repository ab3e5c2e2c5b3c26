"""Variant assignment: stable per (test, contact), weighted, validated."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from uuid import UUID, uuid5

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hogsend.core.variants import assign_variant, check_variants, variant_point

NS = UUID("6f1e5a52-3f4c-4a61-9d0a-8a1a7b7c0d11")


def contacts(n: int) -> list[str]:
    return [str(uuid5(NS, str(i))) for i in range(n)]


def test_same_contact_same_variant_every_time() -> None:
    for contact in contacts(50):
        first = assign_variant("subject-line", contact, ["a", "b", "c"])
        assert all(
            assign_variant("subject-line", contact, ["a", "b", "c"]) == first for _ in range(5)
        )


def test_stable_across_processes_and_hash_seeds() -> None:
    # Python's hash() is salted per process; the assignment must not be.
    probe = (
        "import json\n"
        "from hogsend.core.variants import assign_variant\n"
        f"ids = {contacts(40)!r}\n"
        "print(json.dumps([assign_variant('t', i, ['a', 'b']) for i in ids]))\n"
    )
    runs = set()
    for seed in ("1", "2", "random"):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        runs.add(out.stdout)
    assert len(runs) == 1
    assert json.loads(runs.pop()) == [assign_variant("t", i, ["a", "b"]) for i in contacts(40)]


def test_the_hash_is_pinned() -> None:
    # A release must not reshuffle running tests: the point is the first 8 bytes of
    # SHA-256("<test id>:<contact id>") over 2**64, written out here as the contract.
    digest = hashlib.sha256(b"t:c").digest()
    assert variant_point("t", "c") == int.from_bytes(digest[:8], "big") / 2**64
    assert variant_point("t", "d") != variant_point("u", "c")


def test_tests_split_contacts_independently() -> None:
    ids = contacts(4000)
    first = [assign_variant("one", i, ["a", "b"]) for i in ids]
    second = [assign_variant("two", i, ["a", "b"]) for i in ids]
    both_a = sum(1 for x, y in zip(first, second, strict=True) if x == y == "a")
    # Independent halves overlap on about a quarter of the contacts.
    assert 0.22 < both_a / len(ids) < 0.28


def test_zero_weight_is_never_drawn() -> None:
    picked = {assign_variant("t", i, ["a", "b", "c"], [1, 0, 1]) for i in contacts(2000)}
    assert picked == {"a", "c"}


@pytest.mark.parametrize(
    ("variants", "weights", "message"),
    [
        ([], None, "non-empty"),
        ("ab", None, "non-empty list"),
        (["a", ""], None, "non-empty strings"),
        (["a", "a"], None, "unique"),
        (["a", "b"], [1], "one weight per variant"),
        (["a", "b"], [1, -1], "not negative"),
        (["a", "b"], [1, float("nan")], "finite"),
        (["a", "b"], [0, 0], "positive"),
        (["a", "b"], [1, "2"], "numbers"),
        (["a", "b"], [True, 1], "numbers"),
    ],
)
def test_bad_variants_and_weights(variants: object, weights: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_variants(variants, weights)  # type: ignore[arg-type]


def test_empty_test_id() -> None:
    with pytest.raises(ValueError, match="test id"):
        assign_variant(" ", "c", ["a"])


@settings(max_examples=25, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=10), min_size=2, max_size=4),
    test_id=st.text(min_size=1, max_size=12).filter(lambda s: s.strip() != ""),
)
def test_distribution_follows_the_weights(weights: list[int], test_id: str) -> None:
    names = [f"v{i}" for i in range(len(weights))]
    n = 4000
    counts = Counter(assign_variant(test_id, c, names, weights) for c in contacts(n))
    total = sum(weights)
    for name, weight in zip(names, weights, strict=True):
        # 4000 draws: the standard error of a share is at most ~0.8 percentage points.
        assert abs(counts[name] / n - weight / total) < 0.035, (name, counts, weights)
