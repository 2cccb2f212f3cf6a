"""The Celery applications: the same tasks whether the broker is embedded SQLite or a server.

Embedded default (no server): broker `sqla+sqlite:///<var>/broker.sqlite`, results
`db+sqlite:///<var>/celery-results.sqlite`. Scale-out: set `[queue] broker_url = "redis://…"` (or
`amqp://…`) and run `x2x worker` on as many machines as you like.

Two app objects on the same broker: `celery_app` (sends every task; the edit stage's worker) and
`delivery_app` (the delivery stage's worker). A Celery app holds one selection of queues to consume,
so one process consuming the two stages' queues in separate worker threads needs two apps.
"""

from __future__ import annotations

from celery import Celery

from dicom_node.config import Settings

celery_app = Celery("x2x", include=["dicom_node.jobs.tasks"])
delivery_app = Celery("x2x-deliver", include=["dicom_node.jobs.tasks"])
_configured_for: tuple[str, str] | None = None


def configure_celery(settings: Settings) -> Celery:
    """Point the (module-level) Celery apps at this configuration's broker and result backend."""
    global _configured_for
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    broker, backend = settings.broker_url, settings.result_backend
    for app, default_queue in ((celery_app, settings.queue.queue_name),
                               (delivery_app, settings.queue.delivery_queue_name)):
        if _configured_for is not None and _configured_for != (broker, backend):
            # connection and producer pools are cached per app: drop them so the new broker is used
            # (several configurations in one process happen in tests and embedding code)
            app._after_fork()
        app.conf.update(
            broker_url=broker,
            result_backend=backend,
            task_default_queue=default_queue,
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            # A message is acknowledged only after the stage ended; a worker lost mid-job gets its
            # message back (Redis/AMQP). The DB claim makes a redelivery of a finished stage a no-op.
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
            task_track_started=True,
            result_expires=7 * 24 * 3600,
            broker_connection_retry_on_startup=True,
            worker_hijack_root_logger=False,  # keep the node's (JSON) log format
            worker_redirect_stdouts=False,
            # Redis: redeliver an unacked message after this long (must exceed the longest edit).
            broker_transport_options={"visibility_timeout": 3600, "polling_interval": 0.2},
            enable_utc=True,
        )
        if broker.startswith("sqla+"):
            # kombu's SQLAlchemy transport hands every transport option to create_engine(), so only engine
            # arguments go here: wait for SQLite's write lock instead of failing under concurrent writers.
            app.conf.broker_transport_options = {"connect_args": {"timeout": 30}}
    if broker.startswith("sqla+"):
        # ... and its poll interval (1 s by default) is a class attribute: poll faster for a
        # responsive node (an empty poll is one indexed SELECT on a local file).
        from kombu.transport.sqlalchemy import Transport

        Transport.polling_interval = 0.2
    _configured_for = (broker, backend)
    return celery_app


def ensure_configured(settings: Settings) -> Celery:
    """Configure the app unless it already points at this configuration's broker and backend."""
    if _configured_for != (settings.broker_url, settings.result_backend):
        configure_celery(settings)
    return celery_app
