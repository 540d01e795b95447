"""InitProducerId v2 to v4 for aiokafka, so its idempotent producer starts on every broker.

aiokafka 0.14 knows only version 0 of InitProducerId, the request an idempotent
producer sends first to get its producer id and epoch. Tansu 0.6 advertises
versions 0 to 4 but answers version 0 (and 1) with ``UNKNOWN_SERVER_ERROR``, so
``enable_idempotence=True`` failed at start, and a produce response lost on the
wire made aiokafka's retry write the batch twice. Version 4 (flexible encoding,
KIP-360's producer id and epoch fields, Kafka 2.7 and later) is what librdkafka
sends, and Tansu answers it. With these classes registered aiokafka picks the
highest version both sides know: 4 on Tansu and on any Kafka since 2.7, 0 on a
broker older than 2.4, as before.
"""

from __future__ import annotations

from typing import Any

from aiokafka.protocol import transaction
from aiokafka.protocol.api import RequestStruct, Response
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

_RESPONSE_FIELDS = (("throttle_time_ms", Int32), ("error_code", Int16), ("producer_id", Int64), ("producer_epoch", Int16))


class InitProducerIdResponse_v2(Response):
    API_KEY = 22
    API_VERSION = 2
    SCHEMA = Schema(*_RESPONSE_FIELDS, ("tags", TaggedFields))


class InitProducerIdResponse_v3(InitProducerIdResponse_v2):
    API_VERSION = 3


class InitProducerIdResponse_v4(InitProducerIdResponse_v2):
    API_VERSION = 4


class InitProducerIdRequest_v2(RequestStruct):
    API_KEY = 22
    API_VERSION = 2
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = InitProducerIdResponse_v2
    SCHEMA = Schema(("transactional_id", CompactString("utf-8")), ("transaction_timeout_ms", Int32), ("tags", TaggedFields))


class InitProducerIdRequest_v3(RequestStruct):
    API_KEY = 22
    API_VERSION = 3
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = InitProducerIdResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),  # -1 and -1: a new producer, not one recovering its epoch (KIP-360)
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequest_v4(InitProducerIdRequest_v3):
    API_VERSION = 4
    RESPONSE_TYPE = InitProducerIdResponse_v4


def _build(self: Any, struct: type[RequestStruct]) -> RequestStruct:
    version = struct.API_VERSION
    if version < 2:
        return struct(self._transactional_id, self._transaction_timeout_ms)
    if version == 2:
        return struct(self._transactional_id, self._transaction_timeout_ms, {})
    return struct(self._transactional_id, self._transaction_timeout_ms, -1, -1, {})


def install() -> None:
    """Teach aiokafka InitProducerId v2 to v4 (idempotent: a second call changes nothing)."""
    request = transaction.InitProducerIdRequest
    known = {cls.API_VERSION for cls in request._CLASSES}  # type: ignore[attr-defined]
    if 4 in known:
        return
    request._CLASSES = [  # type: ignore[attr-defined]
        *request._CLASSES,  # type: ignore[attr-defined]
        InitProducerIdRequest_v2,
        InitProducerIdRequest_v3,
        InitProducerIdRequest_v4,
    ]
    request.build = _build  # type: ignore[method-assign,assignment]
