"""The project's URLs plus `bench/empty/`: a view that answers 201 without touching the database or the layer.

Served by the same Daphne process, through the same middleware, as the webhook it is the baseline for (R_ingest).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from config.urls import urlpatterns as project_urlpatterns


@csrf_exempt
def empty(request: HttpRequest) -> HttpResponse:
    request.body  # noqa: B018 - read the body like the webhook does
    return HttpResponse(b"", status=201, content_type="text/plain")


urlpatterns = [path("bench/empty/", empty), *project_urlpatterns]
