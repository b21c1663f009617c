"""Single-use, 60-second WebSocket tickets, stored hashed and bound to one user and one tenant."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from inbox.tests.fixtures import World
from tenants.models import Membership, SocketTicket
from tenants.scoping import scopes_disabled
from tenants.tickets import ticket_admit, ticket_issue, ticket_prune_unsafe, ticket_redeem, tickets_admit


def test_it_issues_a_random_ticket_valid_for_60_seconds_and_stores_only_its_hash(world: World) -> None:
    token, expires_at = ticket_issue(user=world.alice, tenant=world.acme)
    other, _ = ticket_issue(user=world.alice, tenant=world.acme)
    assert token != other and len(token) >= 40
    assert timedelta(seconds=58) < expires_at - timezone.now() <= timedelta(seconds=60)
    with scopes_disabled():
        stored = SocketTicket.objects.get(token_hash=hashlib.sha256(token.encode()).hexdigest())
        assert not SocketTicket.objects.filter(token_hash=token).exists()
    assert (stored.user_id, stored.tenant_id, stored.used_at) == (world.alice.pk, world.acme.pk, None)


def test_it_redeems_a_ticket_once_for_its_tenant(world: World) -> None:
    token, _ = ticket_issue(user=world.alice, tenant=world.acme)
    membership = ticket_redeem(token=token, tenant_slug="acme")
    assert membership is not None
    assert (membership.user_id, membership.tenant.slug) == (world.alice.pk, "acme")
    assert ticket_redeem(token=token, tenant_slug="acme") is None


def test_a_ticket_opens_no_other_tenant_and_is_not_used_up_trying(world: World) -> None:
    token, _ = ticket_issue(user=world.alice, tenant=world.acme)
    assert ticket_redeem(token=token, tenant_slug="globex") is None
    assert ticket_redeem(token=token, tenant_slug="no-such-tenant") is None
    assert ticket_redeem(token=token, tenant_slug="acme") is not None


def test_expired_and_garbage_tickets_are_refused(world: World) -> None:
    token, _ = ticket_issue(user=world.alice, tenant=world.acme)
    with scopes_disabled():
        SocketTicket.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ticket_redeem(token=token, tenant_slug="acme") is None
    assert ticket_redeem(token="", tenant_slug="acme") is None
    assert ticket_redeem(token="x" * 10_000, tenant_slug="acme") is None


def test_a_ticket_needs_an_active_membership_when_redeemed(world: World) -> None:
    token, _ = ticket_issue(user=world.bob, tenant=world.acme)
    with scopes_disabled():
        Membership.objects.filter(user=world.bob).update(is_active=False)
    assert ticket_redeem(token=token, tenant_slug="acme") is None
    token, _ = ticket_issue(user=world.charlie, tenant=world.acme)  # never a member of acme
    assert ticket_redeem(token=token, tenant_slug="acme") is None
    world.alice.is_active = False
    world.alice.save()
    token, _ = ticket_issue(user=world.alice, tenant=world.acme)
    assert ticket_redeem(token=token, tenant_slug="acme") is None


def test_admitting_a_ticket_reads_the_membership_it_grants_as_select_related_would(world: World) -> None:
    world.charlie.display_name, world.charlie.first_name, world.charlie.last_name = "", "Charlie", "Brown"
    world.charlie.save()
    token, _ = ticket_issue(user=world.charlie, tenant=world.globex)
    admission = ticket_admit(token=token, tenant_slug="globex")
    assert admission is not None
    assert (admission.user_id, admission.tenant_id) == (world.charlie.pk, world.globex.pk)
    with scopes_disabled():
        expected = Membership.objects.select_related("user", "tenant").get(user=world.charlie, tenant=world.globex)
    membership = admission.membership
    assert membership is not None
    assert (membership.pk, membership.role, membership.tenant_id, membership.user_id) == (
        expected.pk,
        expected.role,
        world.globex.pk,
        world.charlie.pk,
    )
    tenant = membership.tenant
    assert (tenant.pk, tenant.slug, tenant.name) == (world.globex.pk, "globex", "Globex")
    user = membership.user
    assert (user.pk, user.username, user.name) == (world.charlie.pk, "charlie", "Charlie Brown")  # no display name
    assert user.credential_stamp == expected.user.credential_stamp  # what the socket's re-checks compare
    assert ticket_admit(token=token, tenant_slug="globex") is None  # used up


def test_a_ticket_of_a_non_member_is_used_up_and_admits_no_membership(world: World) -> None:
    """The handshake tells the two apart: no admission closes with 4401, one without membership with 4403."""
    token, _ = ticket_issue(user=world.charlie, tenant=world.acme)  # never a member of acme
    admission = ticket_admit(token=token, tenant_slug="acme")
    assert admission is not None and admission.membership is None
    assert (admission.user_id, admission.tenant_id) == (world.charlie.pk, world.acme.pk)
    assert ticket_admit(token=token, tenant_slug="acme") is None
    token, _ = ticket_issue(user=world.bob, tenant=world.acme)
    world.bob.is_active = False
    world.bob.save()
    admission = ticket_admit(token=token, tenant_slug="acme")
    assert admission is not None and admission.membership is None
    assert ticket_admit(token="nope", tenant_slug="acme") is None


def test_prune_deletes_long_expired_tickets_only(world: World) -> None:
    ticket_issue(user=world.alice, tenant=world.acme)
    ticket_issue(user=world.charlie, tenant=world.globex)
    with scopes_disabled():
        SocketTicket.objects.filter(user=world.charlie).update(expires_at=timezone.now() - timedelta(hours=2))
    assert ticket_prune_unsafe() == 1
    with scopes_disabled():
        assert list(SocketTicket.objects.values_list("user_id", flat=True)) == [world.alice.pk]


@pytest.mark.django_db(transaction=True)
def test_two_handshakes_racing_with_one_ticket_get_one_socket(world: World, require_postgres: None) -> None:
    token, _ = ticket_issue(user=world.alice, tenant=world.acme)
    results: list[object] = []
    barrier = threading.Barrier(4)

    def redeem() -> None:
        try:
            barrier.wait()
            results.append(ticket_redeem(token=token, tenant_slug="acme"))
        finally:
            connection.close()

    threads = [threading.Thread(target=redeem) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert sum(r is not None for r in results) == 1


def test_tickets_admitted_together_answer_as_one_at_a_time(world: World) -> None:
    """Handshakes of two tenants spent in one call (the consumer's batch): each answer is the one ticket_admit would
    give, in order; the same ticket twice admits only the first; a foreign ticket is not used up by the attempt."""
    alice, _ = ticket_issue(user=world.alice, tenant=world.acme)
    bob, _ = ticket_issue(user=world.bob, tenant=world.acme)
    charlie, _ = ticket_issue(user=world.charlie, tenant=world.globex)
    outsider, _ = ticket_issue(user=world.charlie, tenant=world.acme)  # not a member of acme
    expired, _ = ticket_issue(user=world.alice, tenant=world.acme)
    with scopes_disabled():
        SocketTicket.objects.filter(token_hash=hashlib.sha256(expired.encode()).hexdigest()).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    foreign, _ = ticket_issue(user=world.bob, tenant=world.acme)
    answers = tickets_admit(
        [
            (alice, "acme"),
            (charlie, "globex"),
            (alice, "acme"),  # the same ticket again, in the same batch
            (bob, "acme"),
            (outsider, "acme"),
            (expired, "acme"),
            (foreign, "globex"),  # acme's ticket at globex's door
            ("", "acme"),
            ("x" * 10_000, "acme"),
            (bob, "no-such-tenant"),
        ]
    )
    admitted = [(a.user_id, a.tenant_id, a.membership is not None) if a else None for a in answers]
    assert admitted == [
        (world.alice.pk, world.acme.pk, True),
        (world.charlie.pk, world.globex.pk, True),
        None,
        (world.bob.pk, world.acme.pk, True),
        (world.charlie.pk, world.acme.pk, False),
        None,
        None,
        None,
        None,
        None,
    ]
    membership = answers[1].membership if answers[1] else None
    assert membership is not None and (membership.tenant.slug, membership.user.username) == ("globex", "charlie")
    assert tickets_admit([(alice, "acme"), (bob, "acme"), (charlie, "globex")]) == [None, None, None]  # used up
    assert ticket_admit(token=foreign, tenant_slug="acme") is not None  # the wrong door did not use it up
    assert tickets_admit([]) == []
