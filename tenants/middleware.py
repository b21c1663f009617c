from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from .scoping import scopes_disabled


class AdminScopesDisabledMiddleware:
    """Django admin works across tenants (it is for the operators): the tenant scope guard is off there only."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/admin/"):
            with scopes_disabled():
                return self.get_response(request)
        return self.get_response(request)
