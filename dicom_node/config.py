"""The node's one typed configuration: TOML file (`--config` / `X2X_CONFIG`) + `X2X_*` environment.

Environment variables override the file; nested keys use a double underscore, e.g.
`X2X_NODE__PORT=11113` or `X2X_API__TOKEN=...`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicom_node.config_base import ConfigError, _Section, check_ae_title
from dicom_node.config_node import NodeConfig, TLSConfig
from dicom_node.config_send import CStoreDestination, Destination, FolderDestination, SendConfig, StowDestination

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class PathsConfig(_Section):
    var_dir: Path = Field(Path("var"), description="spool, databases, results and generated files")
    spool_dir: Path | None = Field(None, description="received instances; default <var_dir>/spool")
    results_dir: Path | None = Field(None, description="outputs + previews per job; default <var_dir>/results")

    def spool(self) -> Path:
        return self.spool_dir or self.var_dir / "spool"

    def results(self) -> Path:
        return self.results_dir or self.var_dir / "results"


class DatabaseConfig(_Section):
    url: str | None = Field(
        None, description="SQLAlchemy URL of the job store; default sqlite:///<var_dir>/jobs.sqlite"
    )
    busy_timeout_seconds: float = Field(
        30.0, gt=0, description="SQLite: how long one statement waits for a lock held by another process"
    )
    lock_retry_seconds: float = Field(
        120.0, ge=0, description="how long a job or study write keeps retrying while the database is locked"
    )


class QueueConfig(_Section):
    """Celery. Embedded default: SQLite broker + result backend under var_dir, no server."""

    broker_url: str | None = Field(
        None, description="Celery broker (redis://, amqp://); default sqla+sqlite:///<var_dir>/broker.sqlite"
    )
    result_backend: str | None = Field(
        None, description="Celery results; default db+sqlite:///<var_dir>/celery-results.sqlite"
    )
    embedded_worker: bool = Field(True, description="`x2x serve` also runs one worker (solo pool)")
    # Restart safety: a running job's worker renews a lease; a job whose lease is older than this (or
    # whose worker process on this host is gone) is put back on the queue by any worker's sweep.
    lease_seconds: float = Field(
        30.0, gt=0, description="a running job's lease; stale after this long without a heartbeat -> requeued"
    )
    sweep_interval_seconds: float = Field(10.0, gt=0, description="how often each worker looks for orphaned jobs")
    # A 'queued' job whose broker message was lost (embedded SQLite broker + SIGKILL) is re-sent after
    # this long; a duplicate message is harmless because a job is claimed atomically.
    requeue_queued_after_seconds: float = Field(
        900.0, gt=0, description="re-send a job still queued after this long (its message may be lost)"
    )
    queue_name: str = Field("x2x", description="Celery queue of the edit stage (GPU work)")
    delivery_queue_name: str = Field(
        "x2x-deliver", description="Celery queue of the delivery stage (encoded objects to their destinations)"
    )
    max_requeues: int = Field(
        1, ge=0, description="times a job whose worker died is put back on the queue; the next death "
        "quarantines it (dead-letter, with the reason) so one poisonous job cannot kill worker after worker",
    )
    edit_isolation: Literal["process", "none"] = Field(
        "process", description="process = each worker runs its edits in one child process and its encodes in "
        "another, both under edit_memory_limit_mb (a runaway edit or encode fails its job, never the worker); "
        "none = in the worker itself",
    )
    edit_memory_limit_mb: int = Field(
        0, ge=0, description="memory the edit's (and the encode's) child process may use (RLIMIT_DATA, MB); "
        "0 = half of this machine's memory",
    )
    stop_timeout_seconds: float = Field(
        30.0, ge=0, description="how long `x2x serve`, stopping, lets a running edit finish; after it the edit "
        "process is stopped and its job goes back on the queue (keep it below your service manager's stop timeout)",
    )


class WorkerConfig(_Section):
    """Processes that edit (the embedded worker of `x2x serve`, `x2x worker`, `x2x batch`, `x2x edit`)."""

    threads: int = Field(
        0, ge=0, le=1024,
        description="torch intra-op threads; 0 = auto: the cores this process may use (affinity, cgroup "
        "quota) minus room for the SCP and API (1 core up to 8, 2 beyond)",
    )
    interop_threads: int = Field(1, ge=1, le=64, description="torch inter-op threads (one edit runs at a time)")
    batch_size: int = Field(
        1, ge=1, le=64,
        description="most queued jobs with the same model, steps and guidance edited together "
        "(Editor.edit_batch: one UNet call per step for all of them); 1 = one job at a time",
    )


class APIConfig(_Section):
    enabled: bool = Field(True, description="serve the REST API and dashboard from `x2x serve`")
    host: str = Field("127.0.0.1", description="API address (0.0.0.0 to serve beyond this machine)")
    port: int = Field(8000, ge=1, le=65535, description="API port")
    token: SecretStr | None = Field(
        None, description="bearer token for every endpoint but /healthz and /readyz; unset = generated into "
        "<var_dir>/api-token",
    )
    read_token: SecretStr | None = Field(
        None, description="optional second token that may only read (GET): for dashboards and Prometheus"
    )
    public_reads: bool = Field(
        False, description="true = GET endpoints answer without a token (images and UIDs readable by anyone "
        "who reaches the port)",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host header values accepted (e.g. [\"x2x.hospital.org\"]); empty = "
        "localhost, 127.0.0.1, ::1 and [api] host; \"*\" = any",
    )


class ModelConfig(_Section):
    path: Path | None = Field(
        None, description="diffusers folder or .ckpt/.safetensors; unset = the phantom demo model (docs/models.md)"
    )
    single_file_config: Path | None = Field(
        None, description="local diffusers config folder for a single-file checkpoint (never fetched)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when available")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = bf16 (else fp16) on CUDA, fp32 on CPU"
    )


class _EditBase(_Section):
    """`[edit]`: defaults for every edit. Its keys are exactly editor.EditParams' fields (plus `seed`),
    generated from that dataclass so the two cannot drift; values are validated by constructing it."""

    seed: int = Field(0, description="default seed when neither rule nor request gives one")

    @model_validator(mode="after")
    def _valid_params(self) -> _EditBase:
        from editor import EditParams

        EditParams.from_dict(self.params_dict())  # ValueError -> a config error naming the problem
        return self

    def params_dict(self) -> dict[str, Any]:
        """The EditParams fields of this section (everything but `seed`)."""
        return self.model_dump(exclude={"seed"})


def _edit_section() -> type[_EditBase]:
    from editor import EditParams

    hints = typing.get_type_hints(EditParams)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(EditParams):
        bounds = {k: v for k, v in f.metadata.items() if k in ("ge", "le", "multiple_of")}
        fields[f.name] = (hints[f.name], Field(f.default, description=str(f.metadata.get("help", "")), **bounds))
    return create_model("EditConfig", __base__=_EditBase, **fields)


if TYPE_CHECKING:
    EditConfig = _EditBase
else:
    EditConfig = _edit_section()


class Rule(_Section):
    """Called-AE rule: studies sent to this AE title get this instruction."""

    config_label: ClassVar[str] = "a [[rules]] entry"
    called_ae: str = Field(..., description="AE title the PACS sends to, e.g. X2X_EFFUSION")
    instruction: str = Field(..., description="e.g. 'Add the finding of pleural effusion.'")
    seed: int | None = Field(None, description="overrides [edit] seed")
    steps: int | None = Field(None, description="overrides [edit] steps")
    destination: str | None = Field(None, description="name in [destinations] the results go to")

    _called_ae = field_validator("called_ae")(check_ae_title)


class RequestsConfig(_Section):
    private_creator: str = Field("INSTRUCTX2X", description="private creator of the request block")
    private_group: int = Field(0x0071, description="group of the private request block (0x0071 = 113)")
    standard_attribute: str | None = Field(
        None, description="keyword of a standard attribute holding the instruction, e.g. RequestedProcedureDescription"
    )
    default_instruction: str | None = Field(
        None, description="instruction for studies sent to the node's own AE title when nothing else applies"
    )
    max_instruction_chars: int = Field(
        1000, ge=20, description="longest instruction accepted from an instance, a rule or the REST API"
    )


class ResultsConfig(_Section):
    uid_root: str | None = Field(None, description="UID root of outputs; unset = 2.25.<int> from the job's key")
    institution_name: str | None = Field(None, description="written into Contributing Equipment")


class LoggingConfig(_Section):
    level: str = Field("INFO", description="DEBUG / INFO / WARNING / ERROR")
    json_format: bool = Field(False, description="one JSON object per log line")


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="X2X_", env_nested_delimiter="__", extra="forbid")

    node: NodeConfig = Field(default_factory=NodeConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    api: APIConfig = Field(default_factory=APIConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    edit: EditConfig = Field(default_factory=EditConfig)
    rules: list[Rule] = Field(default_factory=list)
    requests: RequestsConfig = Field(default_factory=RequestsConfig)
    destinations: dict[str, Destination] = Field(default_factory=dict)
    send: SendConfig = Field(default_factory=SendConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    _toml_data: dict[str, Any] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs > environment > TOML file
        return (init_settings, env_settings, _TomlSource(settings_cls, cls._toml_data))

    # Derived locations -------------------------------------------------------------------
    # Absolute, whatever the working directory was: these paths are stored (jobs, study instances) and
    # must mean the same file to a node restarted elsewhere, to `x2x` commands and to workers.
    @property
    def var_dir(self) -> Path:
        return self.paths.var_dir.absolute()

    @property
    def spool_dir(self) -> Path:
        return self.paths.spool().absolute()

    @property
    def results_dir(self) -> Path:
        return self.paths.results().absolute()

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.var_dir / 'jobs.sqlite').resolve()}"

    @property
    def broker_url(self) -> str:
        return self.queue.broker_url or f"sqla+sqlite:///{(self.var_dir / 'broker.sqlite').resolve()}"

    @property
    def result_backend(self) -> str:
        return self.queue.result_backend or (
            f"db+sqlite:///{(self.var_dir / 'celery-results.sqlite').resolve()}"
        )

    def known_called_aes(self) -> list[str]:
        """The AE titles this node answers to: its own and every rule's (node.unknown_called_ae)."""
        titles = [self.node.ae_title.strip(), *(rule.called_ae.strip() for rule in self.rules)]
        return list(dict.fromkeys(titles))

    def rule_for(self, called_ae: str) -> Rule | None:
        for rule in self.rules:
            if rule.called_ae.strip() == called_ae.strip():
                return rule
        return None

    def masked_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets shown as '********'."""
        return self.model_dump(mode="json")  # SecretStr dumps masked in json mode


def _error_lines(exc: ValidationError) -> list[str]:
    from dicom_node.config_keys import describe_errors

    return describe_errors(Settings, exc.errors())


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from TOML (argument, else $X2X_CONFIG) and the environment.

    Raises ConfigError with a one-line message naming the offending key.
    """
    path = config_file or os.environ.get("X2X_CONFIG")
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {p}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    Settings._toml_data = data
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = _error_lines(exc)
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise ConfigError(lines[0] + more, lines) from exc
    finally:
        Settings._toml_data = {}


# The sections that live in their own modules are part of this module's interface too.
__all__ = [
    "APIConfig", "CStoreDestination", "ConfigError", "DatabaseConfig", "Destination", "EditConfig",
    "FolderDestination", "LoggingConfig", "ModelConfig", "NodeConfig", "PathsConfig", "QueueConfig",
    "RequestsConfig", "ResultsConfig", "Rule", "SendConfig", "Settings", "StowDestination", "TLSConfig",
    "WorkerConfig", "check_ae_title", "load_settings",
]
