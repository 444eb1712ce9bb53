from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Quorum(_message.Message):
    __slots__ = ("level", "count")
    class Level(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LEVEL_DEFAULT: _ClassVar[Quorum.Level]
        LEVEL_ONE: _ClassVar[Quorum.Level]
        LEVEL_QUORUM: _ClassVar[Quorum.Level]
        LEVEL_ALL: _ClassVar[Quorum.Level]
    LEVEL_DEFAULT: Quorum.Level
    LEVEL_ONE: Quorum.Level
    LEVEL_QUORUM: Quorum.Level
    LEVEL_ALL: Quorum.Level
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    level: Quorum.Level
    count: int
    def __init__(self, level: _Optional[_Union[Quorum.Level, str]] = ..., count: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key", "r")
    KEY_FIELD_NUMBER: _ClassVar[int]
    R_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    r: Quorum
    def __init__(self, key: _Optional[bytes] = ..., r: _Optional[_Union[Quorum, _Mapping]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("value", "version")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    version: str
    def __init__(self, value: _Optional[bytes] = ..., version: _Optional[str] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value", "ttl_seconds", "w")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    ttl_seconds: int
    w: Quorum
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ..., w: _Optional[_Union[Quorum, _Mapping]] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("version", "created")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    version: str
    created: bool
    def __init__(self, version: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "if_match", "w")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IF_MATCH_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    if_match: str
    w: Quorum
    def __init__(self, key: _Optional[bytes] = ..., if_match: _Optional[str] = ..., w: _Optional[_Union[Quorum, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompareAndSwapRequest(_message.Message):
    __slots__ = ("key", "expected_version", "create_only", "value", "ttl_seconds", "w")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expected_version: str
    create_only: bool
    value: bytes
    ttl_seconds: int
    w: Quorum
    def __init__(self, key: _Optional[bytes] = ..., expected_version: _Optional[str] = ..., create_only: _Optional[bool] = ..., value: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ..., w: _Optional[_Union[Quorum, _Mapping]] = ...) -> None: ...

class CompareAndSwapResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class BatchGetRequest(_message.Message):
    __slots__ = ("keys", "r")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    R_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    r: Quorum
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., r: _Optional[_Union[Quorum, _Mapping]] = ...) -> None: ...

class BatchGetResponse(_message.Message):
    __slots__ = ("items",)
    class Item(_message.Message):
        __slots__ = ("key", "found", "value", "version")
        KEY_FIELD_NUMBER: _ClassVar[int]
        FOUND_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        key: bytes
        found: bool
        value: bytes
        version: str
        def __init__(self, key: _Optional[bytes] = ..., found: _Optional[bool] = ..., value: _Optional[bytes] = ..., version: _Optional[str] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchGetResponse.Item]
    def __init__(self, items: _Optional[_Iterable[_Union[BatchGetResponse.Item, _Mapping]]] = ...) -> None: ...

class BatchPutRequest(_message.Message):
    __slots__ = ("items", "w")
    class Item(_message.Message):
        __slots__ = ("key", "value", "ttl_seconds")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
        key: bytes
        value: bytes
        ttl_seconds: int
        def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchPutRequest.Item]
    w: Quorum
    def __init__(self, items: _Optional[_Iterable[_Union[BatchPutRequest.Item, _Mapping]]] = ..., w: _Optional[_Union[Quorum, _Mapping]] = ...) -> None: ...

class BatchPutResponse(_message.Message):
    __slots__ = ("results",)
    class Result(_message.Message):
        __slots__ = ("key", "version", "code", "message")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        CODE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        key: bytes
        version: str
        code: int
        message: str
        def __init__(self, key: _Optional[bytes] = ..., version: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchPutResponse.Result]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchPutResponse.Result, _Mapping]]] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "start_after", "has_start_after", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    HAS_START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    page_size: int
    start_after: bytes
    has_start_after: bool
    limit: int
    def __init__(self, prefix: _Optional[bytes] = ..., page_size: _Optional[int] = ..., start_after: _Optional[bytes] = ..., has_start_after: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class MembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Member(_message.Message):
    __slots__ = ("id", "state", "host", "peer_port", "rest_port", "grpc_port", "gossip_port", "weight", "version", "incarnation")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PEER_PORT_FIELD_NUMBER: _ClassVar[int]
    REST_PORT_FIELD_NUMBER: _ClassVar[int]
    GRPC_PORT_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_PORT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    host: str
    peer_port: int
    rest_port: int
    grpc_port: int
    gossip_port: int
    weight: int
    version: str
    incarnation: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., host: _Optional[str] = ..., peer_port: _Optional[int] = ..., rest_port: _Optional[int] = ..., grpc_port: _Optional[int] = ..., gossip_port: _Optional[int] = ..., weight: _Optional[int] = ..., version: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class MembersResponse(_message.Message):
    __slots__ = ("node", "members")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    node: str
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, node: _Optional[str] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class RingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RingResponse(_message.Message):
    __slots__ = ("partitions", "replicas", "hash", "table")
    class Partition(_message.Message):
        __slots__ = ("partition", "owners")
        PARTITION_FIELD_NUMBER: _ClassVar[int]
        OWNERS_FIELD_NUMBER: _ClassVar[int]
        partition: int
        owners: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, partition: _Optional[int] = ..., owners: _Optional[_Iterable[str]] = ...) -> None: ...
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    partitions: int
    replicas: int
    hash: str
    table: _containers.RepeatedCompositeFieldContainer[RingResponse.Partition]
    def __init__(self, partitions: _Optional[int] = ..., replicas: _Optional[int] = ..., hash: _Optional[str] = ..., table: _Optional[_Iterable[_Union[RingResponse.Partition, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node", "ready", "problems", "members_by_state", "version")
    class MembersByStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    ready: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    members_by_state: _containers.ScalarMap[str, int]
    version: str
    def __init__(self, node: _Optional[str] = ..., ready: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ..., members_by_state: _Optional[_Mapping[str, int]] = ..., version: _Optional[str] = ...) -> None: ...
