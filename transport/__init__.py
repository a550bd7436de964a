"""The two edges of the bridge and the session that wires them: the public embedding API.

    from transport import BridgeSession, EngineSettings, RoomLinkConfig, SessionConfig, mint_token

    session = BridgeSession(SessionConfig(room=RoomLinkConfig(url, token, identity="agent"),
                                          engine=EngineSettings(api_key=key, agent_id=engine_id)))
    await session.start()
    async for event in session.events(): ...   # transport.events: one frozen dataclass per kind
    await session.stop()

The worker API (explicit dispatch) and the error tree are exported here too. The library installs no signal
handlers and configures no logging; many sessions share one event loop.
"""

from core.downlink import DownlinkConfig
from core.errors import (
    BridgeError,
    BufferOverflowError,
    ConfigError,
    EngineAuthError,
    EngineError,
    LiveKitError,
    ProtocolError,
    ToolError,
)
from transport.chat import ChatConfig
from transport.config import EngineSettings, LiveKitTarget, RoomLinkConfig, SessionConfig, from_env
from transport.control import NoConversation
from transport.engine_client import ConnectionState, EngineClient, InitiationData
from transport.events import (
    AgentResponse,
    CallerJoined,
    CallerLeft,
    EngineErrorOccurred,
    EngineStateChanged,
    Interrupted,
    RoomState,
    RoomStateChanged,
    SessionError,
    SessionEvent,
    SessionState,
    SessionStateChanged,
    UserTranscript,
)
from transport.init_options import StartOptions, parse_dispatch_metadata
from transport.livekit_token import mint_token
from transport.observe import SessionHooks, SessionStats
from transport.session import BridgeSession, serve
from transport.tools import ClientTools, ToolConfig
from transport.worker import Worker, run_worker
from transport.worker_config import JobContext, JobRunner, WorkerConfig, WorkerStats

__all__ = [
    "AgentResponse",
    "BridgeError",
    "BridgeSession",
    "BufferOverflowError",
    "CallerJoined",
    "CallerLeft",
    "ChatConfig",
    "ClientTools",
    "ConfigError",
    "ConnectionState",
    "DownlinkConfig",
    "EngineAuthError",
    "EngineClient",
    "EngineError",
    "EngineErrorOccurred",
    "EngineSettings",
    "EngineStateChanged",
    "InitiationData",
    "Interrupted",
    "JobContext",
    "JobRunner",
    "LiveKitError",
    "LiveKitTarget",
    "NoConversation",
    "ProtocolError",
    "RoomLinkConfig",
    "RoomState",
    "RoomStateChanged",
    "SessionConfig",
    "SessionError",
    "SessionEvent",
    "SessionHooks",
    "SessionState",
    "SessionStateChanged",
    "SessionStats",
    "StartOptions",
    "ToolConfig",
    "ToolError",
    "UserTranscript",
    "Worker",
    "WorkerConfig",
    "WorkerStats",
    "from_env",
    "mint_token",
    "parse_dispatch_metadata",
    "run_worker",
    "serve",
]
