"""The two edges of the bridge: the Speech Engine conversation socket and the LiveKit room."""
