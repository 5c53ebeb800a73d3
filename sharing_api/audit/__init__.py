"""Tamper-evident audit log: RFC 9162 Merkle trees over RFC 8785 canonical JSON events."""
