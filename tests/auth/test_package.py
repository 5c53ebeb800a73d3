"""The auth core stays web-free: importing every module loads no Flask and no API package."""

from __future__ import annotations

import subprocess
import sys

MODULES = ["errors", "replay", "keys", "dpop", "assertions", "attestation", "tokens", "caller"]


def test_auth_modules_import_no_web_framework() -> None:
    imports = "; ".join(f"import auth.{name}" for name in MODULES)
    forbidden = {"flask", "werkzeug", "sharing_api", "consent", "authlib"}
    check = f"import sys; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})))"
    result = subprocess.run(
        [sys.executable, "-c", f"{imports}; {check}"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
