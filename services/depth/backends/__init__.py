"""Depth backends: `offline` (motion parallax, no weights), `mast3r` (a user-given checkpoint)."""
