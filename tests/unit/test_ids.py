"""Random UUIDs drawn in bulk: what uuid.uuid4() gives, never handed out twice."""

from __future__ import annotations

import os
import pickle
import uuid

from hogsend.core import ids
from hogsend.core.ids import new_uuid4


def test_ids_are_random_version_4_uuids() -> None:
    made = [new_uuid4() for _ in range(3 * ids._BATCH + 7)]  # several bulk draws
    assert len(set(made)) == len(made)
    for made_id in made:
        assert type(made_id) is uuid.UUID
        assert made_id.version == 4
        assert made_id.variant == uuid.RFC_4122
        assert made_id.is_safe is uuid.SafeUUID.unknown
        # The same UUID as one parsed from its text: equal, same hash, same bytes.
        parsed = uuid.UUID(str(made_id))
        assert parsed == made_id
        assert hash(parsed) == hash(made_id)
        assert parsed.bytes == made_id.bytes
        assert pickle.loads(pickle.dumps(made_id)) == made_id
    # 122 random bits each: every bit outside the version and variant varies.
    varying = 0
    for made_id in made[1:]:
        varying |= made_id.int ^ made[0].int
    assert varying == (1 << 128) - 1 & ~((0xF000 << 64) | (0xC000 << 48))


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    new_uuid4()  # a batch pending in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids and leave at once
        os.close(read)
        os.write(write, b"".join(new_uuid4().bytes for _ in range(4)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    child = {uuid.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)}
    parent = {new_uuid4() for _ in range(4)}
    assert len(child) == 4
    assert not child & parent
