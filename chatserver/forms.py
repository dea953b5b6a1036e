"""Checks of what people type into forms and JSON bodies: phone, name, password, category.

Each `clean_*` returns the accepted value or raises FormError with a message for a person.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Final

from .auth import MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS
from .protocol import is_phone

MAX_NAME_CHARS = 64
MAX_CATEGORY_CHARS: Final = 32  # SPEC 13
ZWJ = "\u200d"
# What may stand on either side of a zero-width joiner in an emoji ZWJ sequence (Unicode UTS #51):
# emoji are So, skin tones Sk; U+FE0F (emoji presentation) may sit between an emoji and the ZWJ.
_EMOJI_CATEGORIES = ("So", "Sk")
_EMOJI_PRESENTATION = "\ufe0f"


# chatserver/data/README.md says where the list comes from and how it was made.
COMMON_PASSWORDS_FILE: Final = Path(__file__).resolve().parent / "data" / "common-passwords.txt"


def _normal(password: str) -> str:
    """The form a password is compared in against the common list: NFKC, case-folded, without
    surrounding spaces (`Password123`, `PASSWORD123 ` and full-width `ｐａｓｓｗｏｒｄ１２３` are
    the listed `password123`)."""
    return unicodedata.normalize("NFKC", password).casefold().strip()


def _load_common_passwords(path: Path) -> frozenset[str]:
    with open(path, encoding="utf-8") as fh:
        return frozenset(line.rstrip("\n") for line in fh if line.strip())


# Loaded once per process (~9,000 passwords, about 1 MB).
COMMON_PASSWORDS: Final = _load_common_passwords(COMMON_PASSWORDS_FILE)


def is_common_password(password: str) -> bool:
    """True when `password` is in the shipped list of common passwords (after `_normal`)."""
    return _normal(password) in COMMON_PASSWORDS


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


def _visible_text(text: str, what: str) -> str:
    """`text` when it has no control characters and no invisible format characters (Unicode
    category Cf: U+202E reverses the text after it, U+200B hides a character; issue 12), except
    a zero-width joiner inside an emoji sequence; FormError about `what` naming the character."""
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        raise FormError(f"The {what} must not contain control characters.")
    for i, c in enumerate(text):
        if unicodedata.category(c) == "Cf" and not (c == ZWJ and _emoji_joiner(text, i)):
            raise FormError(f"The {what} must not contain invisible formatting characters "
                            f"(U+{ord(c):04X} found).")
    return text


def clean_name(raw: object) -> str:
    """A display name (of a user, a contact, a group): 1-64 characters after trimming, no control
    characters (SPEC 4) and no invisible format characters (see `_visible_text`). Raises
    FormError naming the character found."""
    if not isinstance(raw, str):
        raise FormError("Enter your name.")
    name = raw.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise FormError(f"The name must be 1 to {MAX_NAME_CHARS} characters.")
    return _visible_text(name, "name")


def clean_category(raw: object) -> str:
    """A room's category (SPEC 13): 1-32 characters (code points) after trimming, with the
    characters a name may have (`_visible_text`). Raises FormError saying which rule failed."""
    if not isinstance(raw, str):
        raise FormError(f"The category must be text of 1 to {MAX_CATEGORY_CHARS} characters.")
    category = raw.strip()
    if not 1 <= len(category) <= MAX_CATEGORY_CHARS:
        raise FormError(f"The category must be 1 to {MAX_CATEGORY_CHARS} characters.")
    return _visible_text(category, "category")


def clean_search(raw: str, max_chars: int) -> str:
    """Search text (SPEC 13 `GET /chat/rooms?q=`): at most `max_chars` characters after
    trimming ("" searches for everything), the characters a name may have (`_visible_text`).
    Raises FormError saying which rule failed."""
    text = raw.strip()
    if len(text) > max_chars:
        raise FormError(f"The search text must be at most {max_chars} characters.")
    return _visible_text(text, "search text")


def clean_phone(raw: object) -> str:
    """A phone number: 10 to 15 ASCII digits (SPEC 1)."""
    if not is_phone(raw):
        raise FormError("The phone number must be 10 to 15 digits, nothing else.")
    return raw


def clean_password(raw: object) -> str:
    """A new password (SPEC 4 /register, SPEC 10), of an account or a private room: at least 10
    characters (NIST SP 800-63B), at most 1024 bytes in UTF-8 (long passphrases are pre-hashed
    before bcrypt, auth.hash_password), and not in the list of common passwords
    (`is_common_password`). Raises FormError saying which rule failed."""
    if not isinstance(raw, str):
        raise FormError("Enter a password.")
    try:
        size = len(raw.encode())
    except UnicodeEncodeError:  # lone surrogates: what undecodable bytes on stdin turn into
        raise FormError("The password must be valid text.") from None
    if len(raw) < MIN_PASSWORD_CHARS:
        raise FormError(f"The password must be at least {MIN_PASSWORD_CHARS} characters long.")
    if size > MAX_PASSWORD_BYTES:
        raise FormError(f"The password must be at most {MAX_PASSWORD_BYTES} bytes long (letters "
                        f"outside English may take 2 to 4 bytes each).")
    if is_common_password(raw):
        raise FormError("This password is one of the most common ones, which are tried first; "
                        "choose another (a few unrelated words make a good one).")
    return raw
