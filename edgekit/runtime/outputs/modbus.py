"""Modbus TCP output to a PLC (pymodbus 3.x sync client), implementing the register map and
handshake of ``docs/plc.md`` (client mode, map version 2):

block A (edgekit → PLC, holding registers ``base_address`` + 0..17): HEARTBEAT, STATUS bits
(READY, FAULT, REVIEW_ENABLED, ARCHIVE_FULL, ACK_TIMEOUT), RESULT_SEQ, PART_ID (u32), DECISION,
SCORE (f32), SCORE_PERMILLE, LATENCY_MS, ENCODER_COUNT (u32), FAULT_CODE, REJECT_COUNT,
PART_COUNT, MAP_VERSION, TARGET_COUNT (u32, PLC-timed rejection) — 32-bit values high word first;
18..23 reserved. Block B (PLC → edgekit, + 24..31): PLC_HEARTBEAT, ACK_SEQ, CMD (ENABLE,
RESET_FAULT), PLC_PART_ID (u32). (Map version 1 had no TARGET_COUNT and block B at 16.)

A result is one FC16 write of block A; a heartbeat tick writes offsets 0–1; block B is read
(FC03, 8 registers) after each write. Optional coils (``reject_coil``, ``heartbeat_coil``) mirror
the lines for PLCs that want them. All network I/O runs in this output's own worker thread
behind a small queue, so a slow or absent PLC never delays a GPIO pulse; a lost connection is
retried with exponential backoff and the current state is rewritten after reconnecting."""

from __future__ import annotations

import collections
import queue
import struct
import threading
import time
from typing import Any, Literal

from pydantic import Field

from edgekit.config.base import StrictModel
from edgekit.errors import DeviceError
from edgekit.runtime.outputs.base import OUTPUTS, Output

MAP_VERSION = 2
BLOCK_A = 18
OFF_TARGET_COUNT = 16  # u32: ENCODER_COUNT + distance_counts (0 without encoder), docs/plc-timed.md
BLOCK_B_OFFSET = 24  # 18..23 reserved for block A
BLOCK_B = 8
# STATUS bits
READY, FAULT, REVIEW_ENABLED, ARCHIVE_FULL, ACK_TIMEOUT = 1, 2, 4, 8, 16
# CMD bits
CMD_ENABLE, CMD_RESET_FAULT = 1, 2
DECISION_CODES = {"accept": 1, "reject": 2, "review": 3}
FAILSAFE_CODE = 4
# failsafe reason → FAULT_CODE (docs/plc.md)
FAULT_CODES = {"camera_down": 1, "missing_frame": 1, "bad_frame": 1, "decode_error": 1, "backend_error": 2, "nan": 2,
               "late": 3, "overload": 3, "late_result_discarded": 3}
# station faults that are not a part's fail-safe (Output.set_fault codes)
FAULT_OUTPUT, FAULT_BUNDLE_REFUSED, FAULT_DISK_FULL, FAULT_CLOCK_UNSYNC = 4, 5, 6, 7
# Output.set_flag names → STATUS bits
FLAG_BITS = {"archive_full": ARCHIVE_FULL}
# how a missed acknowledgement starts in pop_errors(): the daemon counts these apart from connection
# errors (edgekit_plc_acks_missed_total vs edgekit_output_errors_total)
ACK_MISSED = "PLC did not acknowledge result"


class ModbusOutputConfig(StrictModel):
    type: Literal["modbus"] = "modbus"
    name: str = "plc"
    host: str
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=255)
    base_address: int = Field(0, ge=0, le=65535 - BLOCK_B_OFFSET - BLOCK_B)
    ack_timeout_ms: float = Field(200.0, gt=0)
    timeout_s: float = Field(1.0, gt=0, le=30)
    retry_initial_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(5.0, gt=0)
    reject_edge: float | None = None  # for SCORE_PERMILLE; None: the bundle's (or overridden) band
    reject_coil: int | None = Field(None, ge=0)  # optional coil mirroring the reject line
    heartbeat_coil: int | None = Field(None, ge=0)
    plc_heartbeat_fault: bool = False  # set STATUS.FAULT when PLC_HEARTBEAT stops changing
    plc_heartbeat_timeout_ms: float = Field(1500.0, gt=0)  # 3 × the PLC's 500 ms heartbeat
    required: bool = False  # refuse to start when the PLC is unreachable (else keep retrying)


def _u32(v: int) -> list[int]:
    v = int(v) & 0xFFFFFFFF
    return [v >> 16, v & 0xFFFF]


def _f32(v: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", float(v)))
    return [hi, lo]


def _clip16(v: float) -> int:
    return int(min(65535, max(0, round(v))))


@OUTPUTS.register("modbus", can_pulse=False)
class ModbusOutput(Output):
    """PLC over Modbus TCP (client; the PLC is the server)."""

    config_model = ModbusOutputConfig
    can_pulse = False  # the PLC times its own actuator from the result; GPIO carries the pulse

    def __init__(self, cfg: ModbusOutputConfig) -> None:
        super().__init__(cfg)
        self._q: queue.Queue[Any] = queue.Queue(maxsize=256)
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._unit_kw = "device_id"
        self._connected = False
        self._stop = threading.Event()
        self._errors: collections.deque[str] = collections.deque(maxlen=100)
        self._lock = threading.Lock()
        # block A state
        self.heartbeat = 0
        self.status = 0
        self.band_reject_edge = 1.0
        self._plc_link_lost = False
        self.result_seq = 0
        self.fault_code = 0
        self.reject_count = 0
        self.part_count = 0
        self.result: list[int] = [0] * 9  # offsets 3..11
        self.target_count = 0  # offsets 16..17
        # block B state
        self.plc_heartbeat: int | None = None
        self.plc_heartbeat_changed_ns = time.monotonic_ns()
        self.ack_seq = 0
        self.cmd = 0
        self.plc_part_id = 0
        self._pending_ack: tuple[int, int] | None = None  # (seq, deadline_ns)
        self.reconnects = 0
        self.acks_missed = 0
        self.close_errors = 0  # closing an already broken connection failed (counted, logged once each)
        self._controls: list[tuple[str, str, int]] = []
        self._cmd_seen = False  # the first read of CMD sets the baseline (no edge)

    def roles(self) -> set[str]:
        roles = {"heartbeat", "ready"}
        if self.cfg.reject_coil is not None:
            roles.add("reject")
        return roles

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        try:
            from pymodbus.client import ModbusTcpClient
        except ImportError:
            raise DeviceError("the modbus output needs pymodbus 3.x: pip install 'edgekit[plc]' (pymodbus>=3.10,<4)") from None
        self._client = ModbusTcpClient(self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout_s, retries=0)
        # the unit keyword is device_id= since pymodbus 3.10 (slave= before): the floor in pyproject.toml
        self._unit_kw = "device_id"
        if not self._connect():
            if self.cfg.required:
                raise DeviceError(f"outputs.{self.name}: PLC {self.cfg.host}:{self.cfg.port} unreachable; check the "
                                  "address and cable, or set required: false to start and keep retrying")
            self.errors += 1
            self._errors.append(f"PLC {self.cfg.host}:{self.cfg.port} unreachable at start; retrying with backoff")
        self._thread = threading.Thread(target=self._loop, name=f"modbus-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            with self._lock:
                self.status &= ~READY
            self._put(("write_a",), force=True)
            self._q.put(None)
            self._thread.join(timeout=self.cfg.timeout_s * 3 + 1)
            self._thread = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def healthy(self) -> bool:
        return self._connected

    def pop_errors(self) -> list[str]:
        out = list(self._errors)
        self._errors.clear()
        return out

    def pop_controls(self) -> list[tuple[str, str, int]]:
        with self._lock:
            out, self._controls = self._controls, []
        return out

    def reset_fault(self) -> None:
        """Daemon.control reset (from another output or the operator): clear the latched faults."""
        with self._lock:
            self.fault_code = 0
            self.status &= ~(FAULT | ACK_TIMEOUT)
        self._put(("write_a",))

    # ------------------------------------------------------------------ line interface
    def _put(self, item: Any, force: bool = False) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            if force:
                self._q.put(item)
            else:
                self.errors += 1
                self._errors.append("queue full: PLC too slow, update dropped")

    def set_line(self, role: str, active: bool) -> None:
        if role == "heartbeat":
            with self._lock:
                self.heartbeat = (self.heartbeat + 1) & 0xFFFF
            self._put(("heartbeat", active))
        elif role == "ready":
            with self._lock:
                self.status = (self.status | READY) if active else (self.status & ~READY)
            self._put(("write_a",))
        elif role == "reject" and self.cfg.reject_coil is not None:
            self._put(("coil", self.cfg.reject_coil, active))

    def set_band(self, accept_edge: float, reject_edge: float) -> None:
        with self._lock:
            self.band_reject_edge = reject_edge if reject_edge > 0 else 1.0
            self.status = (self.status | REVIEW_ENABLED) if accept_edge < reject_edge else (self.status & ~REVIEW_ENABLED)
        self._put(("write_a",))

    def set_fault(self, code: int) -> None:
        with self._lock:
            self.fault_code = int(code)
            self.status |= FAULT
        self._put(("write_a",))

    def set_flag(self, name: str, on: bool) -> None:
        bit = FLAG_BITS.get(name)
        if bit is None:
            return
        with self._lock:
            self.status = (self.status | bit) if on else (self.status & ~bit)
        self._put(("write_a",))

    def publish_dict(self, d: dict[str, Any]) -> None:
        with self._lock:
            self.result_seq = self.result_seq % 65535 + 1  # wraps 65535 → 1 (0 = no result yet)
            kind = d["kind"]
            code = FAILSAFE_CODE if (d.get("failsafe") and kind == "reject") else DECISION_CODES.get(kind, 0)
            score = d.get("score")
            score = float(score) if score is not None and score == score else 0.0
            edge = self.cfg.reject_edge or self.band_reject_edge or 1.0
            latency_ms = (d.get("t_decided_ns", time.monotonic_ns()) - d.get("t_capture_ns", time.monotonic_ns())) / 1e6
            part_id = self.plc_part_id or d["part_id"]
            self.result = [*_u32(part_id), code, *_f32(score), _clip16(score / edge * 1000),
                           _clip16(latency_ms), *_u32(d.get("encoder_count") or 0)]
            self.target_count = int(d.get("target_count") or 0)
            self.part_count = (self.part_count + 1) & 0xFFFF
            if kind == "reject":
                self.reject_count = (self.reject_count + 1) & 0xFFFF
            if d.get("failsafe") in FAULT_CODES:
                self.fault_code = FAULT_CODES[d["failsafe"]]
                self.status |= FAULT
            self._pending_ack = (self.result_seq, time.monotonic_ns() + int(self.cfg.ack_timeout_ms * 1e6))
        self._put(("result",))

    # ------------------------------------------------------------------ worker
    def block_a(self) -> list[int]:
        """The ``BLOCK_A`` registers of block A in address order."""
        with self._lock:
            return [self.heartbeat, self.status, self.result_seq, *self.result, self.fault_code,
                    self.reject_count, self.part_count, MAP_VERSION, *_u32(self.target_count)]

    def _connect(self) -> bool:
        try:
            ok = bool(self._client.connect())
        except Exception:  # pymodbus raises assorted errors for refused/unreachable hosts
            ok = False
        if ok and not self._connected:
            self._connected = True
            return True
        self._connected = ok
        return ok

    def _call(self, fn: str, *args: Any, **kw: Any) -> Any:
        rr = getattr(self._client, fn)(*args, **{self._unit_kw: self.cfg.unit}, **kw)
        if rr.isError():
            raise ConnectionError(f"{fn} refused by the PLC: {rr}")
        return rr

    def _write_a(self, heartbeat_only: bool = False) -> None:
        regs = self.block_a()
        if heartbeat_only:
            self._call("write_registers", self.cfg.base_address, regs[:2])
        else:
            self._call("write_registers", self.cfg.base_address, regs)

    def _read_b(self) -> None:
        """Read block B; rewrite HEARTBEAT/STATUS when a status bit changed because of it."""
        status_before = self.status
        rr = self._call("read_holding_registers", self.cfg.base_address + BLOCK_B_OFFSET, count=BLOCK_B)
        regs = list(rr.registers)
        now = time.monotonic_ns()
        with self._lock:
            if regs[0] != self.plc_heartbeat:
                self.plc_heartbeat = regs[0]
                self.plc_heartbeat_changed_ns = now
            self.ack_seq = regs[1]
            reset = bool(regs[2] & CMD_RESET_FAULT) and not (self.cmd & CMD_RESET_FAULT)
            # CMD.ENABLE: its edges enable / disable rejection (Daemon.control); a PLC that never
            # writes CMD leaves the station as configured
            if self._cmd_seen and (regs[2] ^ self.cmd) & CMD_ENABLE:
                self._controls.append(("enable" if regs[2] & CMD_ENABLE else "disable", f"modbus:{self.name}", now))
            self._cmd_seen = True
            self.cmd = regs[2]
            self.plc_part_id = (regs[3] << 16) | regs[4]
            if reset:  # rising edge of RESET_FAULT clears latched faults, here and (Daemon.control) elsewhere
                self.fault_code = 0
                self.status &= ~(FAULT | ACK_TIMEOUT)
                self._controls.append(("reset_fault", f"modbus:{self.name}", now))
            if self._pending_ack is not None:
                seq, deadline = self._pending_ack
                if self.ack_seq == seq:
                    self._pending_ack = None
                elif now > deadline:
                    self._pending_ack = None
                    self.acks_missed += 1
                    self.status |= ACK_TIMEOUT
                    self._errors.append(f"{ACK_MISSED} {seq} within {self.cfg.ack_timeout_ms} ms")
            lost = now - self.plc_heartbeat_changed_ns > self.cfg.plc_heartbeat_timeout_ms * 1e6
            if lost and not self._plc_link_lost:
                self._errors.append(f"PLC heartbeat unchanged for {self.cfg.plc_heartbeat_timeout_ms:.0f} ms: "
                                    "PLC link lost (inspection and GPIO rejects continue)")
            self._plc_link_lost = lost
            if lost and self.cfg.plc_heartbeat_fault:
                self.status |= FAULT
            changed = self.status != status_before
        if changed:
            self._write_a(heartbeat_only=True)

    def _do(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "heartbeat":
            self._write_a(heartbeat_only=True)
            if self.cfg.heartbeat_coil is not None:
                self._call("write_coil", self.cfg.heartbeat_coil, bool(item[1]))
            self._read_b()
        elif kind in ("result", "write_a"):
            self._write_a()
            self._read_b()
        elif kind == "coil":
            self._call("write_coil", item[1], bool(item[2]))

    def _loop(self) -> None:
        backoff = self.cfg.retry_initial_s
        resync = not self._connected
        while True:
            try:
                item = self._q.get(timeout=0.05)
            except queue.Empty:
                item = ("poll",)
            if item is None:  # close() queued the READY=0 block write just before this
                if not self._connected:
                    self.errors += 1
                    self._errors.append(f"PLC {self.cfg.host}:{self.cfg.port} unreachable at shutdown: READY=0 not "
                                        "written (the PLC's heartbeat timeout takes the line to its safe state)")
                return
            if not self._connected:
                if not self._connect():
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.cfg.retry_max_s)
                    continue
                self.reconnects += 1
                backoff = self.cfg.retry_initial_s
                resync = True
            try:
                if resync:
                    self._write_a()  # the PLC may have restarted: rewrite the whole block
                    resync = False
                if item[0] == "poll":
                    with self._lock:
                        due = self._pending_ack is not None
                    if due:
                        self._read_b()
                    continue
                self._do(item)
            except Exception as exc:  # connection reset, timeout, refused request
                self.errors += 1
                self._errors.append(f"PLC {self.cfg.host}:{self.cfg.port}: {exc.__class__.__name__}: {exc}")
                self._connected = False
                try:
                    self._client.close()
                except Exception as close_exc:  # already broken: counted and reported, then reconnect
                    self.close_errors += 1
                    self._errors.append(f"PLC {self.cfg.host}:{self.cfg.port}: closing the broken connection "
                                        f"failed: {close_exc.__class__.__name__}: {close_exc}")
