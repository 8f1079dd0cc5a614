"""Reject-frame archive: the frame (JPEG/PNG) and, when the backend gave maps, a heat-map
overlay for every archived decision, under a disk quota. When a new file would exceed the
quota, the oldest files are deleted first; an image that alone exceeds it is skipped. Writes
happen in the archive's own thread behind a bounded queue: a full queue skips the image (and
the daemon counts it) rather than delaying decisions."""

from __future__ import annotations

import errno
import queue
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.runtime.types import Decision


def heatmap_overlay(image_rgb: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Overlay of the max tile map on the image.

    Args:
        image_rgb: (H, W, 3) uint8.
        maps: (T, S, S) float32 per-tile maps (the max over tiles is resized to the image).
    Returns:
        (H, W, 3) uint8 BGR for cv2.imwrite.
    """
    import cv2

    m = np.max(maps, axis=0)
    m = cv2.resize(m, (image_rgb.shape[1], image_rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(np.min(m)), float(np.max(m))
    norm = np.zeros_like(m, dtype=np.uint8) if hi <= lo else ((m - lo) / (hi - lo) * 255).astype(np.uint8)
    heat = cv2.applyColorMap(norm, cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), 0.6, heat, 0.4, 0)


class Archive:
    """Disk-bounded archive of frames for rejected/review/fail-safe parts."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.dir)
        self.quota_bytes = int(cfg.quota_mb * 1024 * 1024)
        self._q: queue.Queue[Any] = queue.Queue(maxsize=cfg.queue)
        self._files: deque[tuple[Path, int]] = deque()
        self._used = 0
        self._thread: threading.Thread | None = None
        self.written = 0
        self.deleted = 0
        self.skipped = 0
        self.at_quota = False  # the last write deleted older images to make room (PLC STATUS.ARCHIVE_FULL)
        self.disk_full = False  # the last write failed for lack of space (ENOSPC/EDQUOT: FAULT_CODE 6)

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # account for what a previous run left, oldest first (by mtime, then name)
        existing = sorted((p for p in self.dir.rglob("*") if p.is_file()), key=lambda p: (p.stat().st_mtime_ns, p.name))
        for p in existing:
            size = p.stat().st_size
            self._files.append((p, size))
            self._used += size
        self._enforce(0)
        self._thread = threading.Thread(target=self._loop, name="archive", daemon=True)
        self._thread.start()

    def submit(self, d: Decision) -> bool:
        """Queue a decision's frame for archiving; False (skipped) if the queue is full."""
        if d.frame.image is None:
            return True  # nothing to store (missing frame): the event row is the record
        try:
            self._q.put_nowait(d)
            return True
        except queue.Full:
            self.skipped += 1
            return False

    def _enforce(self, incoming: int) -> None:
        self.at_quota = self._used + incoming > self.quota_bytes
        while self._files and self._used + incoming > self.quota_bytes:
            p, size = self._files.popleft()
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            self._used -= size
            self.deleted += 1

    def _write(self, path: Path, bgr: np.ndarray) -> None:
        import cv2

        ext = "." + self.cfg.format
        ok, buf = cv2.imencode(ext, bgr, [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else [])
        if not ok:
            return
        data = buf.tobytes()
        if len(data) > self.quota_bytes:
            self.skipped += 1
            return
        self._enforce(len(data))
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.disk_full = True
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(path)
        self.disk_full = False
        self._files.append((path, len(data)))
        self._used += len(data)
        self.written += 1

    def _loop(self) -> None:
        import cv2

        while True:
            d = self._q.get()
            if d is None:
                return
            f = d.frame
            path = self.path_for(d)
            try:
                self._write(path, cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
                if self.cfg.heatmap and d.maps is not None:
                    self._write(path.with_name(f"{path.stem}_heat{path.suffix}"), heatmap_overlay(f.image, d.maps))
            except (OSError, cv2.error):
                self.skipped += 1  # disk trouble must never reach the decision path

    def path_for(self, d: Decision) -> Path:
        """Where a submitted decision's frame is written (reported to outputs such as MQTT)."""
        f = d.frame
        return self.dir / f"{f.t_capture_ns}_{f.source_id}_p{f.part_id}_{d.failsafe or d.kind}.{self.cfg.format}"

    @property
    def used_bytes(self) -> int:
        return self._used

    def close(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=10.0)
            self._thread = None
