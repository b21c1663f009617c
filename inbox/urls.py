"""The inbox pages (mounted at "/") and the session login/logout."""

from __future__ import annotations

from django.urls import include, path

from inbox import views

tenant_patterns = [
    path("", views.inbox, name="inbox"),
    path("conversations/", views.conversation_list, name="conversation_list"),
    path("conversations/<int:pk>/", views.conversation_detail, name="conversation"),
    path("conversations/<int:pk>/row/", views.conversation_row, name="conversation_row"),
    path("conversations/<int:pk>/messages/", views.message_page, name="message_page"),
    path("conversations/<int:pk>/send/", views.message_send, name="message_send"),
    path("conversations/<int:pk>/change/", views.conversation_change, name="conversation_change"),
    path("conversations/<int:pk>/read/", views.conversation_read, name="conversation_read"),
    path("messages/<int:pk>/", views.message_detail, name="message"),
    path("messages/<int:pk>/retry/", views.message_retry, name="message_retry"),
    path("messages/<int:pk>/react/", views.message_react, name="message_react"),
    path("messages/<int:pk>/media/retry/", views.message_media_retry, name="message_media_retry"),
]

inbox_patterns = [
    path("", views.home, name="home"),
    path("t/<slug:slug>/", include(tenant_patterns)),
]

# No app_name here: this module is included without a namespace, so "inbox:" and "accounts:" are both top level.
urlpatterns = [
    path("", include((inbox_patterns, "inbox"))),
    path("accounts/", include("accounts.urls")),
]
