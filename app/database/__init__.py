"""Persistence: tables, the engine, and the repositories that own every state transition."""
