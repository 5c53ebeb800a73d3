"""Authentication and authorisation core of dho-share: no web framework in here.

Modules, each named after the concept it holds:

* :mod:`auth.errors`: ``AuthError`` and its subclasses, each knowing its wire form.
* :mod:`auth.replay`: the replay cache (Redis / in-memory; fails closed) and DPoP server nonces.
* :mod:`auth.keys`: our ES256 signing key set, rotation and JWKS.
* :mod:`auth.dpop`: RFC 9449 proof verification.
* :mod:`auth.assertions`: RFC 7523 ``private_key_jwt`` client assertions (HelseID profile).
* :mod:`auth.attestation`: the trust-framework attestation (``nhn:tillitsrammeverk:parameters``).
* :mod:`auth.tokens`: RFC 9068 access tokens, issued and verified.
* :mod:`auth.caller`: ``Caller``, who is asking, built from a verified token.

Dependencies point one way: these modules import joserfc, cryptography and redis, never Flask or the
API packages; the HTTP layer calls them with plain values (the configured public URL, header values,
the clock).
"""
