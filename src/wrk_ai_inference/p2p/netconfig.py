"""``config/facs/net.config.json``: how the worker joins the DHT (rack mode, and drives).

Bootstrap must be given: a list of ``host:port`` (tests and local testnets), or
the word ``"public"`` to join the public Hyperswarm DHT on purpose. An empty
list is refused, because falling back to the public network silently is how a
test ends up talking to the internet.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


class DhtOpts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap: list[str] | str = Field(default_factory=list)
    host: str | None = None
    #: HyperDHT's own option: false declares this node reachable at its address (a
    #: server with a routable address), so peers connect to it without holepunching
    firewalled: bool | None = None

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            if value != "public":
                raise ValueError("bootstrap is a list of 'host:port' or the word 'public'")
            return value
        bad = [v for v in value if not _HOST_PORT.match(v)]
        if bad:
            raise ValueError(f"bootstrap entries must be 'host:port': {bad}")
        return value


class NetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dht_opts: DhtOpts = Field(default_factory=DhtOpts, alias="dhtOpts")
    allow: list[str] = Field(default_factory=list)
    store_dir: str = Field("store", alias="storeDir")
    status_dir: str = Field("status", alias="statusDir")
    announce_interval: int = Field(300_000, alias="announceInterval", ge=1000)
    pool_linger: int = Field(300_000, alias="poolLinger", ge=1000)
    request_timeout: int = Field(30_000, alias="requestTimeout", ge=100)
    keep_alive: int = Field(2_000, alias="keepAlive", ge=100)
    connection_timeout: int = Field(7_000, alias="connectionTimeout", ge=500)

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str]) -> list[str]:
        bad = [k for k in value if not _KEY.match(k)]
        if bad:
            raise ValueError(f"allow holds 64-hex-digit public keys; not keys: {bad[:3]}")
        return [k.lower() for k in value]

    def corestore(self, rack: str | None = None) -> Path:
        """Where the model drives live: ``<storeDir>/<rack>/corestore`` for a rack,
        ``<storeDir>/corestore`` for an HTTP worker or a publisher (one process each)."""
        base = Path(self.store_dir)
        return (base / rack if rack else base) / "corestore"

    def sidecar_init(self, store: Path | None, dht_seed: str | None = None,
                     rpc_seed: str | None = None) -> dict[str, Any]:
        """The sidecar's init frame: keys from the seeds (random when None), drives in
        ``store`` (none when None)."""
        return {"dhtSeed": dht_seed, "bootstrap": self.bootstrap_for_sidecar(),
                "host": self.bind_host(), "firewalled": self.dht_opts.firewalled,
                "keepAlive": self.keep_alive,
                "storeDir": str(store) if store is not None else None,
                "rpc": {"seed": rpc_seed, "poolLinger": self.pool_linger,
                        "connectionTimeout": self.connection_timeout,
                        "announceInterval": self.announce_interval}}

    def bootstrap_for_sidecar(self) -> list[str] | None:
        """The list for HyperDHT, or None for its public default (only when asked for)."""
        boot = self.dht_opts.bootstrap
        if boot == "public":
            return None
        if not boot:
            raise ConfigError("net config: dhtOpts.bootstrap is empty; pass --bootstrap "
                              "HOST:PORT (see `wrk-ai-inference testnet`) or set it to "
                              "\"public\" to join the public Hyperswarm DHT")
        return list(boot)

    def bind_host(self) -> str:
        """Loopback when every bootstrap node is on loopback, else all interfaces."""
        if self.dht_opts.host:
            return self.dht_opts.host
        return bind_host_for(self.dht_opts.bootstrap)


def bind_host_for(bootstrap: list[str] | str | None) -> str:
    """Loopback when every bootstrap node is on loopback (a node bound to all interfaces
    would advertise its LAN addresses to a local testnet), else all interfaces."""
    if isinstance(bootstrap, list) and bootstrap and all(_is_loopback(b) for b in bootstrap):
        return "127.0.0.1"
    return "0.0.0.0"


def _is_loopback(host_port: str) -> bool:
    host = host_port.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_net_config(config_dir: str | Path | None, overrides: dict[str, Any]) -> NetConfig:
    path = Path(config_dir or "config") / "facs" / "net.config.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if overrides.get("bootstrap") is not None:
        data.setdefault("dhtOpts", {})["bootstrap"] = overrides.pop("bootstrap")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return NetConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"net config ({path}): {problems}") from exc
