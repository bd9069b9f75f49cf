"""TensorFlow's C++ start-up lines are dropped from a command's stderr; everything else comes through."""

from __future__ import annotations

import subprocess
import sys

from ferflow.native_logs import is_noise

START_UP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795357745.070702   25218 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1795357745.071446   25218 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1795357769.340842   25218 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers",
]
REAL = [
    "E0000 00:00:1795357769.340842   25218 gpu_device.cc:52] out of memory allocating 4GB",
    "F0000 00:00:1795357769.340842   25218 check.cc:12] Check failed: shape mismatch",
    "ferflow train: error: params.yaml: train.epochs: Input should be greater than 0",
    "Traceback (most recent call last):",
]


def test_noise_patterns_match_start_up_lines_and_nothing_real():
    assert all(is_noise(line) for line in START_UP)
    assert not any(is_noise(line) for line in REAL)


def test_a_filtered_process_keeps_real_errors_and_its_last_words():
    """Native writes to descriptor 2 are filtered in order; a crash's traceback still arrives in full."""
    script = (
        "import os, sys\n"
        "from ferflow.native_logs import filter_native_logs\n"
        "assert filter_native_logs()\n"
        f"for line in {START_UP + REAL[:2]!r}:\n"
        "    os.write(2, (line + '\\n').encode())\n"
        "print('to stdout')\n"
        "raise RuntimeError('the last words')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == "to stdout\n"
    lines = result.stderr.splitlines()
    assert lines[:2] == REAL[:2]
    assert lines[-1] == "RuntimeError: the last words" and "Traceback (most recent call last):" in lines
    assert not any(line in result.stderr for line in START_UP)


def test_the_filter_can_be_turned_off():
    script = "import os\nfrom ferflow.native_logs import filter_native_logs\nprint(filter_native_logs())\n"
    env = {"FERFLOW_NATIVE_LOGS": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout == "False\n"
