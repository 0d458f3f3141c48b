"""Config loading: precedence defaults < file < env < flags, type checks, errors naming the source."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vgpusim.common.config import (
    BaseServiceConfig,
    build_parser,
    config_as_dict,
    env_var,
    load_config,
    option,
)
from vgpusim.common.errors import InvalidArgument


@dataclass(frozen=True, kw_only=True)
class DemoConfig(BaseServiceConfig):
    """Config of a demo service."""

    slots: int = option(7, "vGPU slots per parent")
    tick_s: float = field(default=0.001, metadata={"help": "scheduler tick in seconds"})
    autostart: bool = option(True, "start defined devices when their parent appears")
    db: Path = field(default=Path("/var/lib/demo.sqlite3"), metadata={"help": "database file"})
    parents: tuple[str, ...] = option(("gpu0",), "parents to create")
    policy: str = option("weighted", "scheduling policy", choices=("weighted", "equal"))


def load(
    argv: list[str] | None = None, env: dict[str, str] | None = None, config_file: Path | None = None
) -> DemoConfig:
    environ = {"HOME": "/home/u", **(env or {})}
    return load_config(DemoConfig, "demo", argv or [], environ=environ, config_file=config_file)


def test_defaults() -> None:
    cfg = load()
    assert (cfg.slots, cfg.tick_s, cfg.autostart, cfg.parents, cfg.policy) == (
        7,
        0.001,
        True,
        ("gpu0",),
        "weighted",
    )
    assert cfg.state_dir == Path("/home/u/.local/state/vgpusim")
    assert (cfg.listen, cfg.tcp_listen, cfg.metrics_host, cfg.metrics_port) == ("", "", "127.0.0.1", 0)
    assert (cfg.log_level, cfg.log_format) == ("info", "json")
    assert cfg.listen_target("demo") == "unix:/home/u/.local/state/vgpusim/run/demo.sock"


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    cfg_file = tmp_path / "stack.toml"
    cfg_file.write_text(
        '[common]\nlog_level = "warning"\nmetrics_port = 9000\n'
        '[demo]\nslots = 3\ntick-s = 2\nparents = ["a", "b"]\ndb = "demo.db"\n'
        '[other]\nwhatever = 1\n'
    )  # fmt: skip
    from_file = load(config_file=cfg_file)
    assert (from_file.slots, from_file.tick_s, from_file.parents) == (3, 2.0, ("a", "b"))
    assert (from_file.log_level, from_file.metrics_port) == ("warning", 9000)
    assert from_file.db == tmp_path / "demo.db"  # relative to the file
    env = {"VGPUSIM_DEMO_SLOTS": "5", "VGPUSIM_DEMO_AUTOSTART": "off", "VGPUSIM_DEMO_PARENTS": "x, y,"}
    from_env = load(env=env, config_file=cfg_file)
    assert (from_env.slots, from_env.autostart, from_env.parents) == (5, False, ("x", "y"))
    assert from_env.log_level == "warning"
    flags = ["--slots", "6", "--autostart", "--parents", "p", "--policy", "equal", "--tick-s", "0.5"]
    from_flags = load(flags, env=env, config_file=cfg_file)
    assert (from_flags.slots, from_flags.autostart, from_flags.parents) == (6, True, ("p",))
    assert (from_flags.policy, from_flags.tick_s, from_flags.metrics_port) == ("equal", 0.5, 9000)


def test_config_file_from_flag_and_env(tmp_path: Path) -> None:
    one, two = tmp_path / "one.toml", tmp_path / "two.toml"
    one.write_text("[demo]\nslots = 1\n")
    two.write_text("[demo]\nslots = 2\n")
    assert load(env={"VGPUSIM_CONFIG": str(one)}).slots == 1
    assert load(["--config", str(two)], env={"VGPUSIM_CONFIG": str(one)}).slots == 2


def test_state_dir_sources(tmp_path: Path) -> None:
    assert load(env={"XDG_STATE_HOME": "/xdg"}).state_dir == Path("/xdg/vgpusim")
    assert load(env={"VGPUSIM_STATE_DIR": "/s", "XDG_STATE_HOME": "/xdg"}).state_dir == Path("/s")
    assert load(["--state-dir", str(tmp_path)], env={"VGPUSIM_STATE_DIR": "/s"}).state_dir == tmp_path
    assert load(env={"VGPUSIM_DEMO_STATE_DIR": "/svc"}).state_dir == Path("/svc")


@pytest.mark.parametrize(
    ("env", "field_name", "source"),
    [
        ({"VGPUSIM_DEMO_SLOTS": "many"}, "slots", "env VGPUSIM_DEMO_SLOTS"),
        ({"VGPUSIM_DEMO_TICK_S": "fast"}, "tick_s", "env VGPUSIM_DEMO_TICK_S"),
        ({"VGPUSIM_DEMO_AUTOSTART": "maybe"}, "autostart", "env VGPUSIM_DEMO_AUTOSTART"),
        ({"VGPUSIM_DEMO_DB": ""}, "db", "env VGPUSIM_DEMO_DB"),
        ({"VGPUSIM_DEMO_METRICS_PORT": "70000"}, "metrics_port", "env VGPUSIM_DEMO_METRICS_PORT"),
        ({"VGPUSIM_DEMO_LOG_FORMAT": "xml"}, "log_format", "env VGPUSIM_DEMO_LOG_FORMAT"),
    ],
)
def test_bad_env_value_names_field_and_source(env: dict[str, str], field_name: str, source: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        load(env=env)
    assert caught.value.reason == "BAD_CONFIG"
    assert caught.value.metadata["field"] == field_name
    assert caught.value.metadata["source"] == source
    assert field_name in caught.value.message and source in caught.value.message


def test_bad_flag_value() -> None:
    with pytest.raises(InvalidArgument) as caught:
        load(["--slots", "1.5"])
    assert caught.value.metadata["source"] == "flag --slots"
    with pytest.raises(InvalidArgument) as caught:
        load(["--policy", "random"])
    assert (caught.value.metadata["field"], caught.value.metadata["source"]) == ("policy", "flag --policy")


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ("[demo]\nslots = '3'\n", "slots"),
        ("[demo]\nslots = true\n", "slots"),
        ("[demo]\nautostart = 1\n", "autostart"),
        ("[demo]\nparents = 'a,b'\n", "parents"),
        ("[demo]\nparents = [1]\n", "parents"),
        ("[common]\nmetrics_port = -5\n", "metrics_port"),
    ],
)
def test_bad_file_value(tmp_path: Path, body: str, field_name: str) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(body)
    with pytest.raises(InvalidArgument) as caught:
        load(config_file=cfg_file)
    assert caught.value.metadata["field"] == field_name
    assert caught.value.metadata["source"].startswith(f"file {cfg_file}")


def test_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[demo]\nslotz = 3\n")
    with pytest.raises(InvalidArgument) as caught:
        load(config_file=bad)
    assert caught.value.reason == "UNKNOWN_CONFIG_KEY" and caught.value.metadata["field"] == "slotz"
    bad.write_text("[demo\n")
    with pytest.raises(InvalidArgument) as caught:
        load(config_file=bad)
    assert caught.value.reason == "BAD_CONFIG_FILE"
    with pytest.raises(InvalidArgument) as caught:
        load(config_file=tmp_path / "missing.toml")
    assert caught.value.reason == "CONFIG_FILE_UNREADABLE"


def test_cross_field_checks() -> None:
    with pytest.raises(InvalidArgument) as caught:
        load(["--tls-cert", "/c.pem"])
    assert caught.value.metadata["field"] == "tls_key"
    with pytest.raises(InvalidArgument):
        BaseServiceConfig(tls_client_ca="/ca.pem")


def test_help_documents_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load(["--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(DemoConfig):
        assert "--" + f.name.replace("_", "-") in out
        assert env_var("demo", f.name) in out
    assert "vGPU slots per parent (default: 7)" in out
    assert "--no-autostart" in out and "{weighted,equal}" in out


def test_unknown_flag_exits_like_argparse() -> None:
    with pytest.raises(SystemExit) as caught:
        load(["--no-such-flag", "1"])
    assert caught.value.code == 2


def test_field_declarations_are_checked() -> None:
    @dataclass(frozen=True)
    class NoHelp:
        x: int = 1

    @dataclass(frozen=True)
    class BadType:
        x: list[int] = field(default_factory=list, metadata={"help": "x"})

    with pytest.raises(TypeError, match="help"):
        build_parser(NoHelp, "demo")
    with pytest.raises(TypeError, match="unsupported"):
        build_parser(BadType, "demo")
    with pytest.raises(TypeError, match="not a dataclass"):
        build_parser(int, "demo")


def test_config_as_dict_is_json_ready() -> None:
    data = config_as_dict(load())
    assert json.loads(json.dumps(data))["parents"] == ["gpu0"]
    assert data["db"] == "/var/lib/demo.sqlite3"


def test_direct_construction_makes_state_dir_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert BaseServiceConfig(state_dir=Path("rel")).state_dir == tmp_path / "rel"
    monkeypatch.setenv("VGPUSIM_STATE_DIR", str(tmp_path / "env"))
    assert BaseServiceConfig().state_dir == tmp_path / "env"
