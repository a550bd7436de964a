"""A local emulator of the Speech Engine conversation WebSocket and its signed-URL endpoint."""
