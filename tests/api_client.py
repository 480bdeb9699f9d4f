"""Every admin operation through a client generated from /openapi.json (openapi-python-client).

Run by tests/openapi.rs with the generated package `lgw_client` on PYTHONPATH:
    python api_client.py <base URL> <admin key>
Each call must answer the documented status and parse into the documented model; the script
ends by checking that it called every operation the generated `admin` package has.
"""

import datetime
import pkgutil
import sys
import uuid

import lgw_client.api.admin as admin_api
from lgw_client import AuthenticatedClient
from lgw_client.api.admin import (
    cluster_stats,
    delete_email,
    delete_license,
    delete_webhook,
    disconnect_tenant,
    email_deliveries,
    get_email,
    list_webhooks,
    notification_stats,
    publish_event,
    put_email,
    put_license,
    put_usage,
    put_webhook,
    redeliver,
    webhook_deliveries,
)
from lgw_client.models import (
    ApiError,
    ClusterStats,
    DeliveryLog,
    DisconnectRequest,
    EmailRequest,
    EmailSettings,
    Event,
    EventType,
    License,
    LicenseChange,
    LicenseDeleted,
    LicenseStatus,
    LimitState,
    NotificationStats,
    PublishRequest,
    Queued,
    Requested,
    Severity,
    UsageChange,
    UsageRequest,
    WebhookList,
    WebhookRequest,
    WebhookView,
)

BASE, KEY = sys.argv[1], sys.argv[2]
# An undocumented status raises instead of parsing as None.
client = AuthenticatedClient(base_url=BASE, token=KEY, raise_on_unexpected_status=True)
tenant = "roundtrip-" + uuid.uuid4().hex[:8]
called = set()


def call(operation, status, model, **kwargs):
    """One call: the documented status, parsed into the documented model."""
    response = operation.sync_detailed(client=client, **kwargs)
    name = operation.__name__.rsplit(".", 1)[-1]
    assert response.status_code == status, (name, response.status_code, response.content)
    if model is None:
        assert response.parsed is None, (name, response.parsed)
    else:
        assert isinstance(response.parsed, model), (name, type(response.parsed), response.content)
    called.add(name)
    print(f"{name}: {status} {model.__name__ if model else '(no body)'}")
    return response


expires = datetime.datetime(2031, 1, 31, tzinfo=datetime.timezone.utc)
document = License.from_dict(
    {
        "tenantId": tenant,
        "plan": "pro",
        "expiresAt": expires.isoformat().replace("+00:00", "Z"),
        "modules": {"analytics": {"enabled": True}, "payroll": {"enabled": False}},
        "limits": {"users": 100},
    }
)

# Licenses: created, unchanged, usage, refused, deleted, gone.
created = call(put_license, 201, LicenseChange, tenant=tenant, body=document).parsed
assert created.status == LicenseStatus.ACTIVE and created.tenant_id == tenant
assert created.license_.expires_at == expires, created.license_.expires_at
assert created.modules["payroll"].locked and not created.modules["analytics"].locked
assert created.events, "a new license publishes license_updated"
again = call(put_license, 200, LicenseChange, tenant=tenant, body=document).parsed
assert again.events == [], "an identical document publishes nothing"
usage = call(put_usage, 200, UsageChange, tenant=tenant, body=UsageRequest.from_dict({"users": 95}))
assert usage.parsed.usage["users"] == 95 and len(usage.parsed.events) == 1, usage.content
wrong = License.from_dict({**document.to_dict(), "tenantId": "someone-else"})
refused = call(put_license, 400, ApiError, tenant=tenant, body=wrong).parsed
assert refused.error.field == "tenantId", refused

# Events: a publish, and its retry with the same key.
body = PublishRequest(type_=EventType.LICENSE_UPDATED, data=None)
first = call(publish_event, 201, Event, tenant=tenant, body=body, idempotency_key="rt-1").parsed
assert first.type_ == EventType.LICENSE_UPDATED and first.severity == Severity.INFO
replay = call(publish_event, 200, Event, tenant=tenant, body=body, idempotency_key="rt-1")
assert replay.parsed.id == first.id and replay.headers["idempotent-replayed"] == "true"

stats = call(cluster_stats, 200, ClusterStats).parsed
assert stats.nodes and stats.total_connections >= 0
call(disconnect_tenant, 202, Requested, tenant=tenant, body=DisconnectRequest(user_id="alice"))
figures = call(notification_stats, 200, NotificationStats, tenant=tenant, days=7).parsed
assert figures.days == 7 and figures.types["license_updated"].published >= 2, figures.to_dict()

# Webhooks: created, replaced, listed, log, redelivery, removed, gone.
hook = WebhookRequest(
    url="http://127.0.0.1:9/hook",
    secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    types=[EventType.LICENSE_EXPIRED, EventType.LICENSE_UPDATED],
    min_severity=Severity.INFO,
)
shown = call(put_webhook, 201, WebhookView, tenant=tenant, name="ops", body=hook).parsed
assert shown.secrets == 1 and "whsec_" not in str(shown.to_dict())
call(put_webhook, 200, WebhookView, tenant=tenant, name="ops", body=hook)
listed = call(list_webhooks, 200, WebhookList, tenant=tenant).parsed
assert [w.name for w in listed.webhooks] == ["ops"]
call(webhook_deliveries, 200, DeliveryLog, tenant=tenant, name="ops", limit=10)
call(redeliver, 202, Queued, tenant=tenant, name="ops", event=first.id)
call(delete_webhook, 204, None, tenant=tenant, name="ops")
gone = call(delete_webhook, 404, ApiError, tenant=tenant, name="ops").parsed
assert gone.error.code == "not_found"

# Email: created, read, log, removed, gone.
email = EmailRequest(recipients=["ops@acme.example"], min_severity=Severity.WARNING)
settings = call(put_email, 201, EmailSettings, tenant=tenant, body=email).parsed
assert settings.recipients == ["ops@acme.example"] and settings.min_severity == Severity.WARNING
call(get_email, 200, EmailSettings, tenant=tenant)
call(email_deliveries, 200, DeliveryLog, tenant=tenant)
call(delete_email, 204, None, tenant=tenant)
call(get_email, 404, ApiError, tenant=tenant)

deleted = call(delete_license, 200, LicenseDeleted, tenant=tenant).parsed
assert deleted.deleted and len(deleted.events) == 1
call(delete_license, 404, ApiError, tenant=tenant)
assert LimitState.WARNING.value == "warning"

every = {m.name for m in pkgutil.iter_modules(admin_api.__path__)}
assert called == every, f"not called: {sorted(every - called)}"
print(f"every admin operation round-tripped: {len(called)}")
