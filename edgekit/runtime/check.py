"""``edgekit run --check``: everything a deploy config names, checked before the daemon starts.

Each item is ``ok``, ``deferred`` (a device this machine does not have: a camera node, a GPIO
chip, a station state folder that provisioning creates; checked by ``edgekit doctor`` on the
station) or ``error`` (a file the config needs is missing, a folder cannot be written, a chip
name matches no chip here). The bundle is verified (schema, hashes, signature with ``trust``)."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from edgekit.paths import shown

STATION_STATE = Path("/var/lib/edgekit")  # provision.sh creates it, owned by the service user


def _item(what: str, status: str, detail: str) -> dict[str, str]:
    return {"what": what, "status": status, "detail": detail}


def _writable_dir(what: str, path: Path) -> dict[str, str]:
    """A folder the daemon writes into (or creates): the nearest existing ancestor must be writable."""
    p = path if path.suffix == "" else path.parent
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if p.exists():
        if p.is_dir() and os.access(p, os.W_OK):
            return _item(what, "ok", f"{shown(p)} writable")
        return _item(what, "error", f"{shown(p)} is not a writable folder")
    if STATION_STATE == p or STATION_STATE in p.parents:
        if not STATION_STATE.exists():
            return _item(what, "deferred", f"{shown(p)}: station state folder, created by provision.sh on the device")
    if probe.is_dir() and os.access(probe, os.W_OK):
        return _item(what, "ok", f"{shown(p)} will be created (in {shown(probe)})")
    return _item(what, "error", f"{shown(p)} cannot be created ({shown(probe)} is not writable)")


def _chip(what: str, chip: str) -> dict[str, str]:
    from edgekit.errors import DeviceError
    from edgekit.runtime import gpiochip

    if not gpiochip.list_chips():
        return _item(what, "deferred", f"chip {chip!r}: no GPIO chip on this machine (checked on the device by doctor)")
    try:
        return _item(what, "ok", f"chip {chip!r} is {gpiochip.resolve_chip(chip, who=what).describe()}")
    except DeviceError as exc:
        return _item(what, "error", str(exc).removeprefix(f"{what}: "))


def check_resources(cfg: Any) -> list[dict[str, str]]:
    """Every file, folder and device ``cfg`` (a resolved RunConfig) names."""
    out: list[dict[str, str]] = []
    src = cfg.source
    kind = src.type
    if kind in ("video", "folder"):
        p = Path(src.path)
        if kind == "video" and p.is_file():
            import cv2

            cap = cv2.VideoCapture(str(p))
            ok = cap.isOpened() and cap.read()[0]
            cap.release()
            out.append(_item("source.path", "ok" if ok else "error",
                             f"{shown(p)}: {'video opens' if ok else 'OpenCV cannot read a frame from it'}"))
        elif kind == "folder" and p.is_dir():
            from edgekit.data.dataset import list_images

            n = len(list_images(p))
            out.append(_item("source.path", "ok" if n else "error", f"{shown(p)}: {n} image(s)"))
        else:
            out.append(_item("source.path", "error", f"{shown(p)} does not exist"
                             + (" (make demo writes it)" if "demo-out" in str(p) else "")))
    elif kind == "usb":
        dev = src.device
        if isinstance(dev, str) and not dev.isdigit():
            p = Path(dev)
            if p.is_file():
                out.append(_item("source.device", "ok", f"{shown(p)}: a video file standing in for the camera"))
            elif p.exists():
                out.append(_item("source.device", "ok", f"{shown(p)} present"))
            elif not glob.glob("/dev/video*"):
                out.append(_item("source.device", "deferred", f"{dev}: no camera on this machine (checked on the device)"))
            else:
                out.append(_item("source.device", "error", f"{dev} does not exist (cameras here: "
                                 f"{', '.join(sorted(glob.glob('/dev/video*')))})"))
        else:
            node = f"/dev/video{int(dev)}"
            st = "ok" if Path(node).exists() else "deferred"
            out.append(_item("source.device", st, f"{node} {'present' if st == 'ok' else 'not on this machine (checked on the device)'}"))
    elif kind in ("csi", "gstreamer"):
        out.append(_item("source", "deferred", f"{kind} camera: opened and timed by `edgekit doctor` on the device"))
    trig = getattr(src, "trigger", None)
    if trig is not None and trig.type == "gpiod":
        out.append(_chip("source.trigger.chip", trig.chip))
    enc = cfg.encoder
    if enc is not None and enc.type == "gpiod":
        out.append(_chip("encoder.chip", enc.chip))
    for i, o in enumerate(cfg.outputs):
        name = f"outputs[{i}] ({o.type})"
        if o.type == "gpiod":
            out.append(_chip(f"{name}.chip", o.chip))
        elif o.type == "jetson_gpio":
            jetson = Path("/etc/nv_tegra_release").exists()
            out.append(_item(name, "ok" if jetson else "deferred",
                             "Jetson board" if jetson else "not a Jetson here (checked on the device)"))
        for key in ("outbox_path", "cert_dir"):
            v = getattr(o, key, None)
            if isinstance(v, str) and v:
                out.append(_writable_dir(f"{name}.{key}", Path(v)))
    out.append(_writable_dir("events.path", Path(cfg.events.path)))
    if cfg.archive.enabled:
        out.append(_writable_dir("archive.dir", Path(cfg.archive.dir) / "x"))
    for t in getattr(cfg, "trust", None) or []:
        out.append(_item("trust", "ok" if Path(t).exists() else "error", f"{shown(t)}"
                         + ("" if Path(t).exists() else " does not exist")))
    return out
