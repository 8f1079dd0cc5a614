"""Recipes and deploy examples shipped inside the package (``edgekit/recipes``; ``recipes/`` in a
checkout links there), their measured figures, ``--set key.path=value`` overrides and the
commented deploy config written by ``edgekit init-config``."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from edgekit.errors import ConfigError

DATASETS = (("elpv_mono", "ELPV mono"), ("elpv_poly", "ELPV poly"), ("fabric", "fabric"))


def recipes_dir() -> Path:
    """The shipped recipes folder (a real directory: the package is installed unzipped)."""
    return Path(str(resources.files("edgekit").joinpath("recipes")))


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def training_names() -> list[str]:
    return _names(recipes_dir())


def deploy_names() -> list[str]:
    return _names(recipes_dir() / "deploy")


def shipped_path(name: str) -> Path | None:
    """A shipped file by name: ``rd-lite0``, ``rd-lite0.yaml``, ``usb-modbus`` or ``deploy/usb-modbus``."""
    n = name[:-5] if name.endswith(".yaml") else name
    d = recipes_dir()
    if n.startswith("deploy/"):
        n = n[len("deploy/"):]
        return d / "deploy" / f"{n}.yaml" if n in deploy_names() else None
    if n in training_names():
        return d / f"{n}.yaml"
    if n in deploy_names():
        return d / "deploy" / f"{n}.yaml"
    return None


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A path to an existing file wins; otherwise a shipped training recipe's name."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    s = str(name_or_path)
    if s in training_names() or (s.endswith(".yaml") and s[:-5] in training_names() and "/" not in s):
        return recipes_dir() / f"{s.removesuffix('.yaml')}.yaml"
    shipped = ", ".join(training_names())
    if "/" in s or s.endswith((".yaml", ".yml")):
        raise ConfigError(f"{s}: file not found; give a recipe file or a shipped recipe name ({shipped}); "
                          "`edgekit recipes` lists them")
    raise ConfigError(f"recipe {s!r}: not a file and not a shipped recipe; shipped: {shipped} "
                      "(`edgekit recipes show NAME > my.yaml` writes one out to edit)")


def measured() -> dict[str, Any]:
    """The benchmark figures of the shipped recipes (benchmarks/README.md tables)."""
    p = recipes_dir() / "measured.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {"recipes": {}}


def recipe_table() -> list[dict[str, Any]]:
    """One row per shipped training recipe: method, backbone, input size, epochs, measured figures."""
    from edgekit.config.recipe import load_recipe

    meas = measured()
    rows = []
    for name in training_names():
        r = load_recipe(recipes_dir() / f"{name}.yaml")
        rows.append({"name": name, "method": r.method.get("type"), "backbone": r.backbone.name,
                     "input": r.input.size, "epochs": r.train.epochs,
                     "measured": meas.get("recipes", {}).get(name)})
    return rows


def format_recipe_table(rows: list[dict[str, Any]], meas: dict[str, Any]) -> str:
    """Plain-text table for ``edgekit recipes``."""
    lat = meas.get("latency_from", "elpv_mono")
    head = ["recipe", "method", "backbone", "input", "epochs"] + [f"AUROC {label}" for _, label in DATASETS] \
        + ["ORT ms fp32/int8"]
    table = [head]
    for r in rows:
        m = r["measured"]
        if not m:
            figs = ["not measured"] + [""] * len(DATASETS)
        else:
            figs = []
            for key, _ in DATASETS:
                d = m.get(key) if isinstance(m.get(key), dict) else None
                figs.append(f"{d['image_auroc_fp32']:.3f} ({d['epochs']} ep)" if d else "not measured")
            d = m.get(lat)
            figs.append(f"{d['ort_ms_fp32']} / {d['ort_ms_int8']}" if d else "not measured")
        table.append([r["name"], str(r["method"]), r["backbone"], f"{r['input']}²", str(r["epochs"])] + figs)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"measured: {meas.get('source', 'no benchmark table shipped')}; ORT latency from the "
                 f"{dict(DATASETS).get(lat, lat)} run (fp32 image AUROC; epochs as benchmarked).")
    for r in rows:  # recipes measured in another run (another machine): said, not mixed in silently
        if r["measured"] and r["measured"].get("source"):
            lines.append(f"  {r['name']}: {r['measured']['source']}")
    lines.append("deploy examples: " + ", ".join(deploy_names()) + "  (edgekit recipes show NAME > station.yaml)")
    lines.append("train one: edgekit train NAME --data DIR --out RUN [--set train.epochs=5]")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- --set
def parse_sets(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``key.path=value`` pairs; values are read as YAML scalars/lists (``5``, ``true``, ``[1, 2]``,
    ``none`` stays the string ``none``, ``null`` is null)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: give key.path=value, e.g. --set train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key] = value
    return out


def apply_sets(data: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    from edgekit.config.run import set_dotted

    for k, v in sets.items():
        set_dotted(data, k, v)
    return data


def load_recipe_with_sets(name_or_path: str | Path, sets: dict[str, Any]) -> Any:
    """The recipe (name or file) with ``--set`` overrides, validated like the YAML itself."""
    from edgekit.config.base import read_yaml
    from edgekit.config.recipe import recipe_from_dict

    path = resolve_recipe(name_or_path)
    data = apply_sets(read_yaml(path), sets)
    return recipe_from_dict(data, f"{path}" + (" (with --set)" if sets else ""))


# ----------------------------------------------------------------------------- init-config
CAMERAS: dict[str, str] = {
    "usb": """\
source:
  type: usb
  name: cam0
  device: /dev/video0     # or an index (0); `v4l2-ctl --list-devices` shows them
  width: 1280
  height: 720
  fps: 30
  fourcc: MJPG
  exposure: 50            # V4L2 units of 100 µs = 5 ms: short enough for a moving belt
""",
    "csi": """\
source:
  type: csi               # Jetson CSI camera through nvarguscamerasrc
  name: cam0
  sensor_id: 0
  width: 1920
  height: 1080
  fps: 30
""",
    "gstreamer": """\
source:
  type: gstreamer
  name: cam0
  url: rtsp://192.168.10.30:554/stream   # the camera's stream (or give pipeline: "... ! appsink")
  latency_ms: 100
""",
    "folder": """\
source:
  type: folder            # commissioning: replay a folder of images
  name: cam0
  path: images            # relative to this file
  rate_hz: 5
""",
    "video": """\
source:
  type: video             # commissioning: replay a recorded video
  name: cam0
  path: line.mp4          # relative to this file
  rate_hz: 10
""",
}

OUTPUTS: dict[str, str] = {
    "gpiod": """\
  - type: gpiod           # reject valve / stack light on GPIO lines (libgpiod v2)
    name: gpio
    chip: /dev/gpiochip0  # path, gpiochipN or the chip's label
    lines: {reject: 17, heartbeat: 22}   # line offsets; add review: N for a review gate
""",
    "jetson_gpio": """\
  - type: jetson_gpio     # Jetson 40-pin header (Jetson.GPIO)
    name: jetson_gpio
    mode: BOARD
    pins: {reject: 15, heartbeat: 16}
""",
    "modbus": """\
  - type: modbus          # this station writes its results into the PLC (Modbus TCP client; docs/plc.md)
    name: plc
    host: 192.168.10.20   # the PLC's address
    port: 502
    unit: 1
""",
    "modbus_server": """\
  - type: modbus_server   # the PLC polls this station (Modbus TCP server; register map: docs/plc.md)
    name: modbus_server
    host: 127.0.0.1       # the PLC's network: 0.0.0.0 or this station's address on it
    port: 502             # below 1024 needs CAP_NET_BIND_SERVICE (AmbientCapabilities= in the unit; docs/plc.md)
    fifo_depth: 16        # results kept for a PLC that polls slowly
    word_order: ABCD      # 32-bit values; CDAB for PLCs that want the low word first
""",
    "opcua": """\
  - type: opcua           # OPC UA server: Inspection object, methods ResetFault/Enable/Disable
    name: opcua
    endpoint: "opc.tcp://127.0.0.1:4840"   # beyond loopback: security policy + certificates
""",
    "mqtt": """\
  - type: mqtt            # events to MES / quality systems (docs/mqtt.md)
    name: mqtt
    host: 127.0.0.1       # the broker
    port: 1883
    prefix: edgekit
    station: line-1
""",
    "fake_gpio": """\
  - type: fake_gpio       # dry run: edges recorded in memory, nothing is driven
    name: fake_gpio
""",
}

_TAIL = """\
# inference
backend: {{type: onnxruntime, device: cpu, precision: fp32, threads: 2}}   # tensorrt on a Jetson

# decisions: the band comes from the bundle's calibration unless overridden here
decision:
  deadline_ms: 250        # capture -> decision; a later part is failed safe (rejected)
  review_as: review       # review parts: pulse the review line (or: reject / accept)

# reject timing: camera -> reject station
scheduler:
  mode: time              # time: delay_ms after capture; encoder: distance in ticks; plc: the PLC times it
  delay_ms: 800
  pulse_ms: 30

outputs:
{outputs}
# every decision, durable (SQLite WAL); kept 90 days
events: {{path: /var/lib/edgekit/events.db}}

# images of rejected / review / fail-safe parts with heat maps, under a disk quota
archive: {{enabled: true, dir: /var/lib/edgekit/archive, quota_mb: 2048}}

# Prometheus /metrics and /healthz
metrics: {{enabled: true, host: 127.0.0.1, port: 9108}}

# operator page (pip install 'edgekit[ui]'): http://127.0.0.1:8080/ on the station. Another
# address needs a token or basic auth; actions (reset fault, enable/disable rejection) always
# need the token: set EDGEKIT_UI_TOKEN in the service's environment rather than here.
ui:
  enabled: {ui}
  host: 127.0.0.1
  port: 8080
"""


def init_config(camera: str, outputs: list[str], bundle: str = "/var/lib/edgekit/bundles/current",
                ui: bool = True) -> str:
    """A commented deploy config for ``camera`` and ``outputs`` (validated before it is returned)."""
    from edgekit.config.base import parse_model
    from edgekit.config.run import RunConfig

    if camera not in CAMERAS:
        raise ConfigError(f"--camera {camera}: use one of {', '.join(CAMERAS)}")
    if not outputs:
        outputs = ["gpiod"]
    for o in outputs:
        if o not in OUTPUTS:
            raise ConfigError(f"--output {o}: use one of {', '.join(OUTPUTS)}")
    text = (f"# edgekit deploy config: {camera} camera -> {', '.join(outputs)}.\n"
            "# Written by `edgekit init-config`. Edit the addresses and lines, then check it on the station:\n"
            "#   edgekit run --check station.yaml   (the bundle must exist)\n"
            "#   edgekit doctor station.yaml\n"
            "# Every key and its default: edgekit/config/run.py. Relative paths are relative to this file.\n\n"
            "# the bundle to run (`edgekit build RUN --out DIR`; firmware_scripts/install-bundle.sh puts it here)\n"
            f"bundle: {bundle}\n\n"
            "# camera\n" + CAMERAS[camera] + "\n"
            + _TAIL.format(outputs="".join(OUTPUTS[o] for o in outputs), ui="true" if ui else "false"))
    data = yaml.safe_load(text)
    # the template must validate; an output type this install lacks is named with the fix
    from edgekit.runtime.outputs import OUTPUTS as REGISTERED

    missing = [o for o in outputs if o not in REGISTERED.names()]
    if missing:
        raise ConfigError(f"--output {missing[0]}: this edgekit has no such output "
                          f"(available: {', '.join(REGISTERED.names())}); upgrade edgekit")
    parse_model(RunConfig, data, "init-config template")
    return text
