"""Service configuration: one frozen dataclass per service, loaded from defaults, file, env and flags.

A service declares its settings as a frozen, keyword-only dataclass that subclasses
:class:`BaseServiceConfig` (the fields every service shares), each field with a default and a help
text (``dataclasses.field(metadata={"help": ...})`` or the shorthand :func:`option`).
:func:`load_config` fills it from, in increasing precedence:

1. the field defaults;
2. a TOML file (``--config FILE``, else ``$VGPUSIM_CONFIG``): keys of its ``[common]`` table apply
   to every service, keys of its ``[<service>]`` table to that service only; other tables belong to
   others and are ignored; relative paths are relative to the file;
3. environment variables ``VGPUSIM_<SERVICE>_<FIELD>`` (upper-case, e.g.
   ``VGPUSIM_VGPU_BUS_LOG_LEVEL=debug``);
4. command-line flags ``--<field-with-dashes>`` (``--no-<field>`` for booleans), generated from
   the fields by :func:`build_parser`, the field help becoming the flag help.

Every value is type-checked; a bad one raises :class:`~vgpusim.common.errors.InvalidArgument`
naming the field and where the value came from (``metadata["field"]``, ``metadata["source"]``).

Glossary:
- field type: one of ``int``, ``float``, ``str``, ``bool``, ``Path``, ``tuple[str, ...]``; in text
  sources (env, flags) booleans are ``1/0/true/false/yes/no/on/off`` and tuples comma-separated.
- source: ``default``, ``file <path>``, ``env <NAME>`` or ``flag --<name>``.
- choices: ``metadata["choices"]``, the only allowed values of a ``str`` field.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from vgpusim.common.errors import InvalidArgument
from vgpusim.common.paths import StackPaths, resolve_state_dir

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "ENV_CONFIG_FILE",
    "BaseServiceConfig",
    "build_parser",
    "config_as_dict",
    "env_var",
    "load_config",
    "option",
]

ENV_CONFIG_FILE = "VGPUSIM_CONFIG"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_TYPES: tuple[object, ...] = (int, float, str, bool, Path, tuple[str, ...])

C = TypeVar("C")
T = TypeVar("T")


def option(default: T, help: str, *, choices: Sequence[str] = ()) -> T:
    """Shorthand for ``dataclasses.field(default=..., metadata={"help": ..., "choices": ...})``.

    Use it for literal defaults; ruff's RUF009 objects to ``option(Path(...), ...)``, so a call
    as default is spelled ``field(default=Path(...), metadata={"help": ...})``.
    """
    meta: dict[str, object] = {"help": help}
    if choices:
        meta["choices"] = tuple(choices)
    made: T = field(default=default, metadata=meta)
    return made


@dataclass(frozen=True, kw_only=True)
class BaseServiceConfig:
    """Settings every vgpusim service has; a service's own config subclasses this."""

    state_dir: Path = field(
        default_factory=resolve_state_dir,
        metadata={
            "help": "state dir of the stack (default: $VGPUSIM_STATE_DIR, else $XDG_STATE_HOME/vgpusim"
            " or ~/.local/state/vgpusim)",
            "env_default": lambda environ: resolve_state_dir(None, environ=environ),
        },
    )
    listen: str = option("", "gRPC listen target; empty = unix:<state>/run/<service>.sock")
    tcp_listen: str = option("", "extra TCP listen address host:port (port 0 = ephemeral); empty = none")
    tls_cert: str = option("", "PEM certificate chain for the TCP port; empty = plaintext TCP")
    tls_key: str = option("", "PEM private key matching --tls-cert")
    tls_client_ca: str = option("", "PEM CA that client certificates must chain to (mTLS); empty = none")
    metrics_host: str = option("127.0.0.1", "address of the Prometheus /metrics HTTP endpoint")
    metrics_port: int = option(0, "port of the /metrics endpoint; 0 = ephemeral, -1 = no endpoint")
    log_level: str = option("info", "log level", choices=("debug", "info", "warning", "error"))
    log_format: str = option("json", "log format: JSON lines or text", choices=("json", "text"))
    stop_grace_s: float = option(5.0, "seconds in-flight RPCs get to finish on SIGTERM")

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(os.path.abspath(self.state_dir)))
        if not -1 <= self.metrics_port <= 65535:
            raise _bad("metrics_port", "must be -1..65535", self.metrics_port)
        if self.stop_grace_s < 0:
            raise _bad("stop_grace_s", "must be >= 0", self.stop_grace_s)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise _bad("tls_key", "tls_cert and tls_key go together", self.tls_key)
        if self.tls_client_ca and not self.tls_cert:
            raise _bad("tls_client_ca", "mTLS needs tls_cert and tls_key", self.tls_client_ca)
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise _bad(f.name, f"must be one of {', '.join(allowed)}", getattr(self, f.name))

    @property
    def paths(self) -> StackPaths:
        """The stack's paths under :attr:`state_dir`."""
        return StackPaths(self.state_dir)

    def listen_target(self, service: str) -> str:
        """The gRPC target to listen on: :attr:`listen`, else the service's socket in the state dir."""
        return self.listen or self.paths.target(service)


def _bad(name: str, problem: str, value: object, source: str = "") -> InvalidArgument:
    where = f" (from {source})" if source else ""
    meta = {"field": name, "value": repr(value)[:200]}
    if source:
        meta["source"] = source
    return InvalidArgument(
        f"config {name}: {problem}, got {value!r}{where}", reason="BAD_CONFIG", metadata=meta
    )


def env_var(service: str, name: str) -> str:
    """The environment variable that sets field ``name`` of ``service``."""
    return f"VGPUSIM_{service.upper()}_{name.upper()}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fields(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], object]]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if hints[f.name] not in _TYPES:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported config type {hints[f.name]!r}")
        if not f.metadata.get("help"):
            raise TypeError(f"{cls.__name__}.{f.name}: config fields need metadata['help']")
        out.append((f, hints[f.name]))
    return out


def _from_text(name: str, ftype: object, text: str, source: str) -> object:
    """Convert an env var or flag string to ``ftype``."""
    try:
        if ftype is bool:
            low = text.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(text)
        if ftype is int:
            return int(text, 0)
        if ftype is float:
            return float(text)
        if ftype is Path:
            if not text:
                raise ValueError(text)
            return Path(text).expanduser()
        if ftype == tuple[str, ...]:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError:
        raise _bad(name, f"expected {_type_name(ftype)}", text, source) from None


def _from_toml(name: str, ftype: object, value: object, source: str, base: Path) -> object:
    """Check a TOML value against ``ftype`` (ints are accepted for floats, strings for paths)."""
    if ftype is bool and isinstance(value, bool):
        return value
    if ftype is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if ftype is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if ftype is str and isinstance(value, str):
        return value
    if ftype is Path and isinstance(value, str) and value:
        return base / Path(value).expanduser()
    if ftype == tuple[str, ...] and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _bad(name, f"expected {_type_name(ftype)}", value, source)


def _type_name(ftype: object) -> str:
    if ftype == tuple[str, ...]:
        return "a list of strings"
    names: dict[object, str] = {bool: "a boolean", int: "an integer", float: "a number", Path: "a path"}
    return names.get(ftype, "a string")


def build_parser(cls: type[Any], service: str, *, prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` and one flag per field of ``cls``.

    Flags default to ``argparse.SUPPRESS`` so that the namespace holds only what was given.
    """
    doc = (cls.__doc__ or "").strip().splitlines()
    parser = argparse.ArgumentParser(prog=prog or f"vgpusim-{service}", description=doc[0] if doc else None)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML config file (env {ENV_CONFIG_FILE})",
    )
    for f, ftype in _fields(cls):
        text = str(f.metadata["help"])
        if f.metadata.get("choices"):
            text += " {" + ",".join(f.metadata["choices"]) + "}"
        if f.default is not dataclasses.MISSING and "env_default" not in f.metadata:
            text += f" (default: {f.default!r})"
        text += f" [env {env_var(service, f.name)}]"
        text = text.replace("%", "%%")
        if ftype is bool:
            parser.add_argument(
                _flag(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
        else:
            metavar = "A,B,..." if ftype == tuple[str, ...] else _type_name(ftype).split()[-1].upper()
            parser.add_argument(_flag(f.name), metavar=metavar, default=argparse.SUPPRESS, help=text)
    return parser


def _read_file(path: Path, service: str, known: set[str]) -> dict[str, tuple[object, str]]:
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read config file {path}: {exc.strerror}",
            reason="CONFIG_FILE_UNREADABLE",
            metadata={"path": str(path)},
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(
            f"config file {path} is not valid TOML: {exc}",
            reason="BAD_CONFIG_FILE",
            metadata={"path": str(path)},
        ) from None
    raw: dict[str, tuple[object, str]] = {}
    for table in ("common", service):
        section = doc.get(table, {})
        if not isinstance(section, dict):
            raise InvalidArgument(
                f"config file {path}: [{table}] must be a table",
                reason="BAD_CONFIG_FILE",
                metadata={"path": str(path), "table": table},
            )
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in known:
                raise InvalidArgument(
                    f"config file {path}: unknown key {key!r} in [{table}]",
                    reason="UNKNOWN_CONFIG_KEY",
                    metadata={"path": str(path), "table": table, "field": key},
                )
            raw[name] = (value, f"file {path} [{table}]")
    return raw


def load_config(
    cls: type[C],
    service: str,
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> C:
    """Build ``cls`` for ``service`` from defaults < TOML file < env vars < flags.

    ``argv`` defaults to ``sys.argv[1:]`` and ``environ`` to :data:`os.environ`; ``config_file``
    overrides both ``--config`` and ``$VGPUSIM_CONFIG``.  ``--help`` and unknown flags exit through
    argparse as usual; every bad value raises :class:`InvalidArgument`.
    """
    env = os.environ if environ is None else environ
    specs = _fields(cls)
    known = {f.name for f, _ in specs}
    args = vars(build_parser(cls, service).parse_args(sys.argv[1:] if argv is None else list(argv)))
    file_arg = config_file or args.pop("config", None) or env.get(ENV_CONFIG_FILE)
    from_file = _read_file(Path(file_arg), service, known) if file_arg else {}
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for f, ftype in specs:
        source = "default"
        flag_value = args.get(f.name)
        if flag_value is not None:
            source = f"flag {_flag(f.name)}"
            value = flag_value if ftype is bool else _from_text(f.name, ftype, str(flag_value), source)
        elif env_var(service, f.name) in env:
            source = f"env {env_var(service, f.name)}"
            value = _from_text(f.name, ftype, env[env_var(service, f.name)], source)
        elif f.name in from_file:
            raw, source = from_file[f.name]
            value = _from_toml(f.name, ftype, raw, source, Path(file_arg or ".").parent)
        elif "env_default" in f.metadata:
            make: Callable[[Mapping[str, str]], object] = f.metadata["env_default"]
            value = make(env)
        else:
            continue
        values[f.name] = value
        sources[f.name] = source
    try:
        return cls(**values)
    except InvalidArgument as exc:
        name = exc.metadata.get("field", "")
        if name not in sources or "source" in exc.metadata:
            raise
        meta = {**exc.metadata, "source": sources[name]}
        raise type(exc)(f"{exc.message} (from {sources[name]})", reason=exc.reason, metadata=meta) from None


def config_as_dict(config: DataclassInstance) -> dict[str, object]:
    """The config as JSON-ready values (paths and tuples turned into strings and lists)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = (
            str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        )
    return out
