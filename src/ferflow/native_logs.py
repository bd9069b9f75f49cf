"""Keep TensorFlow's and XLA's C++ start-up chatter out of the pipeline's output, and nothing else.

Since TensorFlow 2.19 the C++ logs go through absl before it is initialised, and ``TF_CPP_MIN_LOG_LEVEL`` no
longer silences them (tensorflow/tensorflow#100442): every stage printed a dozen lines about oneDNN, CUDA
stubs and CPU instructions. Those lines are written by native code straight to file descriptor 2, where no
Python logging setting reaches. So the command's descriptor 2 becomes a pipe into a small filter process that
drops the known start-up lines (absl's INFO and WARNING records, and a few harmless ERROR ones listed below)
and passes every other byte through unchanged, in order. Being a separate process, the filter outlives a
crash of the command and still delivers its last words (a Python traceback, a fatal native error).

``FERFLOW_NATIVE_LOGS=1`` turns the filter off (for debugging a backend), as does ``TF_CPP_MIN_LOG_LEVEL=0``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys

# Lines dropped: absl's INFO (I) and WARNING (W) records, both its formats; the banner absl prints before it is
# initialised; the second line of the CPU-instructions notice; and ERROR records known to mean nothing on a
# machine without a GPU or with TensorFlow's own tf.data graph rewrites.
NOISE_PATTERNS = (
    rb"^[IW]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] ",
    rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] [\w./-]+:\d+\] ",
    rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    rb"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$",
    rb"^E\d{4} [\d:. ]+ +\d+ cuda_(platform|executor|driver)\.cc:\d+\] failed call to cuInit",
    rb"^E\d{4} [\d:. ]+ +\d+ [\w./-]+:\d+\] Unable to register cu(DNN|FFT|BLAS) factory",
    rb"NodeDef mentions attribute use_unbounded_threadpool which is not in the op definition",
)

_FILTER = r"""
import re, sys
noise = re.compile(b"|".join(b"(?:" + p + b")" for p in %r))
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not noise.search(line.rstrip(b"\r\n")):
        out.write(line)
        out.flush()
"""


def is_noise(line: str) -> bool:
    import re

    return any(re.search(pattern, line.encode()) for pattern in NOISE_PATTERNS)


def filter_native_logs() -> bool:
    """Route this process's descriptor 2 through the filter; True if it did. Call before TensorFlow loads."""
    if os.environ.get("FERFLOW_NATIVE_LOGS") == "1" or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return False
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_end, write_end = os.pipe()
        # -S -E: no site packages or environment hooks, so the filter starts in milliseconds and cannot fail on
        # the project's own environment; it writes to the real stderr and exits when the last writer closes.
        process = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", _FILTER % (NOISE_PATTERNS,)],
            stdin=read_end, stdout=original, stderr=original, close_fds=True, start_new_session=True,
        )  # fmt: skip
    except OSError:
        return False  # no filter is better than no command
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    atexit.register(_drain, process, original)
    return True


def _drain(process: subprocess.Popen, original: int) -> None:
    """At exit, hand descriptor 2 back and let the filter write what it holds before the shell prompt returns.
    (A child process still holding the pipe keeps the filter alive; the wait is bounded for that case.)"""
    sys.stderr.flush()
    os.dup2(original, 2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
