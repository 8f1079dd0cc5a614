"""The device runs the daemon from a bundle without torch installed: import-block torch/timm
in a subprocess and drive the simulated line through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'torchvision'):
            raise ImportError('torch is not installed on this device (blocked by the test)')
sys.meta_path.insert(0, _Block())
from edgekit.cli import main
sys.argv = ['edgekit'] + sys.argv[1:]
main()
"""


def test_simulated_line_runs_without_torch(tmp_path: Path, tiny_bundle: Path, tiny_dataset: Path) -> None:
    cfg = {
        "bundle": str(tiny_bundle),
        "source": {"type": "sim", "dataset": str(tiny_dataset), "parts": 12, "spacing_mm": 50,
                   "reject_distance_mm": 400},
        "encoder": {"type": "sim", "speed_mm_s": 100, "ticks_per_mm": 1},
        "decision": {"deadline_ms": 1500},
        "scheduler": {"mode": "encoder", "pulse_ms": 10},
        "outputs": [{"type": "fake_gpio"}],
        "events": {"path": str(tmp_path / "events.db")},
        "metrics": {"enabled": False},
    }
    p = tmp_path / "sim.yaml"
    p.write_text(yaml.safe_dump(cfg))
    script = tmp_path / "no_torch.py"
    script.write_text(BLOCKER)
    res = subprocess.run([sys.executable, str(script), "simulate", str(p), "--parts", "12"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "event log: 12 rows, lost: 0" in res.stdout, res.stdout
    check = subprocess.run([sys.executable, str(script), "run", "--check", str(p)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
