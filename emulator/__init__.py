"""A local emulator of the Speech Engine conversation WebSocket and its REST endpoints.

Start it in-process::

    async with Emulator(EmulatorConfig(reply_mode="echo")) as emu:
        url = emu.signed_url()                       # or GET {emu.rest_base_url}/v1/convai/conversation/
        conversation = await emu.next_conversation()  #        get-signed-url with header xi-api-key
        reply = await conversation.next_reply()

or alone: ``python -m emulator --port 8765``. It listens on loopback only.

With a brain server (``EmulatorConfig(brain_url=…)``, ``--brain-url``, or ``PATCH /v1/speech-engine/{id}``
with ``speech_engine.ws_url``) each conversation dials it like the real engine does and speaks its text
with espeak-ng: :mod:`emulator.brain_protocol` (messages, JWT), :mod:`emulator.brain` (the socket),
:mod:`emulator.voice` (turns → history → phrases → speech), :mod:`emulator.tts`. ``emu.transcriber`` stands
in for speech recognition when a test knows the words.

Hooks on a :class:`Conversation`: ``trigger_reply()``, ``interrupt()``, ``end(code, error_type, message)``;
faults: ``stall(seconds)``, ``inject(kind)``, ``drop()``, and the switches of :class:`Faults` (``emu.faults``
for all conversations, ``conversation.faults_override`` for one). Records: ``records``, ``replies``,
``utterances``, ``pings``, ``received_audio()``; waiting: ``next_reply()``, ``wait_for(predicate)``.
"""

from emulator.config import EmulatorConfig, Faults, InjectKind, InterruptIdMode, ReplyMode
from emulator.conversation import Conversation, PingRecord, Reply, Utterance, WireRecord
from emulator.server import Emulator, Rejection
from emulator.voice import BrainVoice

__all__ = [
    "BrainVoice",
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
