"""Target descriptors and host detection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from targets import Target, TargetDescriptorError, UnknownTargetError, known_target_ids, load_target
from targets.host import cpu_name, has_fma, parse_cpuinfo, peak_gflops, simd_width_bits
from targets.target import target_from_dict

X86_AVX512 = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
cpu MHz		: 2900.000
flags		: fpu sse sse2 avx fma avx2 avx512f avx512bw
"""
X86_AVX2 = """processor	: 0
model name	: AMD EPYC
cpu MHz		: 2445.406
flags		: fpu sse sse2 avx fma avx2
"""
ARM_A57 = """processor	: 0
BogoMIPS	: 62.50
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU implementer	: 0x41
CPU part	: 0xd07

processor	: 1
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU part	: 0xd07
"""


def test_known_targets_load_and_are_frozen():
    ids = known_target_ids()
    assert {"host", "cortex-a57", "jetson-pascal"} <= set(ids)
    for tid in ids:
        t = load_target(tid)
        assert t.id == tid and t.kind in ("cpu", "gpu") and t.onnxruntime_providers
        with pytest.raises(dataclasses.FrozenInstanceError):
            t.cores = 1  # type: ignore[misc]


def test_descriptors_carry_cited_roofline_numbers():
    a57 = load_target("cortex-a57")
    assert (a57.cores, a57.frequency_ghz, a57.simd_width_bits) == (4, 2.0, 128)
    assert a57.peak_gflops == pytest.approx(4 * 2.0 * 4 * 2)  # derived in the file: cores x GHz x lanes x FMA
    assert a57.memory_bandwidth_gbs == 59.7 and a57.provider == "CPUExecutionProvider"
    gpu = load_target("jetson-pascal")
    assert gpu.kind == "gpu" and gpu.provider == "CUDAExecutionProvider"
    assert gpu.peak_gflops == pytest.approx(256 * 1.3 * 2)
    for t in (a57, gpu):
        assert t.sources and all(s.startswith("[") for s in t.sources)
        assert t.kernel_overhead_us and t.device_match


def test_host_is_detected():
    host = load_target("host")
    assert host.id == "host" and host.kind == "cpu"
    assert host.cores and host.threads == host.cores and host.cpu_model
    assert host.peak_gflops is None or host.peak_gflops > 0


@pytest.mark.parametrize(
    "text,name,simd,fma,mhz",
    [
        (X86_AVX512, "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", 512, True, 2900.0),
        (X86_AVX2, "AMD EPYC", 256, True, 2445.406),
        (ARM_A57, "Cortex-A57", 128, True, None),
    ],
    ids=["avx512", "avx2", "neon"],
)
def test_cpuinfo_parsing(text, name, simd, fma, mhz):
    info = parse_cpuinfo(text)
    assert cpu_name(info) == name
    assert simd_width_bits(info.flags) == simd
    assert has_fma(info.flags) is fma
    assert info.mhz == mhz


def test_peak_is_only_estimated_from_known_inputs():
    assert peak_gflops(2, 2.5, 256, True) == pytest.approx(2 * 2.5 * 8 * 2)
    assert peak_gflops(2, None, 256, True) is None
    assert peak_gflops(2, 2.5, None, True) is None
    assert peak_gflops(2, 2.5, 128, None) is None
    assert has_fma(frozenset({"sse2", "avx"})) is None  # unknown, not guessed


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(UnknownTargetError, match="cortex-a57"):
        load_target("no-such-device")


def test_descriptor_fields_are_checked():
    with pytest.raises(TargetDescriptorError, match="unknown field.*peak_tflops"):
        target_from_dict({"id": "x", "description": "d", "kind": "cpu", "peak_tflops": 1.0})
    with pytest.raises(TargetDescriptorError, match="lacks kind"):
        target_from_dict({"id": "x", "description": "d"})


def test_lookup_table_location(monkeypatch, tmp_path):
    t = Target(id="dev", description="d", kind="cpu")
    monkeypatch.delenv("ADANS_LUT_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert t.lut_location() == tmp_path / "cache" / "adans" / "lut" / "dev.json"
    monkeypatch.setenv("ADANS_LUT_DIR", str(tmp_path / "luts"))
    assert t.lut_location() == tmp_path / "luts" / "dev.json"
    explicit = dataclasses.replace(t, lut_path=str(tmp_path / "mine.json"))
    assert explicit.lut_location() == tmp_path / "mine.json"


def test_no_hardware_numbers_in_target_code():
    """Hardware numbers live in the TOML descriptors only."""
    import re

    code = (Path(__file__).resolve().parents[2] / "targets" / "target.py").read_text()
    assert not re.search(r"\b(59\.7|2\.0|64\.0|665\.6|1\.3)\b", code)
