"""The `webhook` fields of POST /finetune and POST /generate: validated before a job is made (422 otherwise)."""

from typing import Any

from pydantic import ValidationError

from services.contracts.problems import Problem, validation_problem
from services.contracts.webhooks import WebhookRequest
from services.jobs.settings import JobSettings
from services.jobs.webhooks import WebhookRefused, resolve_target


def webhook_spec(raw: dict[str, Any], settings: JobSettings) -> dict[str, Any] | None:
    """`job.spec["webhook"]` from the request's `webhook` and `webhook_events`; None when none was asked for.

    Resolves the host (blocking DNS): call it from a worker thread in async routes.
    """
    try:
        request = WebhookRequest.model_validate(raw)
    except ValidationError as e:
        raise validation_problem(e) from e
    if request.webhook is None:
        if "webhook_events" in raw:
            raise Problem(422, "Invalid request", "webhook_events: send a `webhook` URL with it",
                          type_="validation-error")
        return None
    if not settings.webhook_secret:
        raise Problem(422, "Webhooks are off", "this server has no DETBOOTH_WEBHOOK_SECRET to sign webhooks "
                      "with; leave `webhook` out and poll GET /jobs/{id}", type_="webhooks-disabled")
    try:
        resolve_target(request.webhook, allow_private=settings.webhook_allow_private)
    except WebhookRefused as e:
        raise Problem(422, "Webhook URL refused", f"webhook: {e}", type_="webhook-refused") from None
    return request.spec()
