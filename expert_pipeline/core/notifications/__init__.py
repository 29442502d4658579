"""Notifications of finished experts: signed webhooks and owner mail, through a transactional
outbox (no Dagster import).

When an expert's progress reaches `completed`, `failed` or `cancelled`, the progress service
calls `outbox.enqueue_finished` in the same transaction as the terminal state, so the state and
its notifications commit (or roll back) together and nothing is lost if a process dies.
`delivery.deliver_due` (run by the Dagster sensor `webhook_delivery_sensor`) sends the rows
that are due and records every attempt on the row.

* `payload`: the event body (the progress record as `present()` shows it).
* `signing`: the request's HMAC signature, and `verify_webhook` with replay protection for receivers.
* `mail`: whom to tell by mail, in what words, and the message.
* `outbox`: the `webhook_deliveries` rows: enqueueing, claims, recording answers, the retry schedule.
* `delivery`: sending the claimed rows (HTTP POST or SMTP).
"""
