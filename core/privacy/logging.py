"""A logging filter that masks PII in records before any handler formats or ships them.

DESIGN.md: PII never reaches logs. The filter renders the message (``msg % args``), masks it and
stores the result back with ``args`` cleared, so neither the template nor the arguments can
carry a raw value past it. Exception and stack text are masked too: a traceback quoting a bad
input line would otherwise leak it.

Usage::

    install_redaction()                     # root logger and its handlers
    install_redaction(logging.getLogger("fathom.api"), style="partial")
"""

from __future__ import annotations

import logging

from core.privacy.pii import STYLES, mask


class PIIRedactingFilter(logging.Filter):
    """Masks PII in a record's message, args, exception and stack text; never drops a record.

    Args:
        region: ISO 3166 region for phone numbers written without a country code.
        style: "tag", "partial" or "hash" (see ``core.privacy.pii``).
        salt: HMAC key for the "hash" style; None uses the per-process salt.
    """

    def __init__(self, *, region: str = "GB", style: str = "tag", salt: bytes | str | None = None) -> None:
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"unknown mask style {style!r}: expected one of {STYLES}")
        self.region, self.style, self.salt = region, style, salt

    def _mask(self, text: str) -> str:
        return mask(text, region=self.region, style=self.style, salt=self.salt).text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place with PII masked. Always returns True (keep the record)."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not crash the caller nor leak args
            message = f"{record.msg} (unformattable args: {record.args!r})"
        record.msg, record.args = self._mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text)
            # Handlers fall back to exc_info only when exc_text is empty; clearing exc_info stops
            # a handler with its own formatter from rendering the raw traceback again.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self._mask(record.stack_info)
        return True


def install_redaction(
    logger: logging.Logger | None = None,
    *,
    region: str = "GB",
    style: str = "tag",
    salt: bytes | str | None = None,
) -> PIIRedactingFilter:
    """Attach a :class:`PIIRedactingFilter` to ``logger`` and to each of its handlers.

    Logger filters see only records logged on that very logger, while handler filters also see
    records propagated from child loggers, hence both. Handlers added later need
    ``handler.addFilter(returned_filter)``. Calling this twice does not stack filters.

    Args:
        logger: the logger to protect; None means the root logger.
        region: ISO 3166 region for phone numbers written without a country code.
        style: "tag", "partial" or "hash".
        salt: HMAC key for the "hash" style.

    Returns:
        The filter that was installed (or the one already there).
    """
    logger = logger if logger is not None else logging.getLogger()
    existing = next((f for f in logger.filters if isinstance(f, PIIRedactingFilter)), None)
    redactor = existing or PIIRedactingFilter(region=region, style=style, salt=salt)
    if existing is None:
        logger.addFilter(redactor)
    for handler in logger.handlers:
        if not any(isinstance(f, PIIRedactingFilter) for f in handler.filters):
            handler.addFilter(redactor)
    return redactor
