from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_PEER: _ClassVar[Role]
    ROLE_CLIENT: _ClassVar[Role]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_BAD_FRAME: _ClassVar[ErrorCode]
    ERROR_CODE_VERSION_MISMATCH: _ClassVar[ErrorCode]
    ERROR_CODE_CLUSTER_MISMATCH: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_PRECONDITION_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_REQUEST: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_TIMEOUT: _ClassVar[ErrorCode]
    ERROR_CODE_STORAGE: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_TOO_LARGE: _ClassVar[ErrorCode]
    ERROR_CODE_PARTITIONS_MISMATCH: _ClassVar[ErrorCode]
    ERROR_CODE_FORBIDDEN: _ClassVar[ErrorCode]
    ERROR_CODE_BUSY: _ClassVar[ErrorCode]
ROLE_UNSPECIFIED: Role
ROLE_PEER: Role
ROLE_CLIENT: Role
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_BAD_FRAME: ErrorCode
ERROR_CODE_VERSION_MISMATCH: ErrorCode
ERROR_CODE_CLUSTER_MISMATCH: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_PRECONDITION_FAILED: ErrorCode
ERROR_CODE_INVALID_REQUEST: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_TIMEOUT: ErrorCode
ERROR_CODE_STORAGE: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_TOO_LARGE: ErrorCode
ERROR_CODE_PARTITIONS_MISMATCH: ErrorCode
ERROR_CODE_FORBIDDEN: ErrorCode
ERROR_CODE_BUSY: ErrorCode

class KeyRecord(_message.Message):
    __slots__ = ("key", "found", "record")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    found: bool
    record: bytes
    def __init__(self, key: _Optional[bytes] = ..., found: _Optional[bool] = ..., record: _Optional[bytes] = ...) -> None: ...

class Addresses(_message.Message):
    __slots__ = ("host", "peer_port", "rest_port", "grpc_port", "gossip_port")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PEER_PORT_FIELD_NUMBER: _ClassVar[int]
    REST_PORT_FIELD_NUMBER: _ClassVar[int]
    GRPC_PORT_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_PORT_FIELD_NUMBER: _ClassVar[int]
    host: str
    peer_port: int
    rest_port: int
    grpc_port: int
    gossip_port: int
    def __init__(self, host: _Optional[str] = ..., peer_port: _Optional[int] = ..., rest_port: _Optional[int] = ..., grpc_port: _Optional[int] = ..., gossip_port: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "cluster", "node_id", "role", "addresses", "weight", "software_version", "partitions", "leaving")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    cluster: str
    node_id: str
    role: Role
    addresses: Addresses
    weight: int
    software_version: str
    partitions: int
    leaving: bool
    def __init__(self, protocol_version: _Optional[int] = ..., cluster: _Optional[str] = ..., node_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., addresses: _Optional[_Union[Addresses, _Mapping]] = ..., weight: _Optional[int] = ..., software_version: _Optional[str] = ..., partitions: _Optional[int] = ..., leaving: _Optional[bool] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "acks", "required")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    acks: int
    required: int
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., acks: _Optional[int] = ..., required: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("sent_at_ms",)
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    sent_at_ms: int
    def __init__(self, sent_at_ms: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("sent_at_ms", "node_id")
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    sent_at_ms: int
    node_id: str
    def __init__(self, sent_at_ms: _Optional[int] = ..., node_id: _Optional[str] = ...) -> None: ...

class ReplicaGet(_message.Message):
    __slots__ = ("keys", "include_pending", "local_only")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PENDING_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    include_pending: bool
    local_only: bool
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., include_pending: _Optional[bool] = ..., local_only: _Optional[bool] = ...) -> None: ...

class ReplicaGetResult(_message.Message):
    __slots__ = ("records", "partial")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[KeyRecord]
    partial: bool
    def __init__(self, records: _Optional[_Iterable[_Union[KeyRecord, _Mapping]]] = ..., partial: _Optional[bool] = ...) -> None: ...

class ReplicaPut(_message.Message):
    __slots__ = ("records", "hint_for", "background")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HINT_FOR_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[KeyRecord]
    hint_for: str
    background: bool
    def __init__(self, records: _Optional[_Iterable[_Union[KeyRecord, _Mapping]]] = ..., hint_for: _Optional[str] = ..., background: _Optional[bool] = ...) -> None: ...

class ReplicaPutResult(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    def __init__(self, stored: _Optional[int] = ...) -> None: ...

class ReplicaScan(_message.Message):
    __slots__ = ("prefix", "after", "has_after", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    HAS_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: bytes
    after: bytes
    has_after: bool
    limit: int
    def __init__(self, prefix: _Optional[bytes] = ..., after: _Optional[bytes] = ..., has_after: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class ScanEntry(_message.Message):
    __slots__ = ("key", "tombstone", "expires_at", "hlc")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    tombstone: bool
    expires_at: int
    hlc: int
    def __init__(self, key: _Optional[bytes] = ..., tombstone: _Optional[bool] = ..., expires_at: _Optional[int] = ..., hlc: _Optional[int] = ...) -> None: ...

class ReplicaScanResult(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ScanEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[ScanEntry, _Mapping]]] = ...) -> None: ...

class TreeRoots(_message.Message):
    __slots__ = ("partitions",)
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, partitions: _Optional[_Iterable[int]] = ...) -> None: ...

class TreeRootsResult(_message.Message):
    __slots__ = ("roots", "keys")
    ROOTS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    roots: _containers.RepeatedScalarFieldContainer[int]
    keys: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, roots: _Optional[_Iterable[int]] = ..., keys: _Optional[_Iterable[int]] = ...) -> None: ...

class TreeBuckets(_message.Message):
    __slots__ = ("partition",)
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    def __init__(self, partition: _Optional[int] = ...) -> None: ...

class TreeBucketsResult(_message.Message):
    __slots__ = ("buckets",)
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, buckets: _Optional[_Iterable[int]] = ...) -> None: ...

class TreeKeys(_message.Message):
    __slots__ = ("partition", "buckets", "after", "has_after", "limit")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    HAS_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    partition: int
    buckets: _containers.RepeatedScalarFieldContainer[int]
    after: bytes
    has_after: bool
    limit: int
    def __init__(self, partition: _Optional[int] = ..., buckets: _Optional[_Iterable[int]] = ..., after: _Optional[bytes] = ..., has_after: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class TreeKeysResult(_message.Message):
    __slots__ = ("keys", "digests", "more")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    digests: _containers.RepeatedScalarFieldContainer[int]
    more: bool
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., digests: _Optional[_Iterable[int]] = ..., more: _Optional[bool] = ...) -> None: ...

class Leave(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class LeaveResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatusResult(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    def __init__(self, json: _Optional[bytes] = ...) -> None: ...

class Consistency(_message.Message):
    __slots__ = ("level", "count")
    class Level(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LEVEL_DEFAULT: _ClassVar[Consistency.Level]
        LEVEL_ONE: _ClassVar[Consistency.Level]
        LEVEL_QUORUM: _ClassVar[Consistency.Level]
        LEVEL_ALL: _ClassVar[Consistency.Level]
    LEVEL_DEFAULT: Consistency.Level
    LEVEL_ONE: Consistency.Level
    LEVEL_QUORUM: Consistency.Level
    LEVEL_ALL: Consistency.Level
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    level: Consistency.Level
    count: int
    def __init__(self, level: _Optional[_Union[Consistency.Level, str]] = ..., count: _Optional[int] = ...) -> None: ...

class Get(_message.Message):
    __slots__ = ("key", "r")
    KEY_FIELD_NUMBER: _ClassVar[int]
    R_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    r: Consistency
    def __init__(self, key: _Optional[bytes] = ..., r: _Optional[_Union[Consistency, _Mapping]] = ...) -> None: ...

class GetResult(_message.Message):
    __slots__ = ("found", "value", "version", "owners")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    version: str
    owners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., version: _Optional[str] = ..., owners: _Optional[_Iterable[str]] = ...) -> None: ...

class Put(_message.Message):
    __slots__ = ("key", "value", "ttl_seconds", "if_match", "if_none_match", "w")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IF_MATCH_FIELD_NUMBER: _ClassVar[int]
    IF_NONE_MATCH_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    ttl_seconds: int
    if_match: str
    if_none_match: bool
    w: Consistency
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ..., if_match: _Optional[str] = ..., if_none_match: _Optional[bool] = ..., w: _Optional[_Union[Consistency, _Mapping]] = ...) -> None: ...

class PutResult(_message.Message):
    __slots__ = ("version", "created", "owners")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    version: str
    created: bool
    owners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., created: _Optional[bool] = ..., owners: _Optional[_Iterable[str]] = ...) -> None: ...

class Delete(_message.Message):
    __slots__ = ("key", "if_match", "w")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IF_MATCH_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    if_match: str
    w: Consistency
    def __init__(self, key: _Optional[bytes] = ..., if_match: _Optional[str] = ..., w: _Optional[_Union[Consistency, _Mapping]] = ...) -> None: ...

class DeleteResult(_message.Message):
    __slots__ = ("version", "owners")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    version: str
    owners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., owners: _Optional[_Iterable[str]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("id", "hello", "error", "ping", "pong", "replica_get", "replica_get_result", "replica_put", "replica_put_result", "replica_scan", "replica_scan_result", "get", "get_result", "put", "put_result", "delete", "delete_result", "tree_roots", "tree_roots_result", "tree_buckets", "tree_buckets_result", "tree_keys", "tree_keys_result", "leave", "leave_result", "node_status", "node_status_result")
    ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    REPLICA_GET_FIELD_NUMBER: _ClassVar[int]
    REPLICA_GET_RESULT_FIELD_NUMBER: _ClassVar[int]
    REPLICA_PUT_FIELD_NUMBER: _ClassVar[int]
    REPLICA_PUT_RESULT_FIELD_NUMBER: _ClassVar[int]
    REPLICA_SCAN_FIELD_NUMBER: _ClassVar[int]
    REPLICA_SCAN_RESULT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    GET_RESULT_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    PUT_RESULT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    DELETE_RESULT_FIELD_NUMBER: _ClassVar[int]
    TREE_ROOTS_FIELD_NUMBER: _ClassVar[int]
    TREE_ROOTS_RESULT_FIELD_NUMBER: _ClassVar[int]
    TREE_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    TREE_BUCKETS_RESULT_FIELD_NUMBER: _ClassVar[int]
    TREE_KEYS_FIELD_NUMBER: _ClassVar[int]
    TREE_KEYS_RESULT_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RESULT_FIELD_NUMBER: _ClassVar[int]
    NODE_STATUS_FIELD_NUMBER: _ClassVar[int]
    NODE_STATUS_RESULT_FIELD_NUMBER: _ClassVar[int]
    id: int
    hello: Hello
    error: Error
    ping: Ping
    pong: Pong
    replica_get: ReplicaGet
    replica_get_result: ReplicaGetResult
    replica_put: ReplicaPut
    replica_put_result: ReplicaPutResult
    replica_scan: ReplicaScan
    replica_scan_result: ReplicaScanResult
    get: Get
    get_result: GetResult
    put: Put
    put_result: PutResult
    delete: Delete
    delete_result: DeleteResult
    tree_roots: TreeRoots
    tree_roots_result: TreeRootsResult
    tree_buckets: TreeBuckets
    tree_buckets_result: TreeBucketsResult
    tree_keys: TreeKeys
    tree_keys_result: TreeKeysResult
    leave: Leave
    leave_result: LeaveResult
    node_status: NodeStatus
    node_status_result: NodeStatusResult
    def __init__(self, id: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., replica_get: _Optional[_Union[ReplicaGet, _Mapping]] = ..., replica_get_result: _Optional[_Union[ReplicaGetResult, _Mapping]] = ..., replica_put: _Optional[_Union[ReplicaPut, _Mapping]] = ..., replica_put_result: _Optional[_Union[ReplicaPutResult, _Mapping]] = ..., replica_scan: _Optional[_Union[ReplicaScan, _Mapping]] = ..., replica_scan_result: _Optional[_Union[ReplicaScanResult, _Mapping]] = ..., get: _Optional[_Union[Get, _Mapping]] = ..., get_result: _Optional[_Union[GetResult, _Mapping]] = ..., put: _Optional[_Union[Put, _Mapping]] = ..., put_result: _Optional[_Union[PutResult, _Mapping]] = ..., delete: _Optional[_Union[Delete, _Mapping]] = ..., delete_result: _Optional[_Union[DeleteResult, _Mapping]] = ..., tree_roots: _Optional[_Union[TreeRoots, _Mapping]] = ..., tree_roots_result: _Optional[_Union[TreeRootsResult, _Mapping]] = ..., tree_buckets: _Optional[_Union[TreeBuckets, _Mapping]] = ..., tree_buckets_result: _Optional[_Union[TreeBucketsResult, _Mapping]] = ..., tree_keys: _Optional[_Union[TreeKeys, _Mapping]] = ..., tree_keys_result: _Optional[_Union[TreeKeysResult, _Mapping]] = ..., leave: _Optional[_Union[Leave, _Mapping]] = ..., leave_result: _Optional[_Union[LeaveResult, _Mapping]] = ..., node_status: _Optional[_Union[NodeStatus, _Mapping]] = ..., node_status_result: _Optional[_Union[NodeStatusResult, _Mapping]] = ...) -> None: ...
