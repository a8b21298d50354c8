"""Beyond the story: durable, at-least-once, signed delivery, in virtual time and over real HTTP.

The story's fix lives in memory: a crash, a deploy or a full queue loses the
webhooks and audit entries of payments that were authorized. This package
takes the hook bus to where webhook platforms (Svix, Stripe, Convoy) are:

=====================  ============================================================
module                 what it holds
=====================  ============================================================
:mod:`.schema`         the SQLite schema, its version and its migrations
:mod:`.events`         outbox events: stable ids (the idempotency keys), bodies
:mod:`.outbox`         the transactional outbox (and the bus's spill store), claims
:mod:`.postgres`       the same outbox in PostgreSQL: SKIP LOCKED, LISTEN/NOTIFY
:mod:`.pgcluster`      a throw-away PostgreSQL cluster for tests, bench, lesson 08
:mod:`.sqlite_letters` dead letters in the same file (a ``DeadLetterStore``)
:mod:`.signing`        Standard Webhooks signatures, and their verification
:mod:`.transport`      one ``send(event)`` interface: simulated, and HTTP (httpx)
:mod:`.deliverer`      the delivery function: rate limit, breaker, timeout, retries
:mod:`.dispatcher`     outbox -> hook bus -> delivery; marks done only when done
:mod:`.ledger`         a receiver's memory of applied events: exactly-once effects
:mod:`.receiver`       a real receiver on 127.0.0.1 (ASGI, served by hypercorn)
:mod:`.pipeline`       the durable pipeline in the simulation, and a crash demo
:mod:`.realtime`       the same pipeline for real, against local receivers
:mod:`.fleet`          several dispatcher processes on one outbox; the receivers
:mod:`.commands`       ``payflow-lab replay``, ``realtime``, ``dispatch``, ``receivers``
=====================  ============================================================
"""

from __future__ import annotations

from payflow_lab.core.errors import (
    CorruptDatabase,
    DatabaseLocked,
    DeliveryError,
    DeliveryFailed,
    DeliveryRejected,
    InvalidSignature,
    MalformedPayload,
    MissingHeader,
    NotAnOutbox,
    OutboxDatabaseError,
    SchemaVersionError,
    SignatureError,
    TimestampOutOfTolerance,
)
from payflow_lab.durable import signing
from payflow_lab.durable.deliverer import REJECTED, Deliverer, DeliveryResult
from payflow_lab.durable.dispatcher import Dispatcher
from payflow_lab.durable.events import DURABLE_KINDS, OutboxEvent, decode_body, encode_body, event_id
from payflow_lab.durable.fleet import DispatchConfig, Fleet, ReceiverProcess, dispatch, load_payments, serve_receivers
from payflow_lab.durable.ledger import ReceiverLedger
from payflow_lab.durable.outbox import Outbox, is_postgres_url
from payflow_lab.durable.pgcluster import PostgresUnavailable, TemporaryPostgres
from payflow_lab.durable.pipeline import CrashDemo, DurablePipeline, crash_demo, run_durable
from payflow_lab.durable.postgres import Listener, PostgresOutbox
from payflow_lab.durable.realtime import RealtimeConfig, run_realtime
from payflow_lab.durable.receiver import Receiver, ReceiverServer, serve_in_thread
from payflow_lab.durable.schema import MEMORY, SCHEMA_VERSION, connect
from payflow_lab.durable.signing import WebhookSigner, generate_secret, sign, signed_headers, verify
from payflow_lab.durable.sqlite_letters import SQLiteDeadLetters
from payflow_lab.durable.stores import open_outbox
from payflow_lab.durable.transport import (
    RETRY_ON,
    Endpoint,
    HttpLimits,
    HttpTransport,
    Routes,
    SimulatedTransport,
    Transport,
)

__all__ = [
    "signing",
    "CorruptDatabase",
    "CrashDemo",
    "DURABLE_KINDS",
    "DatabaseLocked",
    "Deliverer",
    "DeliveryError",
    "DeliveryFailed",
    "DeliveryRejected",
    "DeliveryResult",
    "DispatchConfig",
    "Dispatcher",
    "DurablePipeline",
    "Fleet",
    "Endpoint",
    "HttpLimits",
    "HttpTransport",
    "InvalidSignature",
    "Listener",
    "MEMORY",
    "MalformedPayload",
    "MissingHeader",
    "NotAnOutbox",
    "Outbox",
    "OutboxDatabaseError",
    "OutboxEvent",
    "PostgresOutbox",
    "PostgresUnavailable",
    "REJECTED",
    "RETRY_ON",
    "RealtimeConfig",
    "ReceiverProcess",
    "Receiver",
    "ReceiverLedger",
    "ReceiverServer",
    "Routes",
    "SCHEMA_VERSION",
    "SQLiteDeadLetters",
    "SchemaVersionError",
    "SignatureError",
    "SimulatedTransport",
    "TemporaryPostgres",
    "TimestampOutOfTolerance",
    "Transport",
    "WebhookSigner",
    "connect",
    "crash_demo",
    "decode_body",
    "dispatch",
    "encode_body",
    "event_id",
    "generate_secret",
    "is_postgres_url",
    "load_payments",
    "open_outbox",
    "run_durable",
    "serve_receivers",
    "run_realtime",
    "serve_in_thread",
    "sign",
    "signed_headers",
    "verify",
]
