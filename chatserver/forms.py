"""Checks of what people type into forms and JSON bodies: phone, name, password.

Each `clean_*` returns the accepted value or raises FormError with a message for a person.
"""

from __future__ import annotations

import unicodedata

from .auth import MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES
from .protocol import is_phone

MAX_NAME_CHARS = 64
ZWJ = "\u200d"
# What may stand on either side of a zero-width joiner in an emoji ZWJ sequence (Unicode UTS #51):
# emoji are So, skin tones Sk; U+FE0F (emoji presentation) may sit between an emoji and the ZWJ.
_EMOJI_CATEGORIES = ("So", "Sk")
_EMOJI_PRESENTATION = "\ufe0f"


class FormError(ValueError):
    """A form field that cannot be accepted; the message is shown to the person."""


def _emoji_joiner(name: str, i: int) -> bool:
    """True when the ZWJ at `name[i]` joins two emoji (👩‍💻, 🏳️‍🌈), not two letters."""
    before = name[i - 1] if i > 0 else ""
    after = name[i + 1] if i + 1 < len(name) else ""
    if before == _EMOJI_PRESENTATION and i > 1:
        before = name[i - 2]
    return (bool(before) and bool(after) and unicodedata.category(before) in _EMOJI_CATEGORIES
            and unicodedata.category(after) in _EMOJI_CATEGORIES)


def clean_name(raw: object) -> str:
    """A display name (of a user, a contact, a group): 1-64 characters after trimming, no control
    characters (SPEC 4) and no invisible format characters (Unicode category Cf: U+202E reverses
    the text after it, U+200B hides a character; issue 12), except a zero-width joiner inside an
    emoji sequence. Raises FormError naming the character found."""
    if not isinstance(raw, str):
        raise FormError("Enter your name.")
    name = raw.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise FormError(f"The name must be 1 to {MAX_NAME_CHARS} characters.")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise FormError("The name must not contain control characters.")
    for i, c in enumerate(name):
        if unicodedata.category(c) == "Cf" and not (c == ZWJ and _emoji_joiner(name, i)):
            raise FormError(f"The name must not contain invisible formatting characters "
                            f"(U+{ord(c):04X} found).")
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
