"""Stand-alone pymodbus TCP server for fault-injection tests: ``python plc_server.py PORT``.
Runs in its own process so stopping it is a real outage (killed process, refused connections)."""

from __future__ import annotations

import sys
import time

from rt_helpers import PlcServer

if __name__ == "__main__":
    PlcServer(int(sys.argv[1])).start()
    while True:
        time.sleep(3600)
