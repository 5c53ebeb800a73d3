"""Tamper-evident audit log: RFC 9162 Merkle trees over RFC 8785 canonical JSON events.

``actions`` (the closed vocabulary), ``events`` (AuditFacts -> FHIR AuditEvent per IHE BALP and the
HL7 Norway trust-framework IG), ``log`` (append on the request path; sequencer; proofs; search; export),
``checkpoints`` (signed C2SP checkpoints and the signing key), ``verify`` (offline verification of an
export), ``control`` (log-control reports), ``cli`` (``dho-share audit``). Building blocks: ``merkle``,
``canonical``, ``encoding``, ``tree``, ``export_format``, ``terms``, ``sequencer``.
"""
