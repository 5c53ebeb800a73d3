"""Wire forms of auth errors (RFC 6749 §5.2, RFC 6750 §3, RFC 9449 §7.1)."""

from __future__ import annotations

import pytest

from auth import errors
from auth.dpop import DPOP_ALGS
from auth.errors import Surface, www_authenticate


@pytest.mark.parametrize(
    ("error", "token_endpoint", "resource"),
    [
        (errors.InvalidRequest("x"), (400, "invalid_request"), (400, "invalid_request")),
        (errors.InvalidClient("x"), (401, "invalid_client"), (401, "invalid_token")),
        (errors.InvalidGrant("x"), (400, "invalid_grant"), (401, "invalid_token")),
        (errors.UnauthorizedClient("x"), (400, "unauthorized_client"), (403, "insufficient_scope")),
        (errors.UnsupportedGrantType("x"), (400, "unsupported_grant_type"), (400, "invalid_request")),
        (errors.InvalidScope("x"), (400, "invalid_scope"), (403, "insufficient_scope")),
        (
            errors.InvalidAuthorizationDetails("x"),
            (400, "invalid_authorization_details"),
            (403, "insufficient_scope"),
        ),
        (errors.InvalidToken("x"), (400, "invalid_grant"), (401, "invalid_token")),
        (errors.InsufficientScope("x"), (400, "invalid_scope"), (403, "insufficient_scope")),
        (errors.InvalidDPoPProof("x"), (400, "invalid_dpop_proof"), (401, "invalid_dpop_proof")),
        (errors.UseDPoPNonce("x", nonce="n"), (400, "use_dpop_nonce"), (401, "use_dpop_nonce")),
        (errors.StateUnavailable("x"), (503, "temporarily_unavailable"), (503, "temporarily_unavailable")),
    ],
)
def test_each_error_knows_its_wire_form(
    error: errors.AuthError, token_endpoint: tuple[int, str], resource: tuple[int, str]
) -> None:
    assert isinstance(error, errors.AuthError)
    assert error.wire(Surface.TOKEN_ENDPOINT) == token_endpoint
    assert error.wire(Surface.RESOURCE) == resource


def test_token_endpoint_error_is_a_json_body_and_not_cached() -> None:
    response = errors.InvalidClient("unknown client").response(Surface.TOKEN_ENDPOINT)
    assert response.status == 401
    assert response.body == {"error": "invalid_client", "error_description": "unknown client"}
    assert response.headers["Cache-Control"] == "no-store"
    assert "WWW-Authenticate" not in response.headers


def test_resource_error_is_a_dpop_challenge_advertising_algs() -> None:
    response = errors.InvalidToken("access token expired").response(Surface.RESOURCE, algs=DPOP_ALGS)
    assert response.status == 401
    assert response.body is None
    assert response.headers["WWW-Authenticate"] == (
        f'DPoP error="invalid_token", error_description="access token expired", algs="{" ".join(DPOP_ALGS)}"'
    )
    assert "RS512" in DPOP_ALGS  # HelseID's RSA clients are told they may use RSA


def test_use_dpop_nonce_sends_the_nonce_on_both_surfaces() -> None:
    error = errors.UseDPoPNonce("nonce required", nonce="123.abc")
    assert error.response(Surface.RESOURCE).headers["DPoP-Nonce"] == "123.abc"
    assert error.response(Surface.TOKEN_ENDPOINT).headers["DPoP-Nonce"] == "123.abc"
    assert 'error="use_dpop_nonce"' in error.response(Surface.RESOURCE).headers["WWW-Authenticate"]


def test_state_unavailable_is_503_without_challenge() -> None:
    response = errors.StateUnavailable("replay cache unavailable").response(Surface.RESOURCE)
    assert response.status == 503
    assert "WWW-Authenticate" not in response.headers
    assert response.headers["Retry-After"].isdigit()


def test_insufficient_scope_names_the_scope() -> None:
    error = errors.InsufficientScope("write needs more", scope="dho-share/observation.write")
    header = error.response(Surface.RESOURCE, scheme="DPoP").headers["WWW-Authenticate"]
    assert 'scope="dho-share/observation.write"' in header
    assert header.startswith('DPoP error="insufficient_scope"')


def test_path_is_part_of_the_description() -> None:
    error = errors.InvalidAuthorizationDetails("must be a list", path="authorization_details[0].patients")
    assert error.path == "authorization_details[0].patients"
    body = error.response(Surface.TOKEN_ENDPOINT).body
    assert body is not None
    assert body["error_description"] == "must be a list @ authorization_details[0].patients"


def test_no_credentials_challenge_still_advertises_algs() -> None:
    """AUTH-01: a bare challenge carries ``algs``."""
    assert www_authenticate("DPoP", algs=["ES256"]) == 'DPoP algs="ES256"'
    assert www_authenticate("Bearer") == "Bearer"


@pytest.mark.parametrize("evil", ['a"b', "a\\b", "line\r\nSet-Cookie: x=1", "ø", "\x00"])
def test_challenge_values_cannot_break_out_of_their_quotes(evil: str) -> None:
    header = www_authenticate("DPoP", error="invalid_token", error_description=evil)
    description = header.split("error_description=", 1)[1]
    assert description.startswith('"')
    assert description.endswith('"')
    inner = description[1:-1]
    assert '"' not in inner
    assert "\\" not in inner
    assert all(0x20 <= ord(c) <= 0x7E for c in header)


def test_scheme_and_error_must_be_tokens() -> None:
    with pytest.raises(ValueError, match="scheme"):
        www_authenticate("DPoP x")
    with pytest.raises(ValueError, match="error code"):
        www_authenticate("DPoP", error='bad"code')
