"""File names the way every part of edgekit stores, compares and shows them.

Linux file names are bytes. One copied from a Windows share can hold Latin-1 (``caf\\xe9.png``),
which Python decodes with surrogate escapes (``'caf\\udce9.png'``): fine for ``open``, fatal for
``str.encode('utf-8')``, SQLite, a UTF-8 terminal or a JSON file written as UTF-8. Rules:

- hash and compare the bytes: ``os.fsencode(path)``;
- store the escaped text (``stored``: valid UTF-8, reversible with ``from_stored``);
- show ``shown(path)``: undecodable bytes as ``\\xe9``, never an exception;
- store paths one way: absolute and normalised (``..`` and symlinks resolved), so a run trained
  from any working directory, through ``a/b/../data`` or a symlink, records the same names."""

from __future__ import annotations

import os
from pathlib import Path


def shown(path: str | os.PathLike[str] | bytes) -> str:
    """Printable form of a file name (undecodable bytes as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def stored(path: str | os.PathLike[str]) -> str:
    """A file name as text that encodes to UTF-8 anywhere (JSON, SQLite), reversibly: surrogate
    escapes become \\xNN and a literal backslash is doubled."""
    text = os.fsencode(path).decode("utf-8", "surrogateescape").replace("\\", "\\\\")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def from_stored(text: str) -> Path:
    """Inverse of ``stored``."""
    out = bytearray()
    b = text.encode("utf-8")
    i = 0
    while i < len(b):
        if b[i:i + 2] == b"\\\\":
            out += b"\\"
            i += 2
        elif b[i:i + 2] == b"\\x" and i + 4 <= len(b):
            try:
                out.append(int(b[i + 2:i + 4], 16))
                i += 4
                continue
            except ValueError:
                out += b[i:i + 1]
                i += 1
        else:
            out += b[i:i + 1]
            i += 1
    return Path(os.fsdecode(bytes(out)))


def canonical(path: str | os.PathLike[str]) -> Path:
    """Absolute, ``..`` and symlinks resolved: the one form stored paths take."""
    return Path(path).resolve()
