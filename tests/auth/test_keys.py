"""Our signing key set: generation, rotation, JWKS export (AS-05), persistence."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from auth._jose import PRIVATE_JWK_MEMBERS
from auth.keys import SIGNING_ALG, RetiredKey, SigningKeySet, generate_signing_key, load_keyset, save_keyset

NOW = 1_767_225_600


def test_generated_key_is_es256_with_thumbprint_kid() -> None:
    key = generate_signing_key()
    assert key.is_private
    assert key.curve_name == "P-256"
    assert key.kid == key.thumbprint()  # RFC 7638
    assert key.alg == SIGNING_ALG
    assert key.get("use") == "sig"


def test_jwks_has_no_private_members_and_no_duplicate_kid() -> None:
    """AS-05."""
    keyset = SigningKeySet.generate().rotate(now=NOW, keep_published_for=900)
    jwks = keyset.public_jwks(NOW)
    assert len(jwks["keys"]) == 2
    for jwk in jwks["keys"]:
        assert not PRIVATE_JWK_MEMBERS & jwk.keys()
        assert jwk["kty"] == "EC"
        assert jwk["alg"] == "ES256"
        assert jwk["use"] == "sig"
        assert not ECKey.import_key(jwk).is_private
    kids = [jwk["kid"] for jwk in jwks["keys"]]
    assert len(set(kids)) == len(kids)
    assert kids[0] == keyset.kid  # active first


def test_rotation_keeps_old_key_published_until_its_time() -> None:
    first = SigningKeySet.generate()
    second = first.rotate(now=NOW, keep_published_for=600)
    assert second.kid != first.kid
    assert second.verification_key(first.kid, NOW + 599) is not None
    assert second.verification_key(first.kid, NOW + 600) is None
    assert [k["kid"] for k in second.public_jwks(NOW + 600)["keys"]] == [second.kid]
    # A later rotation drops keys whose publication has ended.
    third = second.rotate(now=NOW + 601, keep_published_for=600)
    assert [r.kid for r in third.retired] == [second.kid]


def test_verification_key_is_public_and_unknown_kid_is_none(keyset: SigningKeySet) -> None:
    key = keyset.verification_key(keyset.kid, NOW)
    assert key is not None
    assert not key.is_private
    for probe in ["nope", "' OR 1=1 --", "../../etc/passwd", ""]:
        assert keyset.verification_key(probe, NOW) is None


def test_save_and_load_round_trip_with_owner_only_permissions(tmp_path: Path) -> None:
    keyset = SigningKeySet.generate().rotate(now=NOW, keep_published_for=300)
    path = tmp_path / "signing-keys.json"
    save_keyset(keyset, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_keyset(path)
    assert loaded == keyset
    assert [p.name for p in tmp_path.iterdir()] == ["signing-keys.json"]  # no temp file left


def test_save_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save_keyset(SigningKeySet.generate(), path)
    newer = SigningKeySet.generate()
    save_keyset(newer, path)
    assert load_keyset(path).kid == newer.kid


def test_load_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_keyset(tmp_path / "absent.json")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="other"),
        lambda d: d.update(version=2),
        lambda d: d["active"].pop("d"),
        lambda d: d["active"].update(kid="chosen-by-hand"),
        lambda d: d.update(retired=[{"jwk": d["active"], "published_until": NOW}]),
        lambda d: d.update(retired=[{"jwk": d["active"]}]),
        lambda d: d.update(retired="nope"),
    ],
)
def test_load_refuses_invalid_key_sets(mutate: object) -> None:
    document = json.loads(SigningKeySet.generate().to_json())
    mutate(document)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"signing key|retired|published_until|duplicate kid"):
        SigningKeySet.from_json(json.dumps(document))


def test_keyset_refuses_public_or_wrong_curve_keys() -> None:
    public = ECKey.import_key(generate_signing_key().as_dict(private=False))
    with pytest.raises(ValueError, match="private P-256"):
        SigningKeySet(public)
    p384 = ECKey.generate_key("P-384", private=True, auto_kid=True)
    with pytest.raises(ValueError, match="private P-256"):
        SigningKeySet(p384)
    active = generate_signing_key()
    with pytest.raises(ValueError, match="duplicate"):
        SigningKeySet(active, (RetiredKey(active, NOW),))
