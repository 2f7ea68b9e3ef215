"""The CPU backend's thread pool (csrc/common/parallel.h): builds a small C++ program
against the header and runs it. Checks: each index covered once over thousands of
calls, workers started once (not per call) yet taking part, nested calls, concurrent
callers, exceptions, and a forked child."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="the check program uses fork()")
@pytest.mark.parametrize("threads", ["2", "4"])
def test_thread_pool(tmp_path, threads):
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH to build the pool check program")
    exe = tmp_path / "parallel_pool"
    subprocess.run([cxx, "-std=c++17", "-O1", "-pthread", "-I", str(ROOT / "csrc"),
                    str(ROOT / "tests" / "cpp" / "parallel_pool.cpp"), "-o", str(exe)], check=True)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DGTALKER_NUM_THREADS": threads})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
