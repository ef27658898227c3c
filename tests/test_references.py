"""Names that say what they are: the VNNI predicate reads the CPU's flags, docstrings cite real
test files."""

import re
from pathlib import Path

import torch

from ptqlib import hardware

REPO_ROOT = Path(__file__).resolve().parents[1]
CITED_TEST = re.compile(r"tests/test_[a-z0-9_]+\.py")


def test_every_cited_test_file_exists():
    cited = {}
    for folder in ("ptqlib", "benchmarks", "docs"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for name in CITED_TEST.findall(path.read_text()):
                cited.setdefault(name, path.relative_to(REPO_ROOT))
    for name in CITED_TEST.findall((REPO_ROOT / "README.md").read_text()):
        cited.setdefault(name, "README.md")
    assert cited, "the pattern found nothing: it is wrong"
    missing = {
        name: str(where) for name, where in cited.items() if not (REPO_ROOT / name).is_file()
    }
    assert not missing, f"cited but absent: {missing}"


def test_the_vnni_predicate_reads_the_capability_flags(monkeypatch):
    for flags, expected in [
        ({"avx512_vnni": True}, True),
        ({"avx_vnni": True}, True),
        ({"amx_int8": True}, False),
        ({}, False),
    ]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda flags=flags: flags)
        assert hardware.cpu_has_vnni() is expected, flags
        # _int_mm counts as fast with AVX-512 VNNI only, through the same predicate.
        avx512 = flags.get("avx512_vnni", False) and torch.backends.mkldnn.is_available()
        assert hardware.int8_gemm_is_fast() is avx512, flags
        # oneDNN capped below VNNI computes wrong integers: the exact float GEMM instead.
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        assert hardware.int8_gemm_is_fast() is False, flags
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")


def test_a_onednn_cap_below_vnni_is_noticed():
    for cap, keeps in [("", True), ("ALL", True), ("avx512_core_vnni", True),
                       ("AVX512_CORE_AMX", True), ("AVX2_VNNI", True), ("AVX2", False),
                       ("AVX512_CORE", False), ("SSE41", False)]:  # fmt: skip
        assert hardware.onednn_keeps_vnni({"ONEDNN_MAX_CPU_ISA": cap}) is keeps, cap
