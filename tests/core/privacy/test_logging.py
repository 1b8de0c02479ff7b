"""The redacting filter on a real logger: no raw PII reaches the handler's output."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from core.privacy import PIIRedactingFilter, install_redaction

RAW = ["4111 1111 1111 1111", "4111111111111111", "ann@example.com", "GB82WEST12345698765432", "7946 0958"]


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logger = logging.getLogger("tests.privacy.captured")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.filters.clear()


def assert_clean(output: str) -> None:
    for raw in RAW:
        assert raw not in output


def test_message_and_args_are_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    install_redaction(logger)
    logger.info("card 4111 1111 1111 1111 from %s", "ann@example.com")
    logger.info("payload %r", {"iban": "GB82WEST12345698765432", "phone": "+44 20 7946 0958"})
    logger.info("amount £1,234.56 on 2024-05-01")
    out = stream.getvalue()
    assert_clean(out)
    assert "card [CARD] from [EMAIL]" in out
    assert "[IBAN]" in out and "[PHONE]" in out
    assert "amount £1,234.56 on 2024-05-01" in out  # ordinary text untouched


def test_exceptions_are_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    install_redaction(logger)
    try:
        raise ValueError("bad card 4111111111111111")
    except ValueError:
        logger.exception("failed for %s", "ann@example.com")
    out = stream.getvalue()
    assert_clean(out)
    assert "ValueError: bad card [CARD]" in out


def test_child_logger_records_masked_at_handler(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    install_redaction(logger)
    logging.getLogger("tests.privacy.captured.child").warning("mail ann@example.com")
    assert_clean(stream.getvalue())
    assert "mail [EMAIL]" in stream.getvalue()


def test_install_is_idempotent_and_styles_apply(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    first = install_redaction(logger, style="partial")
    assert install_redaction(logger) is first
    assert sum(isinstance(f, PIIRedactingFilter) for f in logger.handlers[0].filters) == 1
    logger.info("card 4111 1111 1111 1111")
    assert "card **** **** **** 1111" in stream.getvalue()


def test_unformattable_record_is_kept_and_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    install_redaction(logger)
    logger.info("two %s %s", "ann@example.com")  # wrong arg count must not crash the caller
    out = stream.getvalue()
    assert "unformattable" in out
    assert_clean(out)


def test_bad_style_rejected() -> None:
    with pytest.raises(ValueError, match="mask style"):
        PIIRedactingFilter(style="blur")
