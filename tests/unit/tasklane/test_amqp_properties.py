"""The batch property encoder writes exactly the bytes py-amqp's own encoder writes."""

from __future__ import annotations

from typing import Any

from amqp import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from tasklane.wire.amqp_confirms import PropertyEncoder
from tasklane.wire.protocol import task_message

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
headers = st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=8)


def _amqp(properties: dict[str, Any]) -> bytes:
    return bytes(Message(b"", **properties)._serialize_properties())


def _properties(headers: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "application_headers": headers,
        "delivery_mode": 2,
        "priority": 0,
        **more,
    }


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(headers, min_size=1, max_size=4), correlation=st.text(max_size=40))
def test_any_headers_encode_as_py_amqp_encodes_them(
    batch: list[dict[str, Any]], correlation: str
) -> None:
    encoder = PropertyEncoder()  # one encoder over the batch: later messages hit its copies
    for table in batch:
        properties = _properties(table, correlation_id=correlation or None)
        assert encoder.encode(properties) == _amqp(properties)


def test_equal_values_of_different_types_keep_their_own_encoding() -> None:
    encoder = PropertyEncoder()
    for value in (1, True, 1.0, "1", None, 0, False, [1], [True], [1.0], [None, None], [0, 0]):
        properties = _properties({"x": value})
        assert encoder.encode(properties) == _amqp(properties), value


def test_a_task_message_encodes_as_py_amqp_encodes_it() -> None:
    encoder = PropertyEncoder()
    for n in range(3):
        message = task_message("notifier.email.send", f"id-{n}", {"to": ["é"], "n": n}, priority=4)
        properties = _properties(
            message.headers, priority=4, correlation_id=message.properties["correlation_id"]
        )
        assert encoder.encode(properties) == _amqp(properties)


def test_other_properties_and_untyped_values_are_left_to_py_amqp() -> None:
    encoder = PropertyEncoder()
    assert encoder.encode(_properties({}, reply_to="elsewhere")) is None
    assert encoder.encode(_properties({"x": object()})) is None
