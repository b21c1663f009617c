"""Session login and logout for the inbox pages, with failed attempts throttled per address and per account."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

# django-axes (settings.AXES_*) locks one username from one address after a few failures. On top of that, one
# address trying many usernames (password spraying) is throttled here: failed attempts per address in a window.
LOGIN_FAILURES_PER_ADDRESS = getattr(settings, "LOGIN_FAILURES_PER_ADDRESS", 20)
LOGIN_FAILURE_WINDOW = getattr(settings, "LOGIN_FAILURE_WINDOW", 300)  # seconds


def _client_address(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR", "") or "unknown")


def _failure_key(request: HttpRequest) -> str:
    return f"login-fail:addr:{_client_address(request)}"


def login_throttled(request: HttpRequest) -> bool:
    return int(cache.get(_failure_key(request), 0)) >= LOGIN_FAILURES_PER_ADDRESS


def _login_failed(request: HttpRequest) -> None:
    key = _failure_key(request)
    if not cache.add(key, 1, LOGIN_FAILURE_WINDOW):
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, LOGIN_FAILURE_WINDOW)


def _safe_next(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("inbox:home")


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    """Log in with username or email and password.

    Too many failures from one address answer 429 without checking the password; django-axes' middleware answers
    429 for a username locked out from this address.
    """
    if request.method == "GET" and request.user.is_authenticated:
        return HttpResponseRedirect(_safe_next(request))
    form = AuthenticationForm(request, data=request.POST or None)
    status = 200
    throttled = False
    if request.method == "POST":
        if login_throttled(request):
            throttled = True
            status = 429
            form = AuthenticationForm(request)  # unbound: the password is not checked at all
        elif form.is_valid():
            login(request, form.get_user())
            return HttpResponseRedirect(_safe_next(request))
        else:
            _login_failed(request)
            status = 400
    context = {"form": form, "next": _safe_next(request), "throttled": throttled}
    return render(request, "accounts/login.html", context, status=status)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponseRedirect(reverse("accounts:login"))
