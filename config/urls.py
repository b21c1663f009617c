from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from config.observability import healthz, metrics_view, readyz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]

# Each app adds its routes here as it grows: webhooks/, api/, the inbox pages.
for module, prefix in (("webhooks.urls", "webhooks/"), ("inbox.api_urls", "api/"), ("inbox.urls", "")):
    try:
        __import__(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        continue
    urlpatterns.append(path(prefix, include(module)))
