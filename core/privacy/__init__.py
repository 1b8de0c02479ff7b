"""Privacy: detect and mask PII (cards, IBANs, UK accounts, phones, e-mails), and keep it out of logs.

``core.privacy.logging`` holds the log filter; imports are absolute, so it does not shadow the
standard library's ``logging`` for anyone.
"""

from core.privacy.logging import PIIRedactingFilter, install_redaction
from core.privacy.pii import KINDS, STYLES, MaskResult, PIIEntity, detect, hash_token, mask
from core.privacy.recognizers import card_brand

__all__ = [
    "KINDS",
    "STYLES",
    "MaskResult",
    "PIIEntity",
    "PIIRedactingFilter",
    "card_brand",
    "detect",
    "hash_token",
    "install_redaction",
    "mask",
]
