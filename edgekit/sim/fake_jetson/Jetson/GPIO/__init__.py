"""Fake Jetson.GPIO (see edgekit.sim.fake_jetson): constants, setmode/getmode, setwarnings, setup,
output, input, cleanup with the real package's values, checks and failure modes."""

import os
import warnings

BOARD = 10
BCM = 11
TEGRA_SOC = 1000
CVM = 1001
PUD_OFF = 20
PUD_DOWN = 21
PUD_UP = 22
HIGH = 1
LOW = 0
OUT = 0
IN = 1

model = os.environ.get("FAKE_JETSON_MODEL", "JETSON_ORIN_NANO")
if not model:
    raise Exception("Could not determine Jetson model")  # what gpio_pin_data.get_data() raises
JETSON_INFO = {"TYPE": model}
_VALID = {BOARD: {7, 11, 12, 13, 15, 16, 18, 19, 21, 22, 23, 24, 26, 29, 31, 32, 33, 35, 36, 37, 38, 40},
          BCM: {4, 17, 18, 27, 22, 23, 24, 10, 9, 25, 11, 8, 7, 5, 6, 12, 13, 19, 16, 26, 20, 21}}
_UNMUXED = {int(p) for p in os.environ.get("FAKE_JETSON_UNMUXED", "").split(",") if p}
_gpio_warnings = True
_gpio_mode = None
_config = {}
levels = {}  # channel -> list of levels written (initial first)


def setwarnings(state):
    global _gpio_warnings
    _gpio_warnings = bool(state)


def setmode(mode):
    global _gpio_mode
    if _gpio_mode is not None and mode != _gpio_mode:
        raise ValueError("A different mode has already been set!")
    if mode not in (BOARD, BCM, TEGRA_SOC, CVM):
        raise ValueError("An invalid mode was passed to setmode()!")
    _gpio_mode = mode


def getmode():
    return _gpio_mode


def _channels(channels):
    if _gpio_mode is None:
        raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BOARD), GPIO.setmode(GPIO.BCM), "
                           "GPIO.setmode(GPIO.TEGRA_SOC) or GPIO.setmode(GPIO.CVM)")
    chs = list(channels) if isinstance(channels, (list, tuple)) else [channels]
    for ch in chs:
        if ch not in _VALID.get(_gpio_mode, set()):
            raise ValueError(f"Channel {ch} is invalid")
    return chs


def setup(channels, direction, pull_up_down=PUD_OFF, initial=None, consumer="Jetson-gpio"):
    chs = _channels(channels)
    if direction not in (OUT, IN):
        raise ValueError("An invalid direction was passed to setup()")
    for ch in chs:
        if _gpio_warnings and ch in _UNMUXED:
            warnings.warn(f'[WARNING] User requested {"output" if direction == OUT else "input"} for channel '
                          f'"{ch}", but it is set to {"input" if direction == OUT else "output"} in pinmux.', stacklevel=2)
        _config[ch] = direction
        if direction == OUT:
            levels[ch] = [LOW if initial is None else int(initial)]


def output(channels, values):
    chs = _channels(channels)
    vals = list(values) if isinstance(values, (list, tuple)) else [values] * len(chs)
    if len(vals) != len(chs):
        raise RuntimeError("Number of values != number of channels")
    for ch, v in zip(chs, vals):
        if _config.get(ch) != OUT:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        levels[ch].append(int(v))


def input(channel):  # noqa: A001 (the real name)
    (ch,) = _channels(channel)
    if ch not in _config:
        raise RuntimeError("You must setup() the GPIO channel first")
    return levels.get(ch, [LOW])[-1]


def cleanup(channel=None):
    global _gpio_mode
    if _gpio_mode is None:
        if _gpio_warnings:
            warnings.warn("No channels have been set up yet - nothing to clean up! Try cleaning up at the end "
                          "of your program instead!", RuntimeWarning, stacklevel=2)
        return
    chs = list(_config) if channel is None else (list(channel) if isinstance(channel, (list, tuple)) else [channel])
    for ch in chs:
        _config.pop(ch, None)
    if not _config:
        _gpio_mode = None
