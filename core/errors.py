"""The project's exception tree.

Every error this project raises on purpose derives from :class:`BridgeError`.
Who broke the rules decides the branch:

    BridgeError
    ├── ConfigError            our caller's misuse: bad settings, unknown format, missing env
    ├── BufferOverflowError    a buffer with the ``refuse`` policy was asked to hold more than its limit
    ├── ProtocolError          the engine peer sent something the protocol does not allow
    │                          (malformed JSON, bad base64, odd-length PCM, missing fields, too large)
    ├── EngineError            the engine connection failed: unreachable, auth refused,
    │   │                      closed with an error code, reconnects exhausted
    │   ├── EngineAuthError    the API key or signed URL was refused (never retried)
    │   └── EngineRefusedError the engine answered that this request cannot succeed (unknown agent, invalid
    │                          request, a don't-retry error type): never retried
    ├── LiveKitError           the room side failed: no server at the URL, bad credentials, kicked
    └── ToolError              a client tool failed; raised by a tool handler (its message is the error result
                               the engine gets) or by the bridge when a result cannot be sent as a string

Messages never carry secrets: build them from redacted values (see :mod:`core.redact`).
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "BufferOverflowError",
    "ConfigError",
    "EngineAuthError",
    "EngineError",
    "EngineRefusedError",
    "LiveKitError",
    "ProtocolError",
    "ToolError",
]


class BridgeError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(BridgeError):
    """The caller configured something impossible (our side's fault)."""


class BufferOverflowError(BridgeError):
    """A buffer whose overflow policy is ``refuse`` was asked to take more than it can hold."""

    def __init__(self, message: str, *, capacity: int, requested: int) -> None:
        super().__init__(f"{message} (capacity {capacity}, requested {requested})")
        self.capacity = capacity
        self.requested = requested


class ProtocolError(BridgeError):
    """The remote peer broke the protocol. ``kind`` is a short stable label used for counters."""

    def __init__(self, message: str, *, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


class EngineError(BridgeError):
    """The Speech Engine connection failed or was closed with an error."""

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class EngineAuthError(EngineError):
    """The engine refused our credentials; retrying with the same ones cannot help."""


class EngineRefusedError(EngineError):
    """The engine says the same request will fail again (404/422, override_error, safety_violation …)."""


class LiveKitError(BridgeError):
    """The LiveKit side failed: server unreachable, credentials refused, participant removed."""


class ToolError(BridgeError):
    """A client tool failed. Raise it in a tool handler to send its message to the engine as the error result
    (any other exception is reported by its type only: its text may carry secrets)."""
