"""Which settings a resume compares."""

from adans_toolchain.pipeline.config import CompileConfig


def test_a_latency_table_is_part_of_a_latency_search_only():
    macs = CompileConfig(model="m", data="d", out="o", cost="macs", lut="table.json")
    latency = CompileConfig(model="m", data="d", out="o", cost="latency", lut="table.json")
    # A MACs search is not changed by a table (it only feeds the report), so resuming it with one is allowed.
    assert "lut" not in macs.resume_key()
    assert latency.resume_key()["lut"] == "table.json"
    assert macs.resume_key()["methods"] == ["ps"]  # tuples become JSON lists
