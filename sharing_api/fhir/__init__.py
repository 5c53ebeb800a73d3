"""FHIR at the edge: inbound validation, VKP rules, bundles and search-parameter parsing."""
