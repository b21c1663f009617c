"""Routes of the REST API, included by config/urls.py under /api/.

Tenant resources live under tenants/<slug>/; another tenant's objects answer 404 exactly like missing ones.
"""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts import api as accounts_api
from inbox import api

tenant_patterns = [
    path("conversations/", api.ConversationListApi.as_view(), name="api-conversation-list"),
    path("conversations/<int:pk>/", api.ConversationDetailApi.as_view(), name="api-conversation-detail"),
    path("conversations/<int:pk>/messages/", api.MessageListApi.as_view(), name="api-message-list"),
    path("conversations/<int:pk>/read/", api.ConversationReadApi.as_view(), name="api-conversation-read"),
    path("messages/<int:pk>/media/", api.MessageMediaApi.as_view(), name="api-message-media"),
    path("messages/<int:pk>/media/retry/", api.MessageMediaRetryApi.as_view(), name="api-message-media-retry"),
    path("messages/<int:pk>/reaction/", api.MessageReactionApi.as_view(), name="api-message-reaction"),
    path("messages/<int:pk>/retry/", api.MessageRetryApi.as_view(), name="api-message-retry"),
    path("contacts/", api.ContactListApi.as_view(), name="api-contact-list"),
    path("contacts/<int:pk>/", api.ContactDetailApi.as_view(), name="api-contact-detail"),
    path("members/", api.MemberListApi.as_view(), name="api-member-list"),
    path("members/<int:pk>/", api.MemberDetailApi.as_view(), name="api-member-detail"),
    path("numbers/", api.NumberListApi.as_view(), name="api-number-list"),
    path("numbers/<int:pk>/", api.NumberDetailApi.as_view(), name="api-number-detail"),
    path("templates/", api.TemplateListApi.as_view(), name="api-template-list"),
    path("events/", api.EventListApi.as_view(), name="api-event-list"),
    path("ws-ticket/", api.WsTicketApi.as_view(), name="api-ws-ticket"),
]

urlpatterns = [
    path("auth/token/", accounts_api.TokenObtainApi.as_view(), name="api-token-obtain"),
    path("auth/token/refresh/", accounts_api.TokenRefreshApi.as_view(), name="api-token-refresh"),
    path("auth/logout/", accounts_api.LogoutApi.as_view(), name="api-logout"),
    path("auth/logout-all/", accounts_api.LogoutEverywhereApi.as_view(), name="api-logout-everywhere"),
    path("me/", accounts_api.MeApi.as_view(), name="api-me"),
    path("tenants/<slug:tenant_slug>/", include(tenant_patterns)),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its init script from a URL: no inline script for the Content-Security-Policy to block.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"^", api.api_not_found, name="api-not-found"),  # last: unknown /api/ URLs answer JSON too
]
