from __future__ import annotations

import pytest

from edgekit.errors import DeviceError
from edgekit.runtime.outputs import OUTPUTS
from edgekit.runtime.outputs.gpio import FakeGpioChip, FakeGpioOutputConfig, GpiodOutputConfig, GpioLines


def _fake(chip: str, active_low: bool = False):
    FakeGpioChip.reset(chip)
    cfg = FakeGpioOutputConfig(chip=chip, lines=GpioLines(reject=3, heartbeat=4), active_low=active_low)
    return OUTPUTS.get("fake_gpio")(cfg)


def test_fake_chip_records_edges_with_monotonic_timestamps() -> None:
    out = _fake("t-edges")
    out.open()
    out.set_line("reject", True)
    out.set_line("reject", True)  # no change → no edge
    out.set_line("reject", False)
    out.set_line("review", True)  # role not wired → ignored
    out.close()
    edges = FakeGpioChip.get("t-edges").edges_for(3)
    assert [(e.active, e.level) for e in edges] == [(False, 0), (True, 1), (False, 0)]
    assert edges[1].t_ns <= edges[2].t_ns


def test_active_low_inverts_physical_level_and_safe_state_is_inactive() -> None:
    out = _fake("t-al", active_low=True)
    out.open()
    chip = FakeGpioChip.get("t-al")
    assert chip.levels[3] == 1  # inactive = high on an active-low line
    out.set_line("reject", True)
    assert chip.levels[3] == 0
    out.close()
    assert chip.levels[3] == 1 and not chip.owners


def test_busy_line_is_refused_with_one_line_error() -> None:
    a = _fake("t-busy")
    a.open()
    b = OUTPUTS.get("fake_gpio")(FakeGpioOutputConfig(chip="t-busy", lines=GpioLines(reject=3)))
    with pytest.raises(DeviceError, match="busy"):
        b.open()
    a.close()
    b.open()  # free again after release
    b.close()


def test_gpiod_without_chip_gives_device_error(tmp_path) -> None:
    cfg = GpiodOutputConfig(chip=str(tmp_path / "gpiochip9"), lines=GpioLines(reject=1))
    with pytest.raises(DeviceError, match="gpiochip9"):
        OUTPUTS.get("gpiod")(cfg).open()


@pytest.mark.gpio
def test_gpiod_real_chip_toggles_line() -> None:
    import glob

    chip = sorted(glob.glob("/dev/gpiochip*"))[0]
    out = OUTPUTS.get("gpiod")(GpiodOutputConfig(chip=chip, lines=GpioLines(reject=0)))
    out.open()
    out.set_line("reject", True)
    out.set_line("reject", False)
    out.close()


def test_gpiod_output_on_the_fake_gpiod_module_by_label(fake_chip) -> None:
    """The production GpiodOutput against the fake gpiod (the real module's surface): the chip is
    named by label as the pin map recommends, lines start inactive, active_low inverts the
    physical level, close drives them inactive and releases them."""
    cfg = GpiodOutputConfig(chip="tegra234-gpio", lines=GpioLines(reject=43, heartbeat=44), active_low=True)
    out = OUTPUTS.get("gpiod")(cfg)
    out.open()
    out.set_line("reject", True)
    out.set_line("reject", False)
    out.set_line("heartbeat", True)
    out.close()
    assert [lv for _, lv in fake_chip.output_history(43)] == [1, 0, 1]  # physical: idle high (active low)
    assert [lv for _, lv in fake_chip.output_history(44)] == [1, 0, 1]
    again = OUTPUTS.get("gpiod")(cfg)
    again.open()  # released: free again
    again.close()


def test_gpiod_output_unknown_label_names_the_chips_present(fake_chip) -> None:
    out = OUTPUTS.get("gpiod")(GpiodOutputConfig(chip="tegra194-gpio", lines=GpioLines(reject=1)))
    with pytest.raises(DeviceError, match=r"outputs.gpio: no gpiochip with label 'tegra194-gpio' .*tegra234-gpio"):
        out.open()
