"""Simulated triggered camera on a virtual conveyor.

Parts pass the camera every ``spacing_mm``; the belt position comes from the simulated encoder
(``SimEncoder``: constant speed, ticks/mm). At each part's trigger count the camera delivers one
frame (a dataset test image with a known label) carrying the latched encoder count, exactly like
a hardware-triggered camera. Images are decoded once at ``open()`` so the per-frame path does no
file I/O. Faults can be injected per part: unplugged camera (DeviceError, frames accounted at
reconnect), dropped image (trigger without image), blank (black) and corrupt frames."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgekit.config.base import StrictModel
from edgekit.errors import ConfigError, DeviceError
from edgekit.runtime.capture.base import CAMERAS, Camera
from edgekit.runtime.encoder import SimEncoder
from edgekit.runtime.types import Frame


class SimFaults(StrictModel):
    """Part numbers (or [first, last) ranges) at which faults are injected."""

    disconnect: list[tuple[int, int]] = Field(default_factory=list)  # camera unplugged for these parts
    drop: list[int] = Field(default_factory=list)  # trigger fires, image never arrives
    blank: list[int] = Field(default_factory=list)  # all-black frame
    corrupt: list[int] = Field(default_factory=list)  # undecodable frame


class SimCameraConfig(StrictModel):
    type: Literal["sim"] = "sim"
    name: str = "sim0"
    dataset: str  # MVTec layout; test/ images with labels (good / defect types)
    parts: int = Field(200, ge=1)
    spacing_mm: float = Field(10.0, gt=0)  # part pitch on the belt
    first_part_mm: float = Field(20.0, ge=0)  # belt position of part 0 at the camera
    reject_distance_mm: float = Field(300.0, gt=0)  # camera → reject station (the checker's truth)
    seed: int = 0
    defect_fraction: float | None = Field(None, ge=0, le=1)  # None: the dataset's own mix
    faults: SimFaults = SimFaults()


@dataclass(frozen=True)
class PartTruth:
    """Ground truth of one simulated part."""

    part_id: int
    label: int
    defect_type: str
    file: str
    trigger_count: int
    trigger_ns: int
    station_count: int  # encoder count when the part is in front of the reject actuator
    station_ns: int


@CAMERAS.register("sim")
class SimCamera(Camera):
    """Triggered camera on the simulated conveyor (needs the ``sim`` encoder)."""

    config_model = SimCameraConfig
    needs_encoder = True
    triggered = True

    def __init__(self, cfg: SimCameraConfig, encoder: Any = None) -> None:
        super().__init__(cfg)
        if not isinstance(encoder, SimEncoder):
            raise ConfigError("source.type 'sim' needs an encoder section with type: sim (the virtual conveyor)")
        self.encoder = encoder
        tpm = encoder.cfg.ticks_per_mm
        self.pitch_counts = int(round(cfg.spacing_mm * tpm))
        self.first_counts = int(round(cfg.first_part_mm * tpm))
        self.station_counts = int(round(cfg.reject_distance_mm * tpm))
        if self.pitch_counts < 1:
            raise ConfigError("source.spacing_mm × encoder.ticks_per_mm must be at least 1 tick")
        self.images: list[np.ndarray] = []
        self.samples: list[tuple[int, str, str]] = []
        self.order: list[int] = []
        self.truth: list[PartTruth] = []
        self._k = 0
        self._down_from: int | None = None
        self._loaded = False

    @property
    def parts_per_s(self) -> float:
        return self.encoder.ticks_per_s / self.pitch_counts

    def _load(self) -> None:
        from edgekit.data.dataset import scan_dataset
        from edgekit.data.images import read_image

        idx = scan_dataset(self.cfg.dataset, require_test=True)
        for s in idx.test:
            self.images.append(read_image(s.path))
            self.samples.append((s.label, s.defect_type, str(s.path.relative_to(idx.root))))
        rng = random.Random(self.cfg.seed)
        good = [i for i, s in enumerate(self.samples) if s[0] == 0]
        bad = [i for i, s in enumerate(self.samples) if s[0] == 1]
        if self.cfg.defect_fraction is None or not good or not bad:
            self.order = [rng.randrange(len(self.samples)) for _ in range(self.cfg.parts)]
        else:
            self.order = [rng.choice(bad) if rng.random() < self.cfg.defect_fraction else rng.choice(good)
                          for _ in range(self.cfg.parts)]
        self._loaded = True

    def open(self) -> None:
        if not self._loaded:
            self._load()  # before the belt starts: the daemon opens the encoder after the camera
        if self.encoder.t0_ns is not None and self._down_from is not None and self._in_disconnect(self._part_now()):
            raise DeviceError(f"{self.name}: simulated camera still unplugged")

    def _trigger_count(self, k: int) -> int:
        return self.first_counts + k * self.pitch_counts

    def _part_now(self) -> int:
        """Index of the next part to reach the camera at the current belt position."""
        c = self.encoder.count()
        return max(0, -(-(c - self.first_counts) // self.pitch_counts))

    def _in_disconnect(self, k: int) -> bool:
        return any(a <= k < b for a, b in self.cfg.faults.disconnect)

    def _truth(self, k: int) -> PartTruth:
        label, dtype, file = self.samples[self.order[k]]
        tc = self._trigger_count(k)
        sc = tc + self.station_counts
        t = PartTruth(k, label, dtype, file, tc, self.encoder.time_of_count(tc), sc, self.encoder.time_of_count(sc))
        self.truth.append(t)
        return t

    def missed_frames(self, down_since_ns: int, now_ns: int) -> list[Frame]:
        """Empty frames for the parts that passed while the camera was unplugged (their trigger
        and latched count are known from the trigger input)."""
        if self._down_from is None:
            return []
        out = []
        end = min(self._part_now(), self.cfg.parts)
        for k in range(self._down_from, end):
            t = self._truth(k)
            out.append(Frame(k, self.name, t.trigger_ns, None, t.trigger_count, "camera_down: camera unplugged",
                             {"label": t.label, "file": t.file}))
        self._k = max(self._k, end)
        self._down_from = None
        return out

    def read(self) -> Frame | None:
        k = self._k
        if k >= self.cfg.parts:
            return None
        if self._in_disconnect(k):
            self._down_from = k
            raise DeviceError(f"{self.name}: simulated camera unplugged at part {k}")
        t_ns = self.encoder.time_of_count(self._trigger_count(k))
        while True:  # sleep until the part reaches the camera (coarse, then fine)
            left = t_ns - time.monotonic_ns()
            if left <= 0:
                break
            time.sleep(left / 1e9 if left > 2_000_000 else left / 2e9)
        self._k = k + 1
        t = self._truth(k)
        meta = {"label": t.label, "file": t.file, "defect_type": t.defect_type}
        f = self.cfg.faults
        if k in f.drop:
            return Frame(k, self.name, t.trigger_ns, None, t.trigger_count, "missing_frame: image never arrived", meta)
        if k in f.corrupt:
            return Frame(k, self.name, t.trigger_ns, None, t.trigger_count, "decode_error: corrupt frame", meta)
        img = self.images[self.order[k]]
        if k in f.blank:
            img = np.zeros_like(img)
        return Frame(k, self.name, t.trigger_ns, img, t.trigger_count, None, meta)
