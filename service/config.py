"""The daemon's one configuration object, read from TOML and validated once at start.

Each section of the TOML file is a frozen dataclass below; the metadata of each field
(``check`` and ``help``) is the single schema that gives defaults, validation and the
commented example ``deploy/holostream.toml``. Every error names ``section.key`` and why.
``[reconstruction]`` holds the keys of :class:`~holostream.shared.settings.ReconstructionSettings`
and is validated by that class.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import tomllib

from holostream.service.daemon.curve import is_loopback
from holostream.shared.settings import ReconstructionSettings, SettingsError

_ADDRESS = re.compile(r"^(tcp://[^\s:]+:(\d+|\*)|ipc://\S+|inproc://\S+)$")
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:]+\]|[^\s:\[\]]+):\d{1,5}$")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """An invalid configuration value; ``key`` is ``"section.key"``."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


# --- checks: each returns the normalised value or raises ValueError(reason) -------------

def _address(value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise ValueError(f"expected a ZeroMQ address like tcp://127.0.0.1:5550 or ipc:///path, got {value!r}")
    return value


def _listen(value: Any) -> str:
    if value == "":
        return value
    if not isinstance(value, str) or not _LISTEN.match(value):
        raise ValueError(f'expected HOST:PORT like 127.0.0.1:9560, or "" for off, got {value!r}')
    return value


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value
    return check


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected an integer in [{low}, {high}], got {value!r}")
        return value
    return check


def _number(low: float, high: float, unit: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"expected a number of {unit} in [{low}, {high}], got {value!r}")
        return float(value)
    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _optional_dir(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a directory path, got {value!r}")
    return value


def _opt(default: Any, check: Callable[[Any], Any], help_text: str) -> Any:
    """A dataclass field whose metadata is its schema: ``check`` (validate) and ``help``.

    ``default`` may be a zero-argument function, called when the section is built.
    """
    meta = {"check": check, "help": help_text}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def default_worker_count() -> int:
    """``min(4, usable cores)``: the default size of the worker pool."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


# --- sections -------------------------------------------------------------------------

@dataclass(frozen=True)
class IngestConfig:
    """``[ingest]``: the PULL socket where detectors push frames, and the frame ring."""

    address: str = _opt("tcp://127.0.0.1:5550", _address, "PULL socket address")
    mode: str = _opt("bind", _choice("bind", "connect"),
                     "bind (detector connects) or connect (detector binds)")
    ring_slots: int = _opt(64, _integer(2, 1 << 16), "frames the shared-memory ring holds per scan")
    rcvhwm: int = _opt(32, _integer(1, 1 << 24), "ZeroMQ receive high-water mark (messages)")
    drop_policy: str = _opt("block", _choice("block", "drop"),
                            "when the ring is full: block (stop reading) or drop frames (counted)")
    max_frame_bytes: int = _opt(256 << 20, _integer(1, 1 << 40),
                                "largest accepted frame payload in bytes")
    stall_timeout_s: float = _opt(300.0, _number(0.0, 604_800.0, "seconds"),
                                  "a scan that receives nothing for this long ends: its final volume "
                                  "(of what arrived) says incomplete and why; 0: wait for ever")
    memory_budget_gb: float = _opt(0.0, _number(0.0, 1.0e6, "GB"),
                                   "shared memory one scan may hold (ring, reference, sinogram, volumes), "
                                   "GB: a scan_start that needs more is refused and the open scan goes on; "
                                   "0: a quarter of the machine's memory")
    keep_transmissions: bool = _opt(True, _boolean,
                                    "pool mode: the workers also keep each group's binned transmission in "
                                    "the scan's shared memory (one more sinogram, n_groups*rows_b*cols_b*4 "
                                    "bytes, counted in memory_budget_gb) so that set delta_beta/phase "
                                    "re-tunes the current and the last scan; false: δ/β and the phase chain "
                                    "apply from the next scan only (split mode always keeps them)")


@dataclass(frozen=True)
class PublishConfig:
    """``[publish]``: the PUB socket where volumes, previews and status go out."""

    address: str = _opt("tcp://127.0.0.1:5560", _address, "PUB socket address (bound)")
    sndhwm: int = _opt(4, _integer(1, 1 << 20),
                       "send high-water mark: a slow subscriber loses messages beyond it")
    status_interval_s: float = _opt(1.0, _number(0.05, 1.0, "seconds"),
                                    "seconds between status messages (the protocol promises <= 1)")
    output_dir: str | None = _opt(None, _optional_dir,
                                  "write each final volume to DIR/<scan_id>.h5 (empty: do not write)")
    save_intermediate: bool = _opt(False, _boolean, "also write the live volumes to output_dir")
    compression: str = _opt("none", _choice("none", "gzip", "lz4", "zstd"),
                            "compression of the volumes written: none, gzip, or lz4/zstd (need hdf5plugin)")
    keep_last_scan_mb: float = _opt(512.0, _number(0.0, 1 << 20, "MB"),
                                    "keep the last completed scan's filtered sinogram, and its transmissions "
                                    "(split mode; pool mode with [ingest] keep_transmissions) when both fit "
                                    "(private copies, at most this many MB; 0: off) so that set cor_px/filter "
                                    "(/delta_beta/phase) re-tunes its final volume")


@dataclass(frozen=True)
class ControlConfig:
    """``[control]``: the REP socket for status, config, set, abort, republish."""

    address: str = _opt("tcp://127.0.0.1:5570", _address, "REP socket address (bound)")


@dataclass(frozen=True)
class WorkersConfig:
    """``[workers]``: the reconstruction worker processes."""

    count: int = _opt(default_worker_count, _integer(1, 256), "worker processes (default min(4, cores))")
    device: str = _opt("cpu", _choice("cpu", "gpu", "auto"),
                       "cpu, gpu, or auto (gpu when cupy sees one, chosen inside each worker)")
    mode: str = _opt("auto", _choice("auto", "pool", "split"),
                     "pool: every worker runs the whole chain; split: workers flat-field and bin, "
                     "one reconstructor process phases and back-projects in batches on device; "
                     "auto: split when device resolves to gpu, else pool")
    batch: int = _opt(16, _integer(1, 4096),
                      "split mode: angle groups the reconstructor phases and back-projects in one call")
    device_memory_gb: float = _opt(0.0, _number(0.0, 1.0e6, "GB"),
                                   "device memory a scan may use, GB (the card's memory, or less to share "
                                   "it): a scan_start whose estimate exceeds it is refused before any "
                                   "frame; 0: no check")


def _cluster_address(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.match(r"^(tls|tcp)://[^\s/]+:\d{1,5}$", value):
        raise ValueError(f'expected a Dask scheduler address like tls://host:8786, or "" for a local '
                         f"cluster, got {value!r}")
    return value


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: live scans reconstructed by actors on a Dask cluster (docs/architecture.md)."""

    actors: int = _opt(0, _integer(0, 1024),
                       "reconstructor actors, one per Dask worker (one per GPU); 0: off (the daemon's own "
                       "processes reconstruct); > 0 implies [workers] mode = split (the workers bin)")
    address: str | None = _opt(None, _cluster_address,
                        'Dask scheduler, tls://host:8786 (mutual TLS, see deploy/slurm/); "": a local '
                        "cluster of `actors` worker processes started by the daemon")
    tls: str | None = _opt(None, _optional_dir,
                           "folder of ca.pem, cert.pem, key.pem (as `reconstruct --cluster-tls`); "
                           "required for tls:// addresses")
    threads: int = _opt(1, _integer(1, 256), "CPU threads of each actor (FFT, back-projection)")
    collect_interval_s: float = _opt(1.0, _number(0.05, 3600.0, "seconds"),
                                     "longest time between two collects of a busy actor's partial volume "
                                     "(each moves one volume; idle actors are collected at once)")
    actor_timeout_s: float = _opt(60.0, _number(1.0, 86400.0, "seconds"),
                                  "an actor whose oldest call (a batch or a collect) has not answered in this "
                                  "long is taken as lost (a hung GPU, a stopped process): its groups are "
                                  "redone by the others")


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (``GET http://ADDRESS/metrics``)."""

    address: str = _opt("127.0.0.1:9560", _listen,
                        'HOST:PORT of the Prometheus endpoint, loopback by default; "" turns it off')


@dataclass(frozen=True)
class ServiceConfig:
    """``[service]``: logging and systemd integration."""

    log_level: str = _opt("info", _choice(*_LOG_LEVELS), "log level on stderr (journald)")
    watchdog: bool = _opt(True, _boolean, "send WATCHDOG=1 when systemd asks for it (WatchdogSec)")


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: ZeroMQ CURVE on ingest, publish and control (docs/security.md)."""

    server_key: str | None = _opt(None, _optional_dir,
                                  "the daemon's key pair (NAME.key_secret of `holostream keys`); "
                                  "empty: CURVE off, allowed only on loopback addresses")
    client_keys: str | None = _opt(None, _optional_dir,
                                   "directory of the public keys (*.key) of the clients allowed to connect")
    admin_keys: str | None = _opt(None, _optional_dir,
                                  "directory of the public keys allowed to send set and abort")
    allow_plaintext_remote: bool = _opt(False, _boolean,
                                        "start without CURVE on a network address (a warning, not an error)")


_SECTIONS: dict[str, type] = {
    "ingest": IngestConfig,
    "publish": PublishConfig,
    "control": ControlConfig,
    "workers": WorkersConfig,
    "cluster": ClusterConfig,
    "metrics": MetricsConfig,
    "service": ServiceConfig,
    "security": SecurityConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole validated configuration of one daemon."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    reconstruction: ReconstructionSettings = field(default_factory=ReconstructionSettings)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def plaintext_remote(self) -> list[str]:
        """Addresses reachable from the network that would run without CURVE."""
        if self.security.server_key:
            return []
        return [a for a in (self.ingest.address, self.publish.address, self.control.address)
                if not is_loopback(a)]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (TOML/JSON-able; ``None`` values left out)."""
        out = {name: {k: v for k, v in dataclasses.asdict(getattr(self, name)).items() if v is not None}
               for name in _SECTIONS}
        out["reconstruction"] = self.reconstruction.to_dict()
        return out


def _section(name: str, table: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(table, dict):
        raise ConfigError(name, f"expected a table, got {type(table).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}", f"unknown key (known: {', '.join(known)})")
        try:
            values[key] = known[key].metadata["check"](value)
        except ValueError as exc:
            raise ConfigError(f"{name}.{key}", str(exc)) from None
    return cls(**values)


def config_from_dict(tables: dict[str, Any]) -> Config:
    """Validate nested ``{section: {key: value}}`` tables into a :class:`Config`.

    Raises
    ------
    ConfigError
        For an unknown section or key or a bad value, naming ``section.key``.
    """
    sections = {}
    for name, table in tables.items():
        if name == "reconstruction":
            if not isinstance(table, dict):
                raise ConfigError(name, f"expected a table, got {type(table).__name__}")
            try:
                sections[name] = ReconstructionSettings.from_dict(table)
            except SettingsError as exc:
                raise ConfigError(f"reconstruction.{exc.key}", exc.reason) from None
        elif name in _SECTIONS:
            sections[name] = _section(name, table)
        else:
            known = ", ".join([*_SECTIONS, "reconstruction"])
            raise ConfigError(name, f"unknown section (known: {known})")
    config = Config(**sections)
    security = config.security
    if security.server_key and not security.client_keys:
        raise ConfigError("security.client_keys", "needed with server_key: the directory of allowed client keys")
    address = config.cluster.address or ""
    if address.startswith("tls://") and not config.cluster.tls:
        raise ConfigError("cluster.tls", f"needed with {address}: the folder of ca.pem, cert.pem, key.pem")
    if address.startswith("tcp://") and not is_loopback(address):
        raise ConfigError("cluster.address", f"{address} is not encrypted: use tls:// with "
                          "[cluster] tls (deploy/slurm/README.md)")
    remote = config.plaintext_remote()
    if remote and not security.allow_plaintext_remote:
        raise ConfigError("security.server_key", f"{', '.join(remote)} can be reached from the network: "
                          "CURVE is required there (make keys with `holostream keys`, docs/security.md), "
                          "or set allow_plaintext_remote = true")
    return config


def load_config(path: str | os.PathLike | None = None,
                overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read the TOML file at ``path`` (or the defaults), apply ``overrides``, validate.

    Parameters
    ----------
    path : path or None
        A TOML file with the sections of this module; None: all defaults.
    overrides : dict, optional
        ``{section: {key: value}}`` taking precedence over the file, e.g. from the
        command line ``{"ingest": {"address": "tcp://127.0.0.1:6000"}}``.

    Raises
    ------
    ConfigError
        Unreadable file, TOML syntax error, unknown section/key or bad value.
    """
    tables: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                tables = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    for name, table in (overrides or {}).items():
        merged = dict(tables.get(name) or {}) if isinstance(tables.get(name), dict) else {}
        merged.update(table)
        tables[name] = merged
    return config_from_dict(tables)


def section_keys() -> dict[str, list[str]]:
    """The known keys of every daemon section (not ``[reconstruction]``), for docs and tests."""
    return {name: [f.name for f in dataclasses.fields(cls)] for name, cls in _SECTIONS.items()}
