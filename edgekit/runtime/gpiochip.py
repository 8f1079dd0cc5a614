"""One place that turns a configured GPIO chip name into the device path libgpiod opens.

A station config may name a chip three ways: a path (``/dev/gpiochip0``), a kernel name
(``gpiochip0``) or a label (``tegra234-gpio``, what ``gpiodetect`` prints in brackets). Labels
are stable across boots and JetPack releases; the N in gpiochipN is not (it follows probe order),
so the pin map and doctor recommend labels. ``gpiod.request_lines(path, ...)`` opens its first
argument literally, so every user of a chip (outputs, encoder, hardware trigger, doctor) resolves
it here first and logs what it resolved to."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from edgekit.errors import DeviceError

log = logging.getLogger("edgekit.gpio")

DEV_DIR = "/dev"  # where gpiochipN nodes are looked for (tests point it at a fake tree)


@dataclass(frozen=True)
class ChipRef:
    path: str
    name: str
    label: str
    num_lines: int

    def describe(self) -> str:
        return f"{self.path} ({self.name}, label {self.label}, {self.num_lines} lines)"


def list_chips() -> list[str]:
    """Paths of the gpiochip character devices present, in numeric order."""
    paths = glob.glob(os.path.join(DEV_DIR, "gpiochip*"))

    def key(p: str) -> tuple[int, str]:
        tail = os.path.basename(p)[len("gpiochip"):]
        return (int(tail) if tail.isdigit() else 1 << 30, p)

    return sorted(paths, key=key)


def _info(path: str) -> ChipRef:
    import gpiod

    with gpiod.Chip(path) as chip:
        info = chip.get_info()
    return ChipRef(path, info.name, info.label, info.num_lines)


def resolve_chip(chip: str, who: str = "gpio", *, chips: Callable[[], list[str]] | None = None,
                 info: Callable[[str], tuple[str, str, int]] | None = None) -> ChipRef:
    """Resolve a path, ``gpiochipN`` or label to the chip's device; DeviceError (one line, with
    the chips present and the fix) when there is none. ``who`` names the config section.
    ``chips`` / ``info`` (doctor's probes) replace the /dev scan and the gpiod query."""
    if info is None:
        try:
            import gpiod
        except ImportError:
            raise DeviceError(f"{who}: GPIO needs the libgpiod v2 Python bindings: pip install 'gpiod>=2.1'") from None

        def info(path: str) -> tuple[str, str, int]:
            if not gpiod.is_gpiochip_device(path):
                raise FileNotFoundError(f"{path} is not a gpiochip device")
            r = _info(path)
            return r.name, r.label, r.num_lines
    chips = chips or list_chips
    chip = str(chip).strip()
    if chip.startswith("/"):
        candidates = [chip]
    elif chip.startswith("gpiochip") and chip[len("gpiochip"):].isdigit():
        candidates = [os.path.join(DEV_DIR, chip)]
    else:
        candidates = []
    for path in candidates:
        try:
            ref = ChipRef(path, *info(path))
        except FileNotFoundError:
            break
        except PermissionError:
            raise DeviceError(f"{who}: {path}: permission denied; add the service user to the gpio group and "
                              "install firmware_scripts/99-edgekit-gpio.rules (provision.sh)") from None
        except OSError as exc:
            raise DeviceError(f"{who}: cannot open {path} ({exc.strerror or exc})") from None
        log.info("%s: chip %r is %s", who, chip, ref.describe())
        return ref
    present: list[ChipRef] = []
    for path in chips():
        try:
            present.append(ChipRef(path, *info(path)))
        except OSError:
            continue
    if not candidates:  # a label
        for ref in present:
            if ref.label == chip:
                log.info("%s: chip %r is %s", who, chip, ref.describe())
                return ref
    have = ", ".join(f"{r.name} [{r.label}]" for r in present) or "none"
    what = f"no gpiochip with label {chip!r}" if not candidates else f"{candidates[0]} is not a gpiochip device"
    raise DeviceError(f"{who}: {what} (chips here: {have}); set chip to a path, gpiochipN or label from "
                      "`gpiodetect` (Orin 40-pin header: tegra234-gpio; docs/deploy-jetson.md)")
