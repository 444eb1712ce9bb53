from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SwimState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SWIM_STATE_ALIVE: _ClassVar[SwimState]
    SWIM_STATE_SUSPECT: _ClassVar[SwimState]
    SWIM_STATE_DEAD: _ClassVar[SwimState]
    SWIM_STATE_LEFT: _ClassVar[SwimState]
SWIM_STATE_ALIVE: SwimState
SWIM_STATE_SUSPECT: SwimState
SWIM_STATE_DEAD: SwimState
SWIM_STATE_LEFT: SwimState

class SwimPing(_message.Message):
    __slots__ = ("seq", "target", "source", "source_host", "source_port")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HOST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    target: str
    source: str
    source_host: str
    source_port: int
    def __init__(self, seq: _Optional[int] = ..., target: _Optional[str] = ..., source: _Optional[str] = ..., source_host: _Optional[str] = ..., source_port: _Optional[int] = ...) -> None: ...

class SwimIndirectPing(_message.Message):
    __slots__ = ("seq", "target", "target_host", "target_port", "nack", "timeout_ms", "source")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    target: str
    target_host: str
    target_port: int
    nack: bool
    timeout_ms: int
    source: str
    def __init__(self, seq: _Optional[int] = ..., target: _Optional[str] = ..., target_host: _Optional[str] = ..., target_port: _Optional[int] = ..., nack: _Optional[bool] = ..., timeout_ms: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class SwimAck(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class SwimNack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class SwimAlive(_message.Message):
    __slots__ = ("incarnation", "name", "host", "port", "meta")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    name: str
    host: str
    port: int
    meta: bytes
    def __init__(self, incarnation: _Optional[int] = ..., name: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., meta: _Optional[bytes] = ...) -> None: ...

class SwimSuspect(_message.Message):
    __slots__ = ("incarnation", "name", "from_node")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    name: str
    from_node: str
    def __init__(self, incarnation: _Optional[int] = ..., name: _Optional[str] = ..., from_node: _Optional[str] = ...) -> None: ...

class SwimDead(_message.Message):
    __slots__ = ("incarnation", "name", "from_node")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    name: str
    from_node: str
    def __init__(self, incarnation: _Optional[int] = ..., name: _Optional[str] = ..., from_node: _Optional[str] = ...) -> None: ...

class SwimMessage(_message.Message):
    __slots__ = ("ping", "indirect_ping", "ack", "nack", "alive", "suspect", "dead")
    PING_FIELD_NUMBER: _ClassVar[int]
    INDIRECT_PING_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    ping: SwimPing
    indirect_ping: SwimIndirectPing
    ack: SwimAck
    nack: SwimNack
    alive: SwimAlive
    suspect: SwimSuspect
    dead: SwimDead
    def __init__(self, ping: _Optional[_Union[SwimPing, _Mapping]] = ..., indirect_ping: _Optional[_Union[SwimIndirectPing, _Mapping]] = ..., ack: _Optional[_Union[SwimAck, _Mapping]] = ..., nack: _Optional[_Union[SwimNack, _Mapping]] = ..., alive: _Optional[_Union[SwimAlive, _Mapping]] = ..., suspect: _Optional[_Union[SwimSuspect, _Mapping]] = ..., dead: _Optional[_Union[SwimDead, _Mapping]] = ...) -> None: ...

class SwimPacket(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[SwimMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[SwimMessage, _Mapping]]] = ...) -> None: ...

class SwimMemberState(_message.Message):
    __slots__ = ("name", "host", "port", "meta", "incarnation", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    host: str
    port: int
    meta: bytes
    incarnation: int
    state: SwimState
    def __init__(self, name: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., meta: _Optional[bytes] = ..., incarnation: _Optional[int] = ..., state: _Optional[_Union[SwimState, str]] = ...) -> None: ...

class SwimPushPull(_message.Message):
    __slots__ = ("join", "members")
    JOIN_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    join: bool
    members: _containers.RepeatedCompositeFieldContainer[SwimMemberState]
    def __init__(self, join: _Optional[bool] = ..., members: _Optional[_Iterable[_Union[SwimMemberState, _Mapping]]] = ...) -> None: ...
