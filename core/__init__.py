"""Pure audio engine: buffers, codecs, resampling, mixing, playout and pacing. No sockets, no asyncio."""
