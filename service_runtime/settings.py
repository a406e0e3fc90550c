"""Settings from `COMFYMESH_*` environment variables, read once per process.

Every knob of every service lives here so that one page (README "Configuration") documents them all and there is
no second place where an environment variable is read. Services get the object from `get_settings()`; tests build
their own `Settings(...)` instead of touching the environment.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, computed_field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Each service's default gRPC port; its Prometheus /metrics port is the gRPC port + METRICS_PORT_OFFSET.
DEFAULT_PORTS: dict[str, int] = {
    "control_plane": 50050,  # every control-plane service in one process (make run)
    "workflow": 50051,
    "queue": 50052,
    "execution": 50053,
    "model": 50054,
    "auth": 50055,
    "webhook": 50056,
    "executor": 50061,
}
METRICS_PORT_OFFSET = 1000
CONTROL_PLANE_SERVICES = ("workflow", "queue", "execution", "model", "auth", "webhook")


class Settings(BaseSettings):
    """All configuration. Field names map to `COMFYMESH_<NAME>` variables."""

    model_config = SettingsConfigDict(env_prefix="COMFYMESH_", extra="ignore", frozen=True)

    home: Path = Field(Path(".comfymesh"), description="Directory for all local state (SQLite, logs, data).")
    environment: Literal["development", "production", "test"] = Field(
        "development",
        description="Deployment kind; production requires COMFYMESH_DATABASE_URL and COMFYMESH_SECRET_KEY instead of "
                    "the embedded defaults.",
    )

    # --- Network ---
    bind_host: str = Field("127.0.0.1", description="Address services listen on (0.0.0.0 in containers).")
    workflow_port: int = Field(DEFAULT_PORTS["workflow"], description="WorkflowService gRPC port.")
    queue_port: int = Field(DEFAULT_PORTS["queue"], description="QueueService gRPC port.")
    execution_port: int = Field(DEFAULT_PORTS["execution"], description="ExecutionService gRPC port.")
    model_port: int = Field(DEFAULT_PORTS["model"], description="ModelService gRPC port.")
    auth_port: int = Field(DEFAULT_PORTS["auth"], description="AuthService gRPC port.")
    webhook_port: int = Field(DEFAULT_PORTS["webhook"], description="WebhookService gRPC port.")
    executor_port: int = Field(DEFAULT_PORTS["executor"], description="GpuExecutorService gRPC port.")
    control_plane_port: int = Field(
        DEFAULT_PORTS["control_plane"], description="Port of the all-in-one control-plane process."
    )
    metrics_port: int | None = Field(
        None, description="Prometheus /metrics port of this process (default: its gRPC port + 1000; 0 disables)."
    )
    workflow_addr: str = Field("", description="host:port of WorkflowService for clients (default: local port).")
    queue_addr: str = Field("", description="host:port of QueueService for clients.")
    execution_addr: str = Field("", description="host:port of ExecutionService for clients.")
    model_addr: str = Field("", description="host:port of ModelService for clients.")
    auth_addr: str = Field("", description="host:port of AuthService for clients.")
    webhook_addr: str = Field("", description="host:port of WebhookService for clients.")
    executor_advertise_addr: str = Field("", description="host:port executors register under (default: local).")
    executor_addr: str = Field(
        "", description="host:port of the executor the workflow service reads the node catalog from, until "
                        "executors register with the fleet (default: local executor port)."
    )
    reflect_all_public_services: bool = Field(
        False, description="List every public service in reflection (set on the process the gateway sends "
                           "reflection to, so `grpcurl <gateway> list` shows the whole API)."
    )

    # --- gRPC server ---
    grpc_max_concurrent_rpcs: int = Field(512, description="RPCs in flight per process before RESOURCE_EXHAUSTED.")
    grpc_max_message_bytes: int = Field(
        64 << 20, description="Largest gRPC message, in bytes (above the gateway's 32 MiB body limit, so Envoy "
                              "answers 413 before a service sees an oversized request)."
    )
    grpc_keepalive_seconds: int = Field(30, description="Server keepalive ping interval, in seconds.")
    shutdown_grace_seconds: float = Field(10.0, description="How long in-flight RPCs may finish after SIGTERM.")

    # --- Executor ---
    custom_nodes_dirs: str = Field(
        "", description="Custom node pack directories for the executor, separated by ':' (ComfyUI custom_nodes)."
    )
    models_dir: Path | None = Field(
        None, description="A ComfyUI-style models/ directory (checkpoints/, loras/, ...) for the executor."
    )
    tokenizer_dir: Path | None = Field(
        None, description="CLIP tokenizer files (vocab.json, merges.txt; e.g. ComfyUI's comfy/sd1_tokenizer); "
                          "default: derived from the clip-anytorch package's BPE vocabulary."
    )

    max_inline_input_bytes: int = Field(8 << 20, description="Largest input file sent inline with an execution.")
    max_url_input_bytes: int = Field(256 << 20, description="Largest input file the executor fetches from a URL.")
    url_fetch_timeout_seconds: float = Field(30.0, description="Deadline for fetching one input URL.")
    allow_private_urls: bool = Field(
        False, description="Let input URLs reach private, loopback and link-local addresses (off: SSRF guard)."
    )
    interrupt_grace_seconds: float = Field(
        10.0, description="How long a node may ignore an interrupt before the executor kills its worker process."
    )
    executor_id: str = Field(
        "", description="Stable id the executor registers and heartbeats under (default: hostname:port)."
    )
    executor_labels: str = Field(
        "", description="Labels the executor registers with, as 'key=value' pairs separated by ',' "
                        "(e.g. 'pool=sdxl,provider=local')."
    )
    executor_register: bool = Field(
        True, description="Register with the ExecutionService (COMFYMESH_EXECUTION_ADDR) at start, heartbeat, and "
                          "deregister on SIGTERM; off: the executor serves on its own."
    )
    executor_api_key: str = Field(
        "", description="API key (role executor: `python -m services.auth create-key --role executor`) the executor "
                        "registers and heartbeats with, for executors that do not share the deployment secret "
                        "(default: the internal credential derived from it)."
    )
    executor_warmup_graph: Path | None = Field(
        None, description="An API-format workflow JSON the executor runs once at start, before it registers "
                          "(its outputs are discarded), so it joins the fleet warm."
    )
    executor_models_rescan_seconds: float = Field(
        5.0, ge=0, description="How often the executor looks for model files added to or removed from "
                               "COMFYMESH_MODELS_DIR while it runs; a change lists the node catalog again (the "
                               "loaders' choices) and re-registers it with the fleet, so graphs may name a new file "
                               "at once. 0 turns it off."
    )
    executor_preload_models: str = Field(
        "", description="Model names loaded into RAM at start, before registering, separated by ',' (bare, e.g. "
                        "'sd15.safetensors', or with their folder, e.g. 'checkpoints/sd15.safetensors')."
    )
    model_cache_dir: Path | None = Field(
        None, description="Where the executor's disk cache of models fetched from the models bucket lives "
                          "(default: COMFYMESH_HOME/model-cache)."
    )
    executor_disk_cache_bytes: int = Field(
        50 << 30, description="Byte budget of the executor's disk cache of models fetched from the models bucket "
                              "(in COMFYMESH_MODEL_CACHE_DIR; least recently used files are evicted)."
    )
    executor_ram_cache_bytes: int = Field(
        0, description="Byte budget of models the executor keeps loaded in RAM (0: half the host's memory)."
    )
    executor_gpu_cache_bytes: int = Field(
        0, description="Byte budget of models the executor keeps in GPU memory (0: 80% of the device's memory)."
    )
    executor_engine: Literal["builtin", "comfyui"] = Field(
        "builtin", description="What runs the executor's graphs: 'builtin' (ComfyMesh's engine in a supervised "
                               "worker process) or 'comfyui' (a ComfyUI server, see COMFYMESH_COMFYUI_*)."
    )
    comfyui_path: Path | None = Field(
        None, description="ComfyUI checkout (holding main.py) the executor starts and supervises on a private port "
                          "when COMFYMESH_EXECUTOR_ENGINE=comfyui."
    )
    comfyui_python: str = Field(
        "", description="Python interpreter that runs ComfyUI's main.py (default: the executor's own)."
    )
    comfyui_url: str = Field(
        "", description="Base URL of a running ComfyUI to attach to instead of starting one (e.g. "
                        "'http://127.0.0.1:8188'); it is then not supervised: while it is down, jobs fail retryably."
    )
    comfyui_extra_args: str = Field(
        "", description="Extra command-line arguments for the ComfyUI the executor starts, split like a shell "
                        "would (e.g. '--highvram --fast')."
    )
    comfyui_startup_timeout_seconds: float = Field(
        300.0, description="How long a starting ComfyUI may take to answer before the start counts as failed."
    )
    comfyui_silence_seconds: float = Field(
        30.0, description="Websocket silence during a job after which the executor checks ComfyUI's /history and "
                          "health (a finished job is reconciled from history, a dead ComfyUI restarted)."
    )

    # --- Queue (QueueService) ---
    queue_max_size: int = Field(10_000, description="Most executions queued at once; more are refused (0 = no limit).")
    queue_lease_seconds: float = Field(
        30.0, description="A dispatcher's lease on a job; renewed every third of it while the job runs."
    )
    queue_max_attempts: int = Field(3, description="Attempts per execution before it is dead-lettered (FAILED).")
    queue_janitor_interval_seconds: float = Field(
        2.0, description="How often expired leases and queue deadlines are swept."
    )
    queue_wait_samples: int = Field(1000, description="Recent queue-wait samples kept for the percentiles.")

    # --- Fleet and dispatch (ExecutionService) ---
    executor_heartbeat_seconds: float = Field(
        5.0, description="Heartbeat interval executors keep; one silent for 3 intervals is expired."
    )
    dispatcher_slots: int = Field(64, description="Executions one dispatcher replica drives at once.")
    event_stream_max_len: int = Field(10_000, description="Events kept per execution stream (oldest trimmed).")
    event_retention_seconds: int = Field(
        7 * 24 * 3600, description="How long an execution's event stream is kept after it ends."
    )
    default_run_timeout_seconds: float = Field(
        3600.0, description="Run deadline of an attempt when the submit request gives none."
    )
    watch_heartbeat_seconds: float = Field(
        15.0, description="An idle WatchExecution stream gets a heartbeat event this often (keeps proxies open)."
    )
    cost_per_device_second_usd: str = Field(
        "cpu=0,default=0.0005", description="Cost rates per device type, as 'type=usd_per_second' pairs "
                                             "separated by ','; the type is matched as a substring of the device "
                                             "name, 'default' applies otherwise."
    )

    # --- Webhooks (WebhookService) ---
    webhook_allow_private_urls: bool = Field(
        False, description="Let webhook URLs reach private, loopback and link-local addresses (off: SSRF guard; "
                           "cloud metadata addresses stay refused either way)."
    )
    webhook_allow_http: bool = Field(
        False, description="Accept plain http:// webhook URLs (off: https only, so payloads and their presigned "
                           "output URLs never travel in clear)."
    )
    webhook_retry_schedule: str = Field(
        "5s,30s,2m,10m,30m,1h,2h,4h,8h", description="Delays before each retry of a failed delivery, separated by "
                                                     "',' (units ms, s, m, h; bare numbers are seconds); after the "
                                                     "last one the delivery is dead-lettered."
    )
    webhook_retry_jitter: float = Field(
        0.2, description="Each retry delay is randomised by up to this fraction either way (0 disables jitter)."
    )
    webhook_timeout_seconds: float = Field(10.0, description="Deadline of one delivery attempt (connect to body).")
    webhook_concurrency: int = Field(32, description="Delivery attempts one worker replica makes at once.")
    webhook_poll_interval_seconds: float = Field(
        1.0, description="How often a worker looks for due deliveries (new events wake it at once)."
    )
    webhook_breaker_threshold: int = Field(
        5, description="Consecutive failed attempts to one endpoint URL that open its circuit breaker."
    )
    webhook_breaker_cooldown_seconds: float = Field(
        60.0, description="How long an open circuit pauses deliveries to its endpoint before one probe is let through."
    )
    webhook_progress_interval_seconds: float = Field(
        5.0, description="Default minimum time between progress deliveries per execution and subscription."
    )
    webhook_secret_overlap_seconds: float = Field(
        86400.0, description="Default time a rotated-out signing secret keeps signing alongside the new one."
    )
    webhook_execution_url_events: str = Field(
        "succeeded,failed,cancelled", description="Events sent to an execution's own webhook_url, separated by ',' "
                                                  "(of queued, started, progress, succeeded, failed, cancelled)."
    )
    webhook_delivery_retention_seconds: int = Field(
        30 * 24 * 3600, description="How long finished deliveries (delivered or dead-lettered) stay in the log."
    )
    webhook_feed_claim_idle_seconds: float = Field(
        60.0, description="Feed entries a dead worker left unacknowledged this long are taken over by another."
    )

    # --- Models (ModelService) ---
    model_max_bytes: int = Field(
        64 << 30, description="Largest model file accepted (stream upload, presigned upload or import), in bytes."
    )
    model_max_header_bytes: int = Field(
        100_000_000, description="Largest safetensors JSON header accepted, in bytes (safetensors' own limit)."
    )
    model_upload_ttl_seconds: int = Field(
        24 * 3600, description="How long a presigned upload (CreateModelUpload) stays open: the lifetime of its "
                               "URLs; afterwards its staging object is removed."
    )
    model_upload_part_bytes: int = Field(
        512 << 20, description="Presigned uploads larger than this are multipart (one URL per part of this size, "
                               "each PUT retried or resumed on its own); smaller ones get one PUT URL."
    )
    model_import_timeout_seconds: float = Field(
        3600.0, description="Deadline for fetching one model from an http(s) URL (ImportModel)."
    )
    model_allow_private_urls: bool = Field(
        False, description="Let ImportModel URLs reach private, loopback and link-local addresses (off: SSRF guard)."
    )
    model_pending_stale_seconds: float = Field(
        600.0, description="An upload that made no progress for this long no longer holds its model name."
    )
    model_janitor_interval_seconds: float = Field(
        60.0, description="How often expired presigned uploads and abandoned upload reservations are swept."
    )
    model_locations_ttl_seconds: float = Field(
        2.0, description="How long the fleet's cached-model report (executor heartbeats) is reused by model reads."
    )

    # --- Identity and limits (AuthService) ---
    auth_enabled: bool = Field(
        True, description="Authenticate and authorise every RPC ('Authorization: Bearer <API key or token>'); "
                          "off: every caller acts in the tenant 'default' with every scope (local development only)."
    )
    auth_bootstrap_admin: bool = Field(
        True, description="On first start, create the tenant 'default', an admin service account and its API key, "
                          "written to COMFYMESH_HOME/admin.key (mode 0600)."
    )
    auth_token_ttl_seconds: float = Field(900.0, description="Lifetime of a token from CreateToken by default.")
    auth_token_max_ttl_seconds: float = Field(3600.0, description="Longest lifetime CreateToken grants.")
    auth_key_cache_seconds: float = Field(
        1.0, description="How long a verified API key's state (revocation, expiry, scopes) is reused before it is "
                         "read again: a revoked key stops working within this time."
    )
    auth_key_last_used_interval_seconds: float = Field(
        60.0, description="An API key's last-used time is written at most this often."
    )
    auth_signing_key_rotation_seconds: float = Field(
        7 * 86400.0, description="Age at which a new token-signing key takes over; older keys keep verifying until "
                                 "the tokens they signed have expired."
    )
    auth_signing_keys_refresh_seconds: float = Field(
        30.0, description="How often verifiers re-read the token-signing public keys (and at once, at most every "
                          "second, on a token with an unknown kid)."
    )
    auth_rate_limits: str = Field(
        "basic=5:10,pro=20:40,enterprise=1000:2000", description="Per-principal token buckets by tier, as "
                                                                "'tier=requests_per_second:burst' pairs separated "
                                                                "by ','; a tenant's own limits override its tier's."
    )
    auth_execution_limits: str = Field(
        "basic=2:20,pro=8:100,enterprise=0:0", description="Executions per tenant by tier, as "
                                                          "'tier=running:queued' pairs separated by ',' "
                                                          "(0 = unlimited); submissions beyond are refused."
    )
    auth_monthly_budgets_usd: str = Field(
        "basic=10,pro=100,enterprise=0", description="Monthly budget per tenant by tier in USD, as 'tier=usd' pairs "
                                                    "separated by ',' (0 = unlimited); submissions are refused once "
                                                    "the month's cost reaches it."
    )
    auth_internal_credential: str = Field(
        "", description="Bearer credential the platform's components present to each other (internal scopes); "
                        "default: derived from the deployment secret, so every process sharing "
                        "COMFYMESH_SECRET_KEY agrees."
    )

    # --- Gateway ---
    gateway_port: int = Field(8080, description="Envoy listener (REST and gRPC).")
    gateway_admin_port: int = Field(9901, description="Envoy admin port (bound to 127.0.0.1 only).")
    gateway_rate_limit_rps: int = Field(200, description="Envoy's outer token bucket, requests per second.")
    gateway_rate_limit_burst: int = Field(400, description="Envoy's outer token bucket size.")

    # --- Backing systems ---
    database_url: str = Field("", description="SQLAlchemy async URL; default SQLite under COMFYMESH_HOME.")
    database_pool_size: int = Field(10, description="Connections per process (PostgreSQL).")
    redis_url: str = Field("", description="Redis URL; `make run` starts a local Valkey when empty.")
    s3_endpoint: str = Field("", description="S3 endpoint host:port; `make run` starts SeaweedFS when empty.")
    s3_access_key: str = Field("comfymesh", description="S3 access key.")
    s3_secret_key: str = Field("comfymesh-secret", description="S3 secret key.")
    s3_secure: bool = Field(False, description="Use https for S3.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_bucket_prefix: str = Field("comfymesh", description="Buckets are named <prefix>-models, -inputs, -outputs.")
    secret_key: str = Field(
        "", description="Secret for page tokens and internal signatures; default: generated once into "
                        "COMFYMESH_HOME/secret.key. Every replica must share it."
    )
    presigned_url_ttl_seconds: int = Field(3600, description="Lifetime of presigned output/model URLs.")

    # --- Observability ---
    log_level: str = Field("INFO", description="Root log level.")
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line.")
    otel_endpoint: str = Field("", description="OTLP/gRPC endpoint; tracing is off when empty.")
    service_instance: str = Field("", description="Instance name in logs and traces (default: host:pid).")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        if self.environment == "production":
            raise ValueError("COMFYMESH_DATABASE_URL must be set in production (the SQLite default is per machine)")
        return f"sqlite+aiosqlite:///{(self.home / 'comfymesh.db').resolve()}"

    @property
    def custom_node_paths(self) -> list[Path]:
        return [Path(p) for p in self.custom_nodes_dirs.split(":") if p]

    def port_of(self, component: str) -> int:
        """The gRPC port of a component ("workflow", "executor", "control_plane", ...)."""
        port: int = getattr(self, f"{component}_port")
        return port

    def address_of(self, component: str) -> str:
        """Where clients reach a component: its `*_addr` setting, else this host's port."""
        configured: str = getattr(self, f"{component}_addr", "")
        return configured or f"127.0.0.1:{self.port_of(component)}"

    def metrics_port_for(self, grpc_port: int) -> int:
        """0 disables the metrics endpoint."""
        return grpc_port + METRICS_PORT_OFFSET if self.metrics_port is None else self.metrics_port


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
