"""Pydantic schemas and the task state machine. No I/O here."""
