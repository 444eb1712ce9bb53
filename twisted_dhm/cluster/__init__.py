"""Coordination: turns client operations into versioned record reads and writes."""
