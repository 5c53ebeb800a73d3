"""Topic-based FHIR R4 Subscriptions (Subscriptions R5 Backport IG, a documented subset).

See docs/subscriptions.md.

``topics`` is the registry (the one source the CapabilityStatement and validation derive from),
``resource`` validates a client's ``Subscription``, ``store`` keeps subscriptions and the durable outbox,
``notification`` shapes the notification Bundle, ``delivery`` signs and sends it, and ``service`` is
the emitter API the rest of the code calls. Nothing here imports Flask.
"""
