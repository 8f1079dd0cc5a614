"""The network the shipped ``edgekit.service`` lets the daemon reach, and the config's peers
outside it.

The unit sets ``IPAddressDeny=any`` with ``IPAddressAllow=`` loopback, link-local and the private
ranges (RFC 1918, IPv6 unique-local): a PLC, an MQTT broker, an RTSP camera or a Prometheus
server on the plant network works unchanged, the internet does not. A peer the config names by a
literal address outside those ranges would fail with EPERM on connect, so the daemon says so at
start, naming the setting and the drop-in that allows it. Host names are not resolved here (a
start must not wait on DNS); the unit's allow list applies to what they resolve to."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

# IPAddressAllow= of firmware_scripts/edgekit.service, in systemd's spelling (a test checks both agree)
UNIT_IP_ALLOW = ("localhost", "link-local", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
_NETS = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10",
                                           *UNIT_IP_ALLOW[2:])]


def peers(cfg: Any) -> list[tuple[str, str]]:
    """(config key, host) of every remote endpoint the daemon connects to: Modbus/MQTT outputs,
    a network camera URL."""
    out = []
    for i, o in enumerate(cfg.outputs):
        host = getattr(o, "host", None)
        if isinstance(host, str) and host:
            out.append((f"outputs[{i}].host ({o.name})", host))
    url = getattr(cfg.source, "url", None)
    if isinstance(url, str) and "://" in url:
        host = urlsplit(url).hostname
        if host:
            out.append(("source.url", host))
    return out


def allowed(host: str) -> bool | None:
    """True/False for a literal address inside/outside the unit's allow list; None for a name."""
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return any(addr in n for n in _NETS if n.version == addr.version)


def outside_unit_notes(cfg: Any) -> list[str]:
    """One note per configured peer the shipped unit's IPAddressAllow= does not cover."""
    return [f"{key} {host} is outside edgekit.service's IPAddressAllow (loopback, link-local, private ranges): "
            f"connections to it are refused; allow it in a drop-in (systemctl edit edgekit: [Service] "
            f"IPAddressAllow={host})" for key, host in peers(cfg) if allowed(host) is False]


__all__ = ["UNIT_IP_ALLOW", "allowed", "outside_unit_notes", "peers"]
