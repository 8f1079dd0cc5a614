"""Helpers shared by the runtime tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# accept < 0.4 <= review < 0.5 <= reject (score = mean intensity / 255)
LEVELS = [20, 60, 110, 115, 120, 130, 200, 250]


def expected_kind(level: int) -> str:
    s = level / 255.0
    return "accept" if s < 0.4 else ("reject" if s >= 0.5 else "review")


def write_levels(folder: Path, levels: list[int], hw: tuple[int, int] = (40, 56)) -> list[Path]:
    """One PNG per level (uniform grey image): score = level / 255 with the intensity bundle."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, v in enumerate(levels):
        p = folder / f"f{i:04d}.png"
        cv2.imwrite(str(p), np.full((*hw, 3), v, np.uint8))
        paths.append(p)
    return paths


class PlcServer:
    """A real pymodbus TCP server on 127.0.0.1 standing in for the PLC of docs/plc.md, run in a
    thread, with stop/restart for fault injection. The test plays the PLC program through a
    second Modbus client (``hr``/``set_hr``), exactly as a PLC scan would see the registers."""

    def __init__(self, port: int | None = None, size: int = 64) -> None:
        import logging
        import socket

        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext

        logging.getLogger("pymodbus").setLevel(logging.ERROR)  # deprecation chatter of 3.1x
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        dev = ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, [0] * size),
                                  co=ModbusSequentialDataBlock(1, [False] * size))
        self.context = ModbusServerContext(devices=dev, single=True)
        self._thread = None
        self._loop = None
        self._server = None

    def start(self) -> PlcServer:
        import asyncio
        import socket
        import threading
        import time

        from pymodbus.server import ModbusTcpServer

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            async def serve() -> None:
                self._server = ModbusTcpServer(self.context, address=("127.0.0.1", self.port))
                await self._server.serve_forever()

            try:
                loop.run_until_complete(serve())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        for _ in range(200):  # until the port accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        import asyncio

        if self._server is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        except Exception:  # the loop may already be closing
            pass
        self._thread.join(timeout=10)
        self._server = None

    def _client(self):
        from pymodbus.client import ModbusTcpClient

        c = ModbusTcpClient("127.0.0.1", port=self.port, timeout=2)
        assert c.connect()
        return c

    def hr(self, offset: int, n: int = 1) -> list[int]:
        c = self._client()
        try:
            return list(c.read_holding_registers(offset, count=n, device_id=1).registers)
        finally:
            c.close()

    def set_hr(self, offset: int, values: list[int]) -> None:
        c = self._client()
        try:
            assert not c.write_registers(offset, values, device_id=1).isError()
        finally:
            c.close()

    def coil(self, offset: int) -> bool:
        c = self._client()
        try:
            return bool(c.read_coils(offset, count=1, device_id=1).bits[0])
        finally:
            c.close()


class PlcProcess:
    """The PLC server in a separate process (``plc_server.py``): ``stop`` kills it, ``start``
    brings a fresh one up on the same port (its registers start at 0, like a rebooted PLC)."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._proc = None
        self._probe = PlcServer.__new__(PlcServer)
        self._probe.port = self.port

    def start(self) -> PlcProcess:
        import socket
        import subprocess
        import sys
        import time
        from pathlib import Path

        here = Path(__file__).resolve().parent
        self._proc = subprocess.Popen([sys.executable, str(here / "plc_server.py"), str(self.port)], cwd=here,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def hr(self, offset: int, n: int = 1) -> list[int]:
        return self._probe.hr(offset, n)


def wait_until(pred, timeout_s: float = 5.0, step_s: float = 0.02) -> bool:
    """Poll ``pred`` until it is true or ``timeout_s`` passed (tests of real servers/threads,
    where the wait is for another thread, never a timing assertion); returns the last answer."""
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step_s)
    return bool(pred())
