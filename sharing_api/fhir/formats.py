"""Content negotiation: this server speaks FHIR R4 JSON only (FHIR R4 §3.1.0.1.6 "Content Types and
encodings", §3.1.0.1.5 ``_format``, and the ``fhirVersion`` media-type parameter of §3.1.0.1.8).

A client that asks for anything else (XML, Turtle, HTML, another FHIR version) gets 406 rather than JSON
it did not ask for; this module only decides, the API raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from sharing_api.errors import NotAcceptable, UnsupportedMediaType

FHIR_VERSION_PARAM = "4.0"
"""The ``fhirVersion`` media-type parameter value for R4 (FHIR R4 §3.1.0.1.8: major.minor only)."""
_FORMAT_ALIASES = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})
JSON_RANGES = frozenset(
    {"*/*", "application/*", "application/json", "application/fhir+json", "application/json+fhir"}
)
NDJSON_RANGES = frozenset(
    {"*/*", "application/*", "application/fhir+ndjson", "application/ndjson", "application/x-ndjson"}
)


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an ``Accept`` header (RFC 9110 §12.5.1)."""

    mime: str
    params: dict[str, str]
    quality: float


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of ``header``; malformed quality values count as 1 (a lenient reading)."""
    ranges = []
    for part in header.split(","):
        mime, *raw = (p.strip() for p in part.split(";"))
        if not mime:
            continue
        params: dict[str, str] = {}
        for item in raw:
            key, _, value = item.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        ranges.append(MediaRange(mime.lower(), params, quality))
    return ranges


def _version_ok(params: dict[str, str]) -> bool:
    version = params.get("fhirversion")
    return version is None or version == FHIR_VERSION_PARAM or version.startswith(FHIR_VERSION_PARAM + ".")


def negotiate(accept: str | None, format_param: str | None, *, answers: frozenset[str] = JSON_RANGES) -> None:
    """Raise :class:`NotAcceptable` unless the client accepts what this endpoint answers.

    ``_format`` wins over ``Accept`` (FHIR R4 §3.1.0.1.5); ``answers`` are the media ranges that match
    the endpoint's answer (JSON, or NDJSON for ``$export``).
    """
    if format_param is not None:
        ranges = parse_accept(format_param)  # one format; a list ("json,xml") is not one
        wanted = ranges[0] if len(ranges) == 1 else MediaRange("", {}, 1.0)
        if wanted.mime not in _FORMAT_ALIASES | answers or not _version_ok(wanted.params):
            raise NotAcceptable(
                f"_format {format_param!r} is not served: this server answers FHIR R4 JSON only "
                f"(_format=json or application/fhir+json; fhirVersion={FHIR_VERSION_PARAM})",
                "_format",
            )
        return
    if not accept or not accept.strip():
        return
    ranges = [r for r in parse_accept(accept) if r.quality > 0]
    if not any(r.mime in answers and _version_ok(r.params) for r in ranges):
        served = " or ".join(sorted(answers - {"*/*", "application/*"}))
        raise NotAcceptable(
            f"Accept {accept[:100]!r} is not served: this server answers {served} "
            f"with fhirVersion={FHIR_VERSION_PARAM}",
            "Accept",
        )


def check_content_version(content_type: str | None) -> None:
    """A request body declaring another FHIR version is not read as R4 (415)."""
    if not content_type:
        return
    [declared] = parse_accept(content_type)[:1] or [MediaRange("", {}, 1.0)]
    if not _version_ok(declared.params):
        raise UnsupportedMediaType(
            f"the body declares fhirVersion={declared.params['fhirversion']}; only {FHIR_VERSION_PARAM} "
            "is served",
            "Content-Type",
        )
