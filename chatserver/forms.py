"""Checks of what people type into forms and JSON bodies: phone, name, password.

Each `clean_*` returns the accepted value or raises FormError with a message for a person.
"""

from __future__ import annotations

import unicodedata

from .auth import MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES
from .protocol import is_phone

MAX_NAME_CHARS = 64


class FormError(ValueError):
    """A form field that cannot be accepted; the message is shown to the person."""


def clean_name(raw: object) -> str:
    """A display name: 1-64 characters after trimming, no control characters (SPEC 4)."""
    if not isinstance(raw, str):
        raise FormError("Enter your name.")
    name = raw.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise FormError(f"The name must be 1 to {MAX_NAME_CHARS} characters.")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise FormError("The name must not contain control characters.")
    return name


def clean_phone(raw: object) -> str:
    """A phone number: 10 to 15 ASCII digits (SPEC 1)."""
    if not is_phone(raw):
        raise FormError("The phone number must be 10 to 15 digits, nothing else.")
    return raw


def clean_password(raw: object) -> str:
    """A password of 8 to 72 bytes in UTF-8 (SPEC 4; bcrypt reads no more than 72)."""
    if not isinstance(raw, str):
        raise FormError("Enter a password.")
    try:
        size = len(raw.encode())
    except UnicodeEncodeError:  # lone surrogates: what undecodable bytes on stdin turn into
        raise FormError("The password must be valid text.") from None
    if not MIN_PASSWORD_BYTES <= size <= MAX_PASSWORD_BYTES:
        raise FormError(f"The password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes "
                        f"long (letters outside English may take 2 to 4 bytes each).")
    return raw
