"""Network checks shared by the server-type outputs (Modbus server, OPC UA) and ``edgekit doctor``:
can this process listen on host:port, can it reach host:port — each answered with one line that
names the address and the fix, never a traceback."""

from __future__ import annotations

import errno
import socket


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def bind_problem(host: str, port: int, what: str) -> str | None:
    """None when ``host:port`` can be listened on now, else why not and the fix (one line).
    ``what`` names the config entry (``outputs.plc``)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's listener does
        try:
            s.bind((host, port))
        except PermissionError:
            return (f"{what}: listening on {host}:{port} needs CAP_NET_BIND_SERVICE (ports below 1024); add "
                    "AmbientCapabilities=CAP_NET_BIND_SERVICE to the service, or configure a port >= 1024")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"{what}: {host}:{port} is already in use by another process; stop it "
                        f"(ss -ltnp 'sport = :{port}' shows which) or configure another port")
            if exc.errno == errno.EADDRNOTAVAIL:
                return (f"{what}: {host} is not an address of this machine; set host to one of its interface "
                        "addresses, 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
            return f"{what}: cannot listen on {host}:{port} ({exc.strerror or exc}); check host and port"
    return None


def connect_problem(host: str, port: int, what: str, timeout_s: float = 2.0) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout_s``, else why not."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        return (f"{what}: {host}:{port} refused the connection (nothing listens there); start the service or "
                "correct host/port")
    except TimeoutError:
        return (f"{what}: {host}:{port} did not answer within {timeout_s:.0f} s; check the address, the cable "
                "and any firewall between")
    except OSError as exc:
        return f"{what}: cannot reach {host}:{port} ({exc.strerror or exc}); check the address and the network"
    return None
