"""A local emulator of the Speech Engine conversation WebSocket and its REST endpoints.

Start it in-process::

    async with Emulator(EmulatorConfig(reply_mode="echo")) as emu:
        url = emu.signed_url()                       # or GET {emu.rest_base_url}/v1/convai/conversation/
        conversation = await emu.next_conversation()  #        get-signed-url with header xi-api-key
        reply = await conversation.next_reply()

or alone: ``python -m emulator --port 8765``. It listens on loopback only.
"""

from emulator.config import EmulatorConfig, Faults, InjectKind, InterruptIdMode, ReplyMode
from emulator.conversation import Conversation, PingRecord, Reply, Utterance, WireRecord
from emulator.server import Emulator, Rejection

__all__ = [
    "Conversation",
    "Emulator",
    "EmulatorConfig",
    "Faults",
    "InjectKind",
    "InterruptIdMode",
    "PingRecord",
    "Rejection",
    "Reply",
    "ReplyMode",
    "Utterance",
    "WireRecord",
]
