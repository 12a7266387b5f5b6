"""Scaling a run up: precision, processes (DDP), compile, EMA, lr schedules, random streams.

Nothing here imports the engine: these are the tools the trainer is built from.
"""
