"""Secrets out of the logs: token-like query values are redacted from every log line.

A URL is logged whole by uvicorn's access log (also for a 401), so a token or stream ticket
sent as a query parameter would be kept in plain text wherever the logs go. The filter
rewrites each record's message and arguments, replacing the value of any query parameter whose
name looks like a credential (access_token, token, ticket, api_key, key, secret, password,
signature, ...) and any string shaped like one of our tokens or tickets.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

# `name=value` after `?`, `&` or `;` where the name contains a credential-like word.
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;][^=&;#\s\"]*?(?:token|ticket|key|secret|passw|pwd|auth|sig|session|credential|code)"
    r"[^=&;#\s\"]*=)(?P<value>[^&;#\s\"]*)",
    re.IGNORECASE,
)
# Our own tokens (ep_...) and stream tickets (st_...), wherever they appear (a path, a header).
_OUR_SECRETS = re.compile(r"\b(?:ep|st)_[A-Za-z0-9_-]{20,}")

# Loggers that write request lines: uvicorn's access log, and its error log (which may quote one).
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    text = _QUERY_SECRET.sub(lambda m: m.group("name") + REDACTED, text)
    return _OUR_SECRETS.sub(REDACTED, text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and string arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            # Positional arguments stay positional: uvicorn's access formatter unpacks them.
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install_log_redaction(logger_names: tuple[str, ...] = REDACTED_LOGGERS) -> None:
    """Add the filter to each logger once (the app factory may run more than once a process)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
