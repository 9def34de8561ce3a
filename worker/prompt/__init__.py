"""Prompt building: pure functions from stored turns to the engine's ChatTurns."""
