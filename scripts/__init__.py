"""Developer tooling: the local LiveKit server test bed, demo and browser helpers."""
