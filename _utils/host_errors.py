"""
The one error a compute-host check raises: a daemon or file it needs is not there, or a command failed.

Under Salt it is a ``CommandExecutionError`` (the job fails with retcode 1 and the message), so the
execution-module shells need no wrapping; without Salt (unit tests) it is a plain ``RuntimeError``.
"""

try:
    from salt.exceptions import CommandExecutionError as _Base
except ImportError:  # pragma: no cover - Salt is installed wherever these run
    _Base = RuntimeError


class HostError(_Base):
    """A source could not be read or a command failed."""


def read_text(path):
    """The text of ``path``; :class:`HostError` naming it when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise HostError(f"cannot read {path}: {exc}") from exc
