"""Account-level writes."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from accounts.models import User
from inbox import events
from tenants.tickets import tickets_revoke_unsafe


@transaction.atomic
def logout_everywhere(*, user: User) -> int:
    """End every session, refresh/access token, WebSocket ticket and open socket of the user.

    Bumps the user's credentials epoch (sessions and JWTs carry it), blacklists every outstanding refresh token,
    deletes unused tickets, and after commit asks the user's sockets to re-check (they close with 4403).
    Returns how many refresh tokens were revoked.
    """
    User.objects.filter(pk=user.pk).update(credentials_epoch=F("credentials_epoch") + 1)
    user.refresh_from_db(fields=["credentials_epoch"])
    outstanding = OutstandingToken.objects.filter(user=user).exclude(blacklistedtoken__isnull=False)
    revoked = 0
    for token in outstanding:
        BlacklistedToken.objects.get_or_create(token=token)
        revoked += 1
    tickets_revoke_unsafe(user_id=user.pk)
    events.send_revoke(user.pk)
    return revoked
