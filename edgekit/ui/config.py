"""The ``ui:`` block of the deploy config (pure pydantic: no server import)."""

from __future__ import annotations

import ipaddress
import os

from pydantic import Field, SecretStr, model_validator

from edgekit.config.base import StrictModel

TOKEN_ENV = "EDGEKIT_UI_TOKEN"
PASSWORD_ENV = "EDGEKIT_UI_PASSWORD"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: treat as reachable from the network


class UiConfig(StrictModel):
    enabled: bool = False
    # loopback by default; any other address needs a token or basic auth for viewing too
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)  # 0 = any free port (tests)
    # actions (reset fault, enable/disable rejection) need this token everywhere; off loopback the
    # page itself needs it (or basic auth). Or set the EDGEKIT_UI_TOKEN environment variable.
    token: SecretStr | None = None
    user: str | None = None  # basic auth for viewing; password here or in EDGEKIT_UI_PASSWORD
    password: SecretStr | None = None
    refresh_ms: float = Field(250.0, ge=50, le=10000)  # event-log poll and push period
    recent: int = Field(60, ge=1, le=1000)  # decisions in the strip
    rejects: int = Field(12, ge=0, le=200)  # archived rejects shown (archive.enabled)
    histogram_window_s: float = Field(3600.0, gt=0, le=7 * 86400)
    histogram_bins: int = Field(40, ge=4, le=400)

    def resolved_token(self) -> str | None:
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        return os.environ.get(TOKEN_ENV) or None

    def resolved_password(self) -> str | None:
        if self.password is not None and self.password.get_secret_value():
            return self.password.get_secret_value()
        return os.environ.get(PASSWORD_ENV) or None

    @model_validator(mode="after")
    def _auth_off_loopback(self) -> UiConfig:
        if self.user is not None and self.resolved_password() is None:
            raise ValueError(f"ui.user is set but no password: set ui.password or {PASSWORD_ENV}")
        if self.enabled and not is_loopback(self.host) and self.resolved_token() is None and self.user is None:
            raise ValueError(f"ui.host {self.host!r} is not loopback: the page needs a token or basic auth there; "
                             f"set ui.token (or {TOKEN_ENV}) or ui.user + ui.password, or keep ui.host 127.0.0.1")
        return self
