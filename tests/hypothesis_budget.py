"""How many examples the property tests run: the suite's budget, or the long one (issue 9).

``make test`` runs the ``suite`` profile, sized so the whole suite stays under eight minutes on an idle
two-core machine. ``HYPOTHESIS_PROFILE=long`` runs the ``long`` profile: every budget set with
:func:`examples` at its long value (what these tests ran before issue 9), and every property without a
budget of its own at ``LONG_DEFAULT_EXAMPLES`` instead of Hypothesis's 100, e.g.::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/policy/test_stateful.py

Neither profile keeps a database of examples between runs (tests that set ``database=None`` never did);
none is derandomized unless the test says so, so every suite run draws new examples and the runs add up.
Where a test's suite budget is smaller than its long one, the test says why the smaller one is enough.
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILES = ("suite", "long")
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "suite")
if PROFILE not in PROFILES:
    raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: expected one of {', '.join(PROFILES)}")

LONG_DEFAULT_EXAMPLES = 500


def examples(*, suite: int, long: int) -> int:
    """The ``max_examples`` (or step count) of the profile in force."""
    if suite > long:
        raise ValueError(f"the suite budget ({suite}) exceeds the long one ({long})")
    return long if PROFILE == "long" else suite


def load() -> None:
    """Register both profiles with Hypothesis and load the one ``HYPOTHESIS_PROFILE`` names."""
    settings.register_profile("suite", settings.get_profile("default"))
    settings.register_profile("long", max_examples=LONG_DEFAULT_EXAMPLES)
    settings.load_profile(PROFILE)
