"""Bounded-time fuzzing of the config loader, the protocol parsers and the payload framing."""
