"""A simulated PLC for PLC-timed rejection (``scheduler.mode: plc``): a real pymodbus TCP server
on loopback that the daemon's Modbus output writes its results into, and a PLC program — a scan
cycle with a shift register, the way plants time ejectors — that reads them from its own
registers, acknowledges each (``ACK_SEQ``), queues the target count of every reject and fires the
ejector when the conveyor's encoder reaches it.

The register layout is the output's own (``edgekit.runtime.outputs.modbus``: ``BLOCK_A``,
``BLOCK_B_OFFSET`` and the offsets of ``docs/plc.md``), so the simulated program reads exactly
what a PLC on the line would. The ejector's edges are recorded like a fake GPIO line so the
simulator's checker judges them the same way."""

from __future__ import annotations

import heapq
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from edgekit.runtime.outputs import modbus as mb
from edgekit.runtime.outputs.gpio import EdgeRecord

log = logging.getLogger("edgekit.sim.plc")

# result-block offsets (docs/plc.md, client mode)
OFF_RESULT_SEQ = 2
OFF_PART_ID = 3
OFF_DECISION = 5
OFF_ENCODER_COUNT = 10
OFF_TARGET_COUNT = mb.OFF_TARGET_COUNT
REJECT_CODES = (mb.DECISION_CODES["reject"], mb.FAILSAFE_CODE)


@dataclass(frozen=True)
class Ejection:
    part_id: int
    target_count: int
    count: int  # encoder count at which the ejector fired
    t_ns: int
    merged: bool


class ShiftRegisterProgram:
    """The PLC program, apart from the transport: each ``scan`` gets the result block as the PLC
    reads it, the scan time and the encoder count, and returns the ACK_SEQ to write (or None).
    The ejector fires at each reject's TARGET_COUNT. ``distance_counts`` (the camera → ejector
    distance the PLC was commissioned with) is a plausibility check, as a PLC program would make
    one: a TARGET_COUNT ≠ ENCODER_COUNT + distance_counts is counted in ``implausible_targets``."""

    def __init__(self, pulse_ms: float = 10.0, distance_counts: int | None = None) -> None:
        self.pulse_ns = int(pulse_ms * 1e6)
        self.distance_counts = distance_counts
        self.results: list[dict[str, int]] = []  # every result the program read, in order
        self.missed_results = 0  # RESULT_SEQ jumped by more than one between two scans
        self.implausible_targets = 0
        self.ejections: list[Ejection] = []
        self.edges: list[EdgeRecord] = []
        self._queue: list[tuple[int, int]] = []  # (target count, part id)
        self._on_until: int | None = None

    def _edge(self, active: bool, t_ns: int) -> None:
        self.edges.append(EdgeRecord(0, active, int(active), t_ns))

    def scan(self, now_ns: int, count: int | None, regs: list[int]) -> int | None:
        ack = None
        seq = regs[OFF_RESULT_SEQ]
        last = self.results[-1]["seq"] if self.results else 0
        if seq != 0 and seq != last:
            if last and (seq - last) % 65535 > 1:
                self.missed_results += (seq - last) % 65535 - 1
            part_id = (regs[OFF_PART_ID] << 16) | regs[OFF_PART_ID + 1]
            enc = (regs[OFF_ENCODER_COUNT] << 16) | regs[OFF_ENCODER_COUNT + 1]
            target = (regs[OFF_TARGET_COUNT] << 16) | regs[OFF_TARGET_COUNT + 1]
            if self.distance_counts is not None and target != enc + self.distance_counts:
                self.implausible_targets += 1
            self.results.append({"seq": seq, "part_id": part_id, "decision": regs[OFF_DECISION],
                                 "encoder_count": enc, "target_count": target})
            if regs[OFF_DECISION] in REJECT_CODES:
                heapq.heappush(self._queue, (target, part_id))
            ack = seq
        if self._on_until is not None and now_ns >= self._on_until:
            self._on_until = None
            self._edge(False, now_ns)
        while count is not None and self._queue and self._queue[0][0] <= count:
            target, part_id = heapq.heappop(self._queue)
            merged = self._on_until is not None
            self.ejections.append(Ejection(part_id, target, count, now_ns, merged))
            if not merged:
                self._edge(True, now_ns)
            self._on_until = now_ns + self.pulse_ns
        return ack

    def finish(self, now_ns: int) -> None:
        if self._on_until is not None:
            self._on_until = None
            self._edge(False, now_ns)

    def pending(self) -> int:
        return len(self._queue)


class ShiftRegisterPlc:
    """The simulated PLC: a pymodbus TCP server on 127.0.0.1:``port`` holding the registers, and
    a scan loop running ``ShiftRegisterProgram`` every ``scan_ms`` against them through its own
    Modbus client (FC03 read of the result block, FC16 write of PLC_HEARTBEAT/ACK_SEQ), exactly
    as a PLC's registers are seen from outside. ``encoder``: the simulated belt."""

    def __init__(self, encoder: Any, port: int, base_address: int = 0, scan_ms: float = 2.0,
                 pulse_ms: float = 10.0, distance_counts: int | None = None) -> None:
        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        self.encoder = encoder
        self.port = port
        self.base = base_address
        self.scan_ns = int(scan_ms * 1e6)
        self.program = ShiftRegisterProgram(pulse_ms, distance_counts)
        self.scan_errors = 0  # failed register transfers (counted; a PLC keeps scanning)
        self.server_error: str | None = None
        self._size = base_address + mb.BLOCK_B_OFFSET + mb.BLOCK_B + 8
        self._stop = threading.Event()
        self._loop: Any = None
        self._server: Any = None
        self._threads: list[threading.Thread] = []

    # results of the program, for the checker
    @property
    def results(self) -> list[dict[str, int]]:
        return self.program.results

    @property
    def missed_results(self) -> int:
        return self.program.missed_results

    @property
    def ejections(self) -> list[Ejection]:
        return self.program.ejections

    @property
    def edges(self) -> list[EdgeRecord]:
        return self.program.edges

    def pending(self) -> int:
        return self.program.pending()

    @staticmethod
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def _context(self) -> Any:
        from pymodbus import datastore as ds

        block = ds.ModbusSequentialDataBlock(1, [0] * self._size)  # FC03 address a = block address a + 1
        # ModbusDeviceContext / devices= since pymodbus 3.10 (the floor in pyproject.toml)
        return ds.ModbusServerContext(devices=ds.ModbusDeviceContext(hr=block), single=True)

    def start(self) -> ShiftRegisterPlc:
        import asyncio

        from pymodbus.server import ModbusTcpServer

        context = self._context()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def run() -> None:
                self._server = ModbusTcpServer(context, address=("127.0.0.1", self.port))
                await self._server.serve_forever()

            try:
                loop.run_until_complete(run())
            except Exception as exc:  # noqa: BLE001 (the server died: the simulated PLC is gone)
                self.server_error = f"{exc.__class__.__name__}: {exc}"
                log.error("simulated PLC server on 127.0.0.1:%d stopped: %s", self.port, self.server_error)
            finally:
                loop.close()

        t = threading.Thread(target=serve, name="sim-plc-server", daemon=True)
        t.start()
        self._threads = [t]
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        scan = threading.Thread(target=self._scan_loop, name="sim-plc-scan", daemon=True)
        scan.start()
        self._threads.append(scan)
        return self

    def stop(self) -> None:
        import asyncio

        self._stop.set()
        if self._threads:
            self._threads[-1].join(timeout=5)
        if self._server is not None and self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(timeout=5)
        if self._threads:
            self._threads[0].join(timeout=5)
        self.program.finish(time.monotonic_ns())

    def _scan_loop(self) -> None:
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=1.0)
        client.connect()
        unit = {"device_id": 1}  # pymodbus >= 3.10
        next_ns = time.monotonic_ns()
        while not self._stop.is_set():
            now = time.monotonic_ns()
            count = self.encoder.count() if getattr(self.encoder, "t0_ns", None) is not None else None
            try:
                rr = client.read_holding_registers(self.base, count=mb.BLOCK_A, **unit)
                if rr.isError():
                    raise ConnectionError(str(rr))
                ack = self.program.scan(now, count, list(rr.registers))
                words = [(now // 100_000_000) & 0xFFFF] + ([ack] if ack is not None else [])
                client.write_registers(self.base + mb.BLOCK_B_OFFSET, words, **unit)  # PLC_HEARTBEAT, ACK_SEQ
            except Exception:  # noqa: BLE001 (a PLC keeps scanning through a failed transfer)
                self.scan_errors += 1
                client.connect()
            next_ns += self.scan_ns
            delay = next_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            else:
                next_ns = time.monotonic_ns()
        client.close()
