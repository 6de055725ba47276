"""Distributed task scheduler: the scheduler service (API) and the code it shares with workers."""
