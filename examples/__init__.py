"""Small runnable examples around the bridge (not part of the installed package)."""
