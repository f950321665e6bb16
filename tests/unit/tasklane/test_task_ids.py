"""Task ids made from a key and an index: uuid4-shaped, distinct, and made again the same."""

from __future__ import annotations

import uuid

from tasklane.wire.protocol import new_id_key, task_id_at


def test_ids_are_version_4_uuids_in_canonical_form() -> None:
    key = new_id_key()
    for index in range(2000):
        task_id = task_id_at(key, index)
        parsed = uuid.UUID(task_id)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == task_id


def test_ids_are_distinct_within_a_key_and_across_keys() -> None:
    first, second = new_id_key(), new_id_key()
    ids = {task_id_at(key, index) for key in (first, second) for index in range(50_000)}
    assert len(ids) == 100_000


def test_an_id_is_made_again_from_its_key_and_index() -> None:
    key = new_id_key()
    assert task_id_at(key, 123_456) == task_id_at(bytes(key), 123_456)
    assert task_id_at(key, 1) != task_id_at(key, 2)
