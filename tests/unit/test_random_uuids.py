"""Batch ids: ``random_uuids`` makes valid, distinct version 4 UUIDs like ``uuid4()``."""

from __future__ import annotations

import copy
import pickle
import uuid

from hogsend.core.ids import random_uuids


def test_every_id_is_a_distinct_rfc_4122_version_4_uuid() -> None:
    ids = random_uuids(5000)
    assert len(ids) == 5000
    assert len(set(ids)) == 5000
    for value in ids:
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
        # The same value round-trips through its text form, as Postgres will read it.
        assert uuid.UUID(str(value)) == value
        assert uuid.UUID(bytes=value.bytes, version=4) == value


def test_none_asked_none_given() -> None:
    assert random_uuids(0) == []


def test_ids_behave_as_the_uuid_constructor_makes_them() -> None:
    for value in random_uuids(200):
        same = uuid.UUID(int=value.int)
        assert value == same
        assert hash(value) == hash(same)
        assert str(value) == str(same)
        assert value.is_safe is same.is_safe
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.deepcopy(value) == value
