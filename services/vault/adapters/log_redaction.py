"""A last line of defence for the vault's logs: any run of 13 to 19 digits (spaces or
dashes between them allowed) that passes the Luhn check is masked before a line is
written, in the message, the exception text, the stack and every extra field.

The vault's code never logs a card number; this catches what it does not control (a
library's exception message, a future careless log call). The Luhn check keeps it off
ordinary numbers: an arbitrary 16-digit number is masked with probability 1/10.
"""

from __future__ import annotations

import logging
import re

from services.vault.domain.card import luhn_valid

_CANDIDATE = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
MASK = "[REDACTED PAN]"
# Fields the framework fills in and that are never user data (a 32-hex-digit trace id can
# contain a Luhn-valid run of digits).
_UNTOUCHED = {"trace_id", "span_id", "service", "levelname", "name", "asctime"}
_RECORD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def redact(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group())
        return MASK if luhn_valid(digits) else match.group()

    return _CANDIDATE.sub(mask, text)


class PanRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRIBUTES and name not in _UNTOUCHED and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


def install() -> None:
    """Adds the filter to every handler of the root logger (where the framework's JSON
    handler is), so records from every logger pass through it."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, PanRedactingFilter) for f in handler.filters):
            handler.addFilter(PanRedactingFilter())
