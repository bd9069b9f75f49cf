"""Run a `ferflow` command that SIGKILLs itself at one chosen point: a real kill, no clean-up, no handler,
but at a point chosen exactly rather than by a race with a timer.

    python -m tests.killpoints TARGET WHEN MATCH -- ferflow-arguments...

TARGET  ``module:attribute`` of the callable to wrap, e.g. ``os:replace`` or
        ``mlflow.tracking.client:MlflowClient.set_registered_model_alias``;
WHEN    ``before`` or ``after`` the wrapped call;
MATCH   text that the call's arguments (as ``repr``) must contain for the kill to happen ("" for the first call).

The process exits with -9 (SIGKILL) when the point is reached; with the command's own code if it is not.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def arm(target: str, when: str, match: str) -> None:
    module_name, _, path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)

    @functools.wraps(original)
    def killer(*args, **kwargs):
        hit = match in repr(args) + repr(kwargs)
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, killer)


def main(argv: list[str]) -> int:
    target, when, match, separator, *command = argv
    if separator != "--" or when not in {"before", "after"}:
        raise SystemExit(__doc__)
    arm(target, when, match)
    from ferflow.cli import entry

    sys.argv = ["ferflow", *command]
    return entry()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
