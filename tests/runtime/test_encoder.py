"""Encoders against the fake ``gpiod`` module (the real module's surface, kernel event semantics):
quadrature decoded from the ordered events of both channels, lost events found from sequence
numbers, chips resolved by label; and one contract test that the simulated encoder passes too."""

from __future__ import annotations

import random

import pytest

from edgekit.errors import DeviceError
from edgekit.runtime import gpiochip
from edgekit.runtime.encoder import (
    GpiodEncoder,
    GpiodEncoderConfig,
    QuadratureDecoder,
    SimEncoder,
    SimEncoderConfig,
)

A, B = 5, 6
US = 1_000


@pytest.fixture
def chip(fake_chip):
    return fake_chip


class Belt:
    """A quadrature encoder on a belt: moves the fine position one Gray step at a time and drives
    A/B on the fake chip at the given kernel timestamps."""

    SEQ = ((0, 0), (1, 0), (1, 1), (0, 1))  # (A, B) by phase: A leads B going forward

    def __init__(self, dev, t0_ns: int = 1_000_000_000) -> None:
        self.dev, self.pos, self.t = dev, 0, t0_ns

    def step(self, direction: int, dt_ns: int) -> None:
        self.pos += direction
        self.t += dt_ns
        a, b = self.SEQ[self.pos % 4]
        self.dev.drive(A, a, self.t)
        self.dev.drive(B, b, self.t)  # only the one that changed makes an event

    def move(self, steps: int, dt_ns: int, rng: random.Random | None = None) -> None:
        d = 1 if steps > 0 else -1
        for _ in range(abs(steps)):
            self.step(d, dt_ns + (rng.randint(-dt_ns // 3, dt_ns // 3) if rng else 0))


def quad_encoder(dev, **kw) -> GpiodEncoder:
    enc = GpiodEncoder(GpiodEncoderConfig(chip="tegra234-gpio", line=A, direction_line=B, **kw), reader_thread=False)
    enc.open()
    return enc


def drain(enc: GpiodEncoder) -> None:
    while enc.poll(0.0):
        pass


def test_quadrature_direction_from_both_channels_events_not_b_now(chip) -> None:
    """Forward 400 steps, back 120, forward 40, with jitter, read as one late batch (B's level by
    then is whatever the belt left it at: reading it per event, as the old code did, is wrong)."""
    enc = quad_encoder(chip, resolution="x4", event_buffer_size=4096)
    belt, rng = Belt(chip), random.Random(3)
    belt.move(400, 125 * US, rng)
    belt.move(-120, 125 * US, rng)
    belt.move(40, 125 * US, rng)
    drain(enc)
    assert enc.count() == 400 - 120 + 40 == belt.pos
    assert enc.pop_faults() == [] and enc.lost_events == 0
    enc.close()


def test_quadrature_x1_counts_cycles_and_vibration_does_not_drift(chip) -> None:
    enc = quad_encoder(chip, event_buffer_size=4096)  # x1: one tick per A cycle
    belt = Belt(chip)
    belt.move(4 * 50, 100 * US)
    drain(enc)
    assert enc.count() == 50
    for _ in range(30):  # the belt stops right on an A edge and vibrates across it
        belt.move(1, 50 * US)
        belt.move(-1, 50 * US)
    drain(enc)
    assert enc.count() == 50
    belt.move(-4 * 20, 100 * US)
    drain(enc)
    assert enc.count() == 30
    enc.close()


def test_count_at_uses_kernel_timestamps(chip) -> None:
    enc = quad_encoder(chip, resolution="x4")
    belt = Belt(chip, t0_ns=5_000_000)
    times = []
    for _ in range(10):
        belt.step(1, 1_000_000)
        times.append(belt.t)
        drain(enc)
    assert [enc.count_at(t) for t in times] == list(range(1, 11))
    assert enc.count_at(times[3] + 500_000) == 4
    enc.close()


def test_lost_events_are_a_fault_with_the_number_lost(chip) -> None:
    """The kernel FIFO holds event_buffer_size events and drops the oldest: 40 edges into 16
    slots lose 24, seen as a global_seqno gap."""
    enc = quad_encoder(chip, resolution="x4", event_buffer_size=16)
    belt = Belt(chip)
    belt.move(2, 100 * US)
    drain(enc)  # seqnos 1, 2 seen
    belt.move(40, 100 * US)
    drain(enc)
    faults = enc.pop_faults()
    assert enc.lost_events == 24 and [f[1] for f in faults if f[1]] == [24]
    assert "24 edge event(s) lost" in faults[0][2] and "event_buffer_size" in faults[0][2]
    assert enc.pop_faults() == []
    enc.close()


def test_single_channel_counts_rising_edges(chip) -> None:
    enc = GpiodEncoder(GpiodEncoderConfig(chip="gpiochip0", line=A, event_buffer_size=64), reader_thread=False)
    enc.open()
    for i in range(25):
        chip.drive(A, 1, 1000 + 2 * i)
        chip.drive(A, 0, 1001 + 2 * i)
    drain(enc)
    assert enc.count() == 25
    enc.close()


def test_encoder_thread_reads_events(chip) -> None:
    enc = GpiodEncoder(GpiodEncoderConfig(chip=chip.path, line=A, direction_line=B, resolution="x4"))
    enc.open()
    Belt(chip).move(12, 100 * US)
    import time

    deadline = time.monotonic() + 5.0  # the reader thread wakes on the request's fd
    while enc.count() != 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert enc.count() == 12
    enc.close()


def test_chip_names_resolve_one_way(chip, tmp_path) -> None:
    for name in ("tegra234-gpio", "gpiochip0", str(tmp_path / "gpiochip0")):
        ref = gpiochip.resolve_chip(name, who="encoder")
        assert (ref.path, ref.label, ref.num_lines) == (str(tmp_path / "gpiochip0"), "tegra234-gpio", 164)
    assert gpiochip.resolve_chip("tegra234-gpio-aon").name == "gpiochip1"
    with pytest.raises(DeviceError, match=r"no gpiochip with label 'tegra194-gpio' \(chips here: gpiochip0 "
                                          r"\[tegra234-gpio\], gpiochip1 \[tegra234-gpio-aon\]\)"):
        gpiochip.resolve_chip("tegra194-gpio", who="encoder")
    with pytest.raises(DeviceError, match="gpiochip7 is not a gpiochip device"):
        gpiochip.resolve_chip("gpiochip7")


def test_busy_lines_refused_with_the_fix(chip) -> None:
    first = quad_encoder(chip)
    with pytest.raises(DeviceError, match=r"encoder: cannot request .*gpiochip0 line\(s\) \[5, 6\] .*busy.*gpioinfo"):
        quad_encoder(chip)
    first.close()
    quad_encoder(chip).close()  # released lines can be requested again


def test_decoder_flags_a_missed_edge() -> None:
    d = QuadratureDecoder(0, 0, "x4")
    assert d.edge(True, 1) == 1          # 00 -> 10
    assert d.edge(True, 1) == 0 and d.invalid == 1  # A "rises" again: its falling edge was lost


@pytest.mark.parametrize("kind", ["sim", "gpiod"])
def test_contract_forward_belt_counts(kind, chip) -> None:
    """The same belt, 300 mm/s × 1 tick/mm, seen through either encoder: count_at(t) is the
    number of ticks completed by t."""
    t0 = 2_000_000_000
    period = 1_000_000_000 // 300
    if kind == "sim":
        enc = SimEncoder(SimEncoderConfig(speed_mm_s=300, ticks_per_mm=1), clock=lambda: t0)
        enc.open()
    else:
        enc = GpiodEncoder(GpiodEncoderConfig(chip="tegra234-gpio", line=A, event_buffer_size=128), reader_thread=False)
        enc.open()
        for k in range(1, 61):  # one rising edge per tick, at the tick's time
            t = t0 + -(-k * 1_000_000_000 // 300)
            chip.drive(A, 1, t)
            chip.drive(A, 0, t + period // 2)
        drain(enc)
    probes = [t0 + period * k + period // 3 for k in range(0, 60, 7)]
    assert [enc.count_at(t) for t in probes] == [int((t - t0) * 300 // 1_000_000_000) for t in probes]
    enc.close()
