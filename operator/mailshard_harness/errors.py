"""The one exception the harness raises for failures a person must act on.

Every failure the harness can foresee (a missing toolchain, a busy port, a
failed build, a component that will not start) becomes a HarnessError whose
message is a single line naming the cause and the log file to read. The CLI
prints that line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class HarnessError(RuntimeError):
    """A failure with one clear line of explanation and, where there is one, a log to read."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        self.log = log
        super().__init__(f"{message} (read {log})" if log else message)


def log_tail(log: Path, lines: int = 15) -> str:
    """The last lines of a log, for showing under the one-line error."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
