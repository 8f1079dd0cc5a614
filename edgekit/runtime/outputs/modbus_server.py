"""Modbus TCP **server** output: the station serves its results and the PLC polls them, the way
plant vision sensors (Cognex In-Sight, Banner, Keyence) usually work. pymodbus 3.x server in its
own thread and asyncio loop inside the line process; the register map and handshake are those of
``docs/plc.md`` (server mode, map version 1):

* holding registers (FC03/06/16) ``base_address`` + 0..39, mirrored read-only as input registers
  (FC04): status block 0..15, the **presented result** 16..31 (head of the result FIFO), control
  block 32..39 (the only writable part);
* coils (FC01/05/15) and discrete inputs (FC02) ``base_address`` + 0..9 mirror the STATUS bits
  (READY, RESULT_VALID, REJECT line, FAULT, HEARTBEAT, ...); coils 16..20 are the control bits
  (TRIGGER, RESULT_ACK, RESET_FAULT, ENABLE, DISABLE), acting on rising edges like the CONTROL
  register's bits.

Handshake: each published result gets the next ``INSPECTION_ID`` and joins a FIFO of
``fifo_depth`` results; the head is presented with ``RESULT_VALID``; the PLC reads it and sets
``RESULT_ACK`` (the head leaves, ``RESULT_VALID`` drops, the next result is presented once the PLC
has cleared ``RESULT_ACK``) or writes the presented id into ``ACK_ID`` (the head leaves, the next
is presented at once). A full FIFO refuses the new result: ``BUFFER_OVERRUN`` is latched,
``OVERRUN_COUNT`` counts it, the part counts as rejected and its id is skipped, so the PLC sees the
gap and rejects those parts (fail safe). ``TRIGGER`` → ``TRIGGER_ACK`` is the optional software
trigger (one part, where the camera takes triggers).

Consistency: every request is answered from one snapshot of the whole map taken under the model's
lock, and a result enters the map under the same lock, so a poll never sees half an update.
32-bit values use ``word_order`` (ABCD: high word first, CDAB: low word first); floats IEEE-754."""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from edgekit.config.base import StrictModel
from edgekit.errors import DeviceError
from edgekit.runtime.outputs.base import OUTPUTS, Output
from edgekit.runtime.outputs.modbus import DECISION_CODES, FAILSAFE_CODE, FAULT_CODES
from edgekit.runtime.outputs.netcheck import bind_problem

MAP_VERSION = 1  # server-mode map (the client mode has its own, modbus.MAP_VERSION)
# holding / input registers (offsets from base_address)
HEARTBEAT, STATUS, FAULT_CODE, QUEUED = 0, 1, 2, 3
OVERRUN_COUNT, PART_COUNT, REJECT_COUNT = 4, 6, 8  # u32
MAP_VERSION_REG, TRIGGER_COUNT = 10, 11
ACCEPT_EDGE, REJECT_EDGE = 12, 14  # f32
RESULT = 16
INSPECTION_ID, PART_ID = 16, 18  # u32
DECISION, FAILSAFE = 20, 21
SCORE = 22  # f32
SCORE_PERMILLE, LATENCY_MS = 24, 25
ENCODER_COUNT, TARGET_COUNT = 26, 28  # u32
CONTROL = 32
ACK_ID = 34  # u32
REGISTERS = 40
# STATUS bits = coil / discrete input addresses 0..9
(S_READY, S_RESULT_VALID, S_REJECT, S_FAULT, S_HEARTBEAT, S_TRIGGER_ACK, S_BUFFER_OVERRUN, S_ENABLED,
 S_TRIGGER_READY, S_REVIEW_ENABLED) = range(10)
# CONTROL bits; coil address = CONTROL_COILS + bit
C_TRIGGER, C_RESULT_ACK, C_RESET_FAULT, C_ENABLE, C_DISABLE = range(5)
CONTROL_COILS = 16
COILS = 32
# FAILSAFE register: why a part was failed safe (0 = a real decision)
FAILSAFE_CODES = {"camera_down": 1, "missing_frame": 1, "decode_error": 1, "backend_error": 2, "nan": 2,
                  "bad_frame": 2, "late": 3, "overload": 3}
FAILSAFE_OTHER = 9
_CONTROL_ACTIONS = {C_RESET_FAULT: "reset_fault", C_ENABLE: "enable", C_DISABLE: "disable"}
_FC_KIND = {1: "c", 5: "c", 15: "c", 2: "d", 3: "h", 6: "h", 16: "h", 22: "h", 23: "h", 4: "i"}

log = logging.getLogger("edgekit.runtime.outputs.modbus_server")


class ModbusServerOutputConfig(StrictModel):
    type: Literal["modbus_server"] = "modbus_server"
    name: str = "modbus_server"
    host: str = "127.0.0.1"  # a plant sets 0.0.0.0 or the interface address facing the PLC
    port: int = Field(502, ge=1, le=65535)  # < 1024 needs CAP_NET_BIND_SERVICE
    unit: int | None = Field(None, ge=1, le=255)  # None: answer every unit id
    base_address: int = Field(0, ge=0, le=65535 - REGISTERS)
    fifo_depth: int = Field(16, ge=1, le=4096)
    word_order: Literal["ABCD", "CDAB"] = "ABCD"
    reject_edge: float | None = None  # for SCORE_PERMILLE; None: the band in use
    software_trigger: bool = True  # TRIGGER bit accepted (forwarded to the camera's trigger)
    # at shutdown, READY drops and the PLC gets this long to take the results still queued
    shutdown_drain_s: float = Field(2.0, ge=0, le=60)


def words32(v: int, order: str) -> list[int]:
    v = int(v) & 0xFFFFFFFF
    hi, lo = v >> 16, v & 0xFFFF
    return [hi, lo] if order == "ABCD" else [lo, hi]


def wordsf(v: float, order: str) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", float(v)))
    return [hi, lo] if order == "ABCD" else [lo, hi]


def decode32(w: list[int], order: str) -> int:
    hi, lo = (w[0], w[1]) if order == "ABCD" else (w[1], w[0])
    return (hi << 16) | lo


def decodef(w: list[int], order: str) -> float:
    hi, lo = (w[0], w[1]) if order == "ABCD" else (w[1], w[0])
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


def _clip16(v: float) -> int:
    return int(min(65535, max(0, round(v))))


class ServerMap:
    """The register map's state and handshake, apart from the transport (tested directly and
    served by ``ModbusServerOutput``). Thread-safe: the line process publishes, the server thread
    reads and writes; every access holds ``_lock``.

    Args:
        clock: monotonic ns (injectable), stamped on software triggers.
    """

    def __init__(self, fifo_depth: int = 16, word_order: str = "ABCD", reject_edge: float | None = None,
                 clock: Callable[[], int] = time.monotonic_ns, source: str = "modbus_server") -> None:
        self.depth = fifo_depth
        self.order = word_order
        self.fixed_reject_edge = reject_edge
        self.clock = clock
        self.source = source
        self._lock = threading.Lock()
        self.fifo: collections.deque[tuple[int, list[int], bool]] = collections.deque()  # (id, fields, reject)
        self.next_id = 1
        self.heartbeat = 0
        self.bits = [False] * 10
        self.bits[S_ENABLED] = True
        self.fault_code = 0
        self.overruns = 0
        self.parts = 0
        self.rejects = 0
        self.triggers = 0
        self.band = (0.0, 1.0)
        self.control = 0  # CONTROL register as last written (rising edges act)
        self.ack_words = [0, 0]
        self.ack_hold = False  # RESULT_ACK still set after taking a result: the next waits for its clear
        self.presented: list[int] = []  # ids in the order they were presented (tests, stats)
        self.acked = 0
        self.fifo_max = 0
        self.spurious_acks = 0
        self.bad_writes = 0
        self.controls: list[tuple[str, str, int]] = []
        self.errors: list[str] = []
        self._overrun_reported = False

    # ----------------------------------------------------------- from the line process
    def publish(self, d: dict[str, Any]) -> int:
        """Queue one decision; returns its INSPECTION_ID (a refused one's id is skipped)."""
        kind = d["kind"]
        fs = d.get("failsafe")
        code = FAILSAFE_CODE if (fs and kind == "reject") else DECISION_CODES.get(kind, 0)
        score = d.get("score")
        score = float(score) if score is not None and score == score else 0.0
        t_cap, t_dec = d.get("t_capture_ns"), d.get("t_decided_ns")
        latency_ms = (t_dec - t_cap) / 1e6 if t_cap is not None and t_dec is not None else 0.0
        with self._lock:
            edge = self.fixed_reject_edge or self.band[1] or 1.0
            iid = self.next_id
            self.next_id = self.next_id % 0xFFFFFFFF + 1  # wraps to 1 (0 = no result)
            self.parts += 1
            reject = code in (DECISION_CODES["reject"], FAILSAFE_CODE)
            if fs in FAULT_CODES:
                self.fault_code = FAULT_CODES[fs]
                self.bits[S_FAULT] = True
            if len(self.fifo) >= self.depth:  # fail safe: counted as rejected, its id is a gap
                self.overruns += 1
                self.rejects += 1
                self.bits[S_BUFFER_OVERRUN] = True
                if not self._overrun_reported:
                    self._overrun_reported = True
                    self.errors.append(f"result FIFO full ({self.depth}): the PLC is not taking results; part "
                                       f"{d['part_id']} (INSPECTION_ID {iid}) and later overruns count as rejected "
                                       "(BUFFER_OVERRUN, OVERRUN_COUNT); poll faster or raise fifo_depth")
                return iid
            self.rejects += int(reject)
            fields = [int(d["part_id"]), code, FAILSAFE_CODES.get(fs, FAILSAFE_OTHER) if fs else 0, score,
                      _clip16(score / edge * 1000), _clip16(latency_ms), int(d.get("encoder_count") or 0),
                      int(d.get("target_count") or 0)]
            self.fifo.append((iid, fields, reject))
            self.fifo_max = max(self.fifo_max, len(self.fifo))
            if len(self.fifo) == 1 and not self.ack_hold:
                self.presented.append(iid)
            return iid

    def set_bit(self, bit: int, value: bool) -> None:
        with self._lock:
            self.bits[bit] = value

    def beat(self, active: bool) -> None:
        with self._lock:
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF
            self.bits[S_HEARTBEAT] = active

    def set_band(self, accept_edge: float, reject_edge: float) -> None:
        with self._lock:
            self.band = (float(accept_edge), float(reject_edge))
            self.bits[S_REVIEW_ENABLED] = accept_edge < reject_edge

    def set_fault(self, code: int) -> None:
        with self._lock:
            self.fault_code = int(code)
            self.bits[S_FAULT] = True

    def reset_fault(self) -> None:
        with self._lock:
            self._reset_locked()

    def _reset_locked(self) -> None:
        self.fault_code = 0
        self.bits[S_FAULT] = False
        self.bits[S_BUFFER_OVERRUN] = False
        self._overrun_reported = False

    # ----------------------------------------------------------- the map as the PLC sees it
    def _head(self) -> tuple[int, list[int]] | None:
        if self.fifo and not self.ack_hold:
            return self.fifo[0][0], self.fifo[0][1]
        return None

    def _status_bits(self) -> list[bool]:
        b = list(self.bits)
        b[S_RESULT_VALID] = self._head() is not None
        b[S_TRIGGER_READY] = b[S_READY] and b[S_ENABLED]
        return b

    def registers(self) -> list[int]:
        """The ``REGISTERS`` holding registers in address order (one consistent snapshot)."""
        with self._lock:
            return self._registers_locked()

    def _registers_locked(self) -> list[int]:
        o = self.order
        status = sum(1 << i for i, v in enumerate(self._status_bits()) if v)
        regs = [self.heartbeat, status, self.fault_code, len(self.fifo), *words32(self.overruns, o),
                *words32(self.parts, o), *words32(self.rejects, o), MAP_VERSION, self.triggers & 0xFFFF,
                *wordsf(self.band[0], o), *wordsf(self.band[1], o)]
        head = self._head()
        if head is None:
            regs += [0] * 16
        else:
            iid, (pid, code, fs, score, permille, lat, enc, target) = head
            regs += [*words32(iid, o), *words32(pid, o), code, fs, *wordsf(score, o), permille, lat,
                     *words32(enc, o), *words32(target, o), 0, 0]
        regs += [self.control, 0, *self.ack_words, 0, 0, 0, 0]
        return regs

    def coils(self) -> list[bool]:
        """The ``COILS`` bits: STATUS bits at 0..9, the CONTROL bits as last written at 16..20."""
        with self._lock:
            return self._coils_locked()

    def _coils_locked(self) -> list[bool]:
        b = self._status_bits() + [False] * (CONTROL_COILS - 10)
        return b + [bool(self.control >> i & 1) for i in range(COILS - CONTROL_COILS)]

    def read(self, kind: str, offset: int, count: int) -> list[int] | list[bool] | None:
        """What a read of ``count`` values at ``offset`` returns; None = illegal address."""
        if offset < 0 or count < 1:
            return None
        with self._lock:
            if kind in ("h", "i"):
                vals: list[Any] = self._registers_locked()
            elif kind == "c":
                vals = self._coils_locked()
            else:
                vals = self._coils_locked()[:CONTROL_COILS]  # discrete inputs: the status bits
        return vals[offset:offset + count] if offset + count <= len(vals) else None

    def write(self, kind: str, offset: int, values: list[Any]) -> bool:
        """Apply a PLC write; False (illegal address) outside the control block / control coils."""
        with self._lock:
            if kind == "h":
                if offset < CONTROL or offset + len(values) > REGISTERS:
                    self.bad_writes += 1
                    return False
                for i, v in enumerate(values):
                    a = offset + i
                    if a == CONTROL:
                        self._control_locked(int(v) & 0xFFFF)
                    elif a in (ACK_ID, ACK_ID + 1):
                        self.ack_words[a - ACK_ID] = int(v) & 0xFFFF
                if offset <= ACK_ID + 1 and offset + len(values) > ACK_ID:
                    self._ack_id_locked()
                return True
            if kind == "c":
                if offset < CONTROL_COILS or offset + len(values) > COILS:
                    self.bad_writes += 1
                    return False
                new = self.control
                for i, v in enumerate(values):
                    bit = offset + i - CONTROL_COILS
                    new = (new | 1 << bit) if v else (new & ~(1 << bit))
                self._control_locked(new)
                return True
            self.bad_writes += 1
            return False

    def _control_locked(self, new: int) -> None:
        old, self.control = self.control, new
        rise, fall = new & ~old, old & ~new
        now = None
        if rise & (1 << C_RESULT_ACK):
            if self._head() is not None:
                self.fifo.popleft()
                self.acked += 1
                self.ack_hold = True
            else:
                self.spurious_acks += 1
        if fall & (1 << C_RESULT_ACK) and self.ack_hold:
            self.ack_hold = False
            if self.fifo:
                self.presented.append(self.fifo[0][0])
        if rise & (1 << C_TRIGGER):
            now = self.clock()
            self.triggers += 1
            self.bits[S_TRIGGER_ACK] = True
            self.controls.append(("trigger", self.source, now))
        if fall & (1 << C_TRIGGER):
            self.bits[S_TRIGGER_ACK] = False
        if rise & (1 << C_RESET_FAULT):
            self._reset_locked()
        for bit, action in _CONTROL_ACTIONS.items():
            if rise & (1 << bit):
                self.controls.append((action, self.source, now if now is not None else self.clock()))

    def _ack_id_locked(self) -> None:
        head = self._head()
        if head is not None and decode32(self.ack_words, self.order) == head[0]:
            self.fifo.popleft()
            self.acked += 1
            if self.fifo:
                self.presented.append(self.fifo[0][0])

    def pop_controls(self) -> list[tuple[str, str, int]]:
        with self._lock:
            out, self.controls = self.controls, []
            return out

    def pop_errors(self) -> list[str]:
        with self._lock:
            out, self.errors = self.errors, []
            return out

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"fifo_queued": len(self.fifo), "fifo_max": self.fifo_max, "results_acked_total": self.acked,
                    "overruns_total": self.overruns, "triggers_total": self.triggers,
                    "bad_writes_total": self.bad_writes}


# ------------------------------------------------------------------ pymodbus plumbing
def _simdevice_server() -> bool:
    """pymodbus >= 3.12-ish serves SimDevice datastores (old contexts are converted); 3.10/3.11 call
    a device context's getValues/setValues."""
    import pymodbus.server.base as sb

    return hasattr(sb, "SimCore")


def _context(smap: ServerMap, base: int, unit: int | None) -> Any:
    if _simdevice_server():
        from pymodbus.constants import ExcCodes
        from pymodbus.simulator import DataType, SimData, SimDevice
        from pymodbus.simulator.simutils import SimUtils

        async def action(fc: int, start: int, address: int, count: int, registers: list[int],
                         set_values: list[Any] | None) -> Any:
            kind = _FC_KIND.get(fc)
            if kind is None:
                return ExcCodes.ILLEGAL_FUNCTION
            if set_values is not None and fc != 23:
                return None if smap.write(kind, address - base, list(set_values)) else ExcCodes.ILLEGAL_ADDRESS
            if kind in ("h", "i"):
                registers[:REGISTERS] = smap.registers()  # the block starts at base
            else:  # bit blocks: registers of 16 bits from bit address start * 16
                bits = smap.coils() if kind == "c" else smap.coils()[:CONTROL_COILS]
                flat = [False] * (len(registers) * 16)
                for i, v in enumerate(bits):
                    j = base + i - start * 16
                    if 0 <= j < len(flat):
                        flat[j] = v
                registers[:] = SimUtils.bitsToRegisters(flat)
            return None

        return SimDevice(unit or 0, simdata=(
            [SimData(base, values=[False] * COILS, datatype=DataType.BITS)],
            [SimData(base, values=[False] * CONTROL_COILS, datatype=DataType.BITS)],
            [SimData(base, values=[0] * REGISTERS, datatype=DataType.REGISTERS)],
            [SimData(base, values=[0] * REGISTERS, datatype=DataType.REGISTERS)]), action=action)

    from pymodbus.datastore import ModbusServerContext
    from pymodbus.datastore.context import ModbusBaseDeviceContext

    class _Device(ModbusBaseDeviceContext):  # pymodbus 3.10/3.11: addresses as in the request
        def reset(self) -> None:
            return None

        def getValues(self, fc_as_hex: int, address: int, count: int = 1) -> Any:  # noqa: N802 (pymodbus API)
            vals = smap.read(_FC_KIND.get(fc_as_hex, "?"), address - base, count)
            if vals is None:
                raise ValueError(f"illegal address {address} (+{count})")  # → exception response
            return vals

        def setValues(self, fc_as_hex: int, address: int, values: list[Any]) -> Any:  # noqa: N802
            ok = smap.write(_FC_KIND.get(fc_as_hex, "?"), address - base, list(values))
            return None if ok else 2  # ILLEGAL_ADDRESS

    dev = _Device()
    return ModbusServerContext(devices={unit: dev} if unit else dev, single=unit is None)


@OUTPUTS.register("modbus_server", can_pulse=False)
class ModbusServerOutput(Output):
    """The station as a Modbus TCP server the PLC polls (docs/plc.md, server mode)."""

    config_model = ModbusServerOutputConfig
    can_pulse = False

    def __init__(self, cfg: ModbusServerOutputConfig, clock: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__(cfg)
        self.map = ServerMap(cfg.fifo_depth, cfg.word_order, cfg.reject_edge, clock, f"modbus_server:{self.name}")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._started = threading.Event()
        self._start_error: str | None = None

    def roles(self) -> set[str]:
        return {"heartbeat", "ready", "reject"}

    def open(self) -> None:
        try:
            import pymodbus  # noqa: F401
        except ImportError:
            raise DeviceError(f"outputs.{self.name}: the modbus_server output needs pymodbus 3.x: "
                              "pip install 'edgekit[plc]'") from None
        what = f"outputs.{self.name}"
        problem = bind_problem(self.cfg.host, self.cfg.port, what)
        if problem:
            raise DeviceError(problem)
        logging.getLogger("pymodbus").setLevel(logging.ERROR)  # deprecation chatter of 3.1x
        self._thread = threading.Thread(target=self._serve, name=f"modbus-server-{self.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(10.0) or self._start_error:
            raise DeviceError(f"{what}: Modbus server on {self.cfg.host}:{self.cfg.port} did not start "
                              f"({self._start_error or 'timeout'}); check host and port")

    def _serve(self) -> None:
        from pymodbus.server import ModbusTcpServer

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            ctx = _context(self.map, self.cfg.base_address, self.cfg.unit)
            self._server = ModbusTcpServer(ctx, address=(self.cfg.host, self.cfg.port))
            await self._server.serve_forever(background=True)
            self._started.set()
            await self._server.serving

        try:
            loop.run_until_complete(main())
        except Exception as exc:  # listen failed, or the server died: reported, the line keeps going
            self._start_error = f"{exc.__class__.__name__}: {exc}"
            if self._started.is_set():
                self.errors += 1
                self.map.errors.append(f"Modbus server on {self.cfg.host}:{self.cfg.port} stopped: {self._start_error}")
            self._started.set()
        finally:
            loop.close()

    def close(self) -> None:
        self.map.set_bit(S_READY, False)
        end = time.monotonic() + self.cfg.shutdown_drain_s
        while self.healthy() and self.map.stats()["fifo_queued"] and time.monotonic() < end:
            time.sleep(0.01)
        left = int(self.map.stats()["fifo_queued"])
        if left:
            self.map.errors.append(f"shutdown: {left} results were still queued for the PLC "
                                   f"(not taken within shutdown_drain_s={self.cfg.shutdown_drain_s})")
        if self._server is not None and self._loop is not None and self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(timeout=5)
            except Exception as exc:  # the loop is already going down: reported, close goes on
                self.map.errors.append(f"Modbus server shutdown: {exc.__class__.__name__}: {exc}")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._server = None

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._started.is_set() \
            and self._start_error is None

    # ------------------------------------------------------------------ line interface
    def set_line(self, role: str, active: bool) -> None:
        if role == "heartbeat":
            self.map.beat(active)
        elif role == "ready":
            self.map.set_bit(S_READY, active)
        elif role == "reject":
            self.map.set_bit(S_REJECT, active)

    def publish_dict(self, decision: dict[str, Any]) -> None:
        self.map.publish(decision)

    def set_band(self, accept_edge: float, reject_edge: float) -> None:
        self.map.set_band(accept_edge, reject_edge)

    def set_fault(self, code: int) -> None:
        self.map.set_fault(code)

    def reset_fault(self) -> None:
        self.map.reset_fault()

    def set_enabled(self, enabled: bool) -> None:
        self.map.set_bit(S_ENABLED, enabled)

    def pop_controls(self) -> list[tuple[str, str, int]]:
        controls = self.map.pop_controls()
        if not self.cfg.software_trigger:
            controls = [c for c in controls if c[0] != "trigger"]
        return controls

    def pop_errors(self) -> list[str]:
        out = self.map.pop_errors()
        self.errors += len(out)
        return out

    def stats(self) -> dict[str, float]:
        return self.map.stats()
