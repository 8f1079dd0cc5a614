"""onnxruntime backend helpers: CPU int8 capability detection."""

from __future__ import annotations

import pytest

from edgekit.runtime.backends.ort import cpu_int8_dot


@pytest.mark.parametrize("flags, machine, expected", [
    ("fpu sse2 avx2 fma avx512f avx512_vnni", "x86_64", True),
    ("fpu sse2 avx2 fma avx_vnni", "x86_64", True),
    ("fpu sse2 avx2 fma", "x86_64", False),  # Zen 3 / Haswell-class: pmaddubsw saturates
    ("", "aarch64", True),
    ("", "riscv64", None),
])
def test_cpu_int8_dot_from_flags(flags: str, machine: str, expected: bool | None) -> None:
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n" if flags else "processor\t: 0\n"
    assert cpu_int8_dot(cpuinfo, machine) is expected


def test_cpu_int8_dot_without_flags_line_is_unknown() -> None:
    assert cpu_int8_dot("processor : 0\n", "x86_64") is None


def test_int8_with_8bit_weights_warns_on_a_cpu_without_vnni(tiny_run, tiny_dataset, tmp_path, monkeypatch) -> None:
    import io
    import json

    from edgekit.bundle.io import load_bundle
    from edgekit.compile.build import build_bundle
    from edgekit.runtime.backends import ort as ort_backend
    from edgekit.runtime.logs import setup_logging

    out = build_bundle(tiny_run, tmp_path / "b", precisions=["fp32", "int8"], eval_data=tiny_dataset,
                       allow_degraded=True, calib_max_tiles=8, int8_reduce_range=False, quiet=True)
    stream = io.StringIO()
    setup_logging("json", stream=stream)
    monkeypatch.setattr(ort_backend, "cpu_int8_dot", lambda: False)
    be = ort_backend.OrtBackend(ort_backend.OrtBackendConfig(precision="int8"))
    be.load(load_bundle(out))  # runs anyway: a warning, not a refusal
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    warn = [e for e in events if e.get("event") == "int8_saturation_risk"]
    assert len(warn) == 1 and "--int8-reduce-range" in warn[0]["fix"]
    stream.truncate(0)
    monkeypatch.setattr(ort_backend, "cpu_int8_dot", lambda: True)
    ort_backend.OrtBackend(ort_backend.OrtBackendConfig(precision="int8")).load(load_bundle(out))
    assert "int8_saturation_risk" not in stream.getvalue()
