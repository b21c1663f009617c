from __future__ import annotations

from django.db import models


class SignatureVerdict(models.TextChoices):
    VALID = "valid", "Valid"
    MISSING = "missing", "Missing"
    INVALID = "invalid", "Invalid"


class ProcessingState(models.TextChoices):
    RECEIVED = "received", "Received"
    PROCESSING = "processing", "Processing"
    PROCESSED = "processed", "Processed"
    FAILED = "failed", "Failed"
    REJECTED = "rejected", "Rejected (bad signature; never processed)"


class WebhookEvent(models.Model):
    """One POST from Meta, stored raw before we answer 200 (Meta keeps no history we could fetch later).

    Not tenant-owned: one body can carry changes for numbers of several tenants; processing routes each change
    by metadata.phone_number_id.
    """

    raw_body = models.BinaryField()
    body_sha256 = models.CharField(max_length=64, db_index=True)
    headers = models.JSONField(default=dict, blank=True)  # the relevant ones: signature, content type, user agent
    signature = models.CharField(max_length=10, choices=SignatureVerdict.choices)
    state = models.CharField(max_length=10, choices=ProcessingState.choices, default=ProcessingState.RECEIVED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "received_at"], name="webhookevent_state")]

    def __str__(self) -> str:
        return f"webhook {self.pk} ({self.state})"
