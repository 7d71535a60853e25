"""keep_freed_memory: large freed blocks are reused, not faulted in; release_freed_memory
gives them back."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

INCLUDE = Path(__file__).resolve().parents[2] / "include"

# Touches a 64 MiB block, frees it, and prints the page faults that taking a second one costs.
PROBE = """
import resource, sys
from spamgeo.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
block = b"\\x01" * (64 << 20)
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = b"\\x02" * (64 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_probe(code: str, *args: str) -> str:
    """What `code` prints in a fresh interpreter, with no allocator settings from outside."""
    environment = {**os.environ, "PYTHONPATH": str(INCLUDE)}
    for name in list(environment):
        if name.startswith("MALLOC_") or name == "ARROW_DEFAULT_MEMORY_POOL":
            del environment[name]
    completed = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
        timeout=60,
    )
    return completed.stdout


def faults_of_second_block(mode: str) -> int:
    return int(run_probe(PROBE, mode))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
def test_freed_block_is_reused_instead_of_faulted_in_again() -> None:
    # 16,384 pages of 4 KiB: by default glibc unmaps the freed block and maps a fresh one.
    assert faults_of_second_block("default") > 10_000
    assert faults_of_second_block("keep") < 1_000


ARROW_PROBE = """
import pyarrow as pa
from spamgeo.memory import keep_freed_memory
before = pa.default_memory_pool().backend_name
answers = {keep_freed_memory(), keep_freed_memory()}
print(before, pa.default_memory_pool().backend_name, *answers)
"""


def test_arrow_allocates_through_the_same_malloc_once_kept() -> None:
    before, after, *answers = run_probe(ARROW_PROBE).split()
    glibc = platform.libc_ver()[0] == "glibc"
    assert answers == [str(glibc)]
    assert after == ("system" if glibc else before)


# Keeps freed memory, frees 128 MiB of small blocks, and prints RSS before and after releasing.
RELEASE_PROBE = """
from spamgeo.memory import keep_freed_memory, release_freed_memory
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
assert keep_freed_memory()
blocks = [bytes([index % 251]) * (1 << 20) for index in range(128)]
del blocks
kept = rss_kib()
assert release_freed_memory()
print(kept - rss_kib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
def test_released_memory_goes_back_to_the_kernel() -> None:
    assert int(run_probe(RELEASE_PROBE)) > 100 << 10  # KiB: most of the 128 MiB
