"""The WhatsApp Cloud API from our side: the Graph API client, its error classes and the sandbox transport."""

from __future__ import annotations

from inbox.whatsapp.client import GraphClient, GraphError, GraphUnknownOutcome, MediaInfo, Transport
from inbox.whatsapp.sandbox import SandboxTransport, transport_for

__all__ = [
    "GraphClient",
    "GraphError",
    "GraphUnknownOutcome",
    "MediaInfo",
    "SandboxTransport",
    "Transport",
    "transport_for",
]
