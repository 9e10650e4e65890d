from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRequest(_message.Message):
    __slots__ = ("after_version",)
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    after_version: str
    def __init__(self, after_version: _Optional[str] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("snapshot", "delta", "heartbeat")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    delta: Delta
    heartbeat: Heartbeat
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "users", "disabled_agents", "revoked_tokens")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    DISABLED_AGENTS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    version: str
    users: _containers.RepeatedCompositeFieldContainer[User]
    disabled_agents: _containers.RepeatedScalarFieldContainer[str]
    revoked_tokens: _containers.RepeatedCompositeFieldContainer[RevokedToken]
    def __init__(self, version: _Optional[str] = ..., users: _Optional[_Iterable[_Union[User, _Mapping]]] = ..., disabled_agents: _Optional[_Iterable[str]] = ..., revoked_tokens: _Optional[_Iterable[_Union[RevokedToken, _Mapping]]] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "permissions", "disabled")
    ID_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    id: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    disabled: bool
    def __init__(self, id: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., disabled: _Optional[bool] = ...) -> None: ...

class RevokedToken(_message.Message):
    __slots__ = ("jti", "exp")
    JTI_FIELD_NUMBER: _ClassVar[int]
    EXP_FIELD_NUMBER: _ClassVar[int]
    jti: str
    exp: float
    def __init__(self, jti: _Optional[str] = ..., exp: _Optional[float] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("from_version", "version", "changes")
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    from_version: str
    version: str
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    def __init__(self, from_version: _Optional[str] = ..., version: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("user_upserted", "user_removed", "agent_disabled", "agent_enabled", "token_revoked", "token_unrevoked")
    USER_UPSERTED_FIELD_NUMBER: _ClassVar[int]
    USER_REMOVED_FIELD_NUMBER: _ClassVar[int]
    AGENT_DISABLED_FIELD_NUMBER: _ClassVar[int]
    AGENT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_REVOKED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_UNREVOKED_FIELD_NUMBER: _ClassVar[int]
    user_upserted: User
    user_removed: str
    agent_disabled: str
    agent_enabled: str
    token_revoked: RevokedToken
    token_unrevoked: str
    def __init__(self, user_upserted: _Optional[_Union[User, _Mapping]] = ..., user_removed: _Optional[str] = ..., agent_disabled: _Optional[str] = ..., agent_enabled: _Optional[str] = ..., token_revoked: _Optional[_Union[RevokedToken, _Mapping]] = ..., token_unrevoked: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...
