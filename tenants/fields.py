"""A text field encrypted at rest (Fernet) for the secrets of WhatsApp numbers."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import models

PREFIX = "fernet:"


def _fernet() -> Fernet:
    key = settings.FIELD_ENCRYPTION_KEY
    if not key:
        # Derived from SECRET_KEY so the embedded default works; production sets its own key.
        key = base64.urlsafe_b64encode(hashlib.sha256(("field-encryption:" + settings.SECRET_KEY).encode()).digest())
    return Fernet(key)


def encrypt(value: str) -> str:
    return PREFIX + _fernet().encrypt(value.encode()).decode()


def decrypt(value: str) -> str:
    if not value.startswith(PREFIX):
        return value  # written before encryption was enabled
    try:
        return _fernet().decrypt(value[len(PREFIX) :].encode()).decode()
    except InvalidToken as exc:
        raise ValueError("cannot decrypt a secret: FIELD_ENCRYPTION_KEY changed?") from exc


class EncryptedTextField(models.TextField):  # type: ignore[type-arg]
    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(str(value))
