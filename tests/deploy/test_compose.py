"""Cross-reference checks of docker-compose.yml that neither validator makes.

check-jsonschema checks the shape against the compose spec and docker-compose 1.29.2 checks its
own schema plus `depends_on`/`ipc` names (scripts/check-compose.sh runs both); this module checks
what a reviewer would: every reference names a defined service or volume, every service has a
healthcheck (the vgpusim ones through `vgpusim.common.healthcheck <svc>`), no two services publish
the same host port and only on 127.0.0.1, the hardening settings, the start order, and that the
Prometheus and Grafana files under deploy/ agree with the compose file.

Glossary: *core service* = one of the four vgpusim services; *published port* = a `ports:` entry,
host side.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"

CORE_SERVICES = ("iommu_type2", "vgpu_bus", "gfx_host", "qemu_frontend")
STATE_DIR = "/run/vgpusim"
DATASOURCE_UID = "vgpusim-prom"
# Start order: a service waits for the health of these (see docs/architecture.md, end-to-end path).
EXPECTED_DEPENDENCIES = {
    "iommu_type2": set(),
    "vgpu_bus": set(),
    "gfx_host": {"iommu_type2", "vgpu_bus"},
    "qemu_frontend": {"iommu_type2", "vgpu_bus", "gfx_host"},
}


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return YAML(typ="safe", pure=True).load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """`depends_on` in either syntax, as {service: condition}."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def referenced_services(service: dict[str, Any]) -> set[str]:
    refs = set(dependencies(service))
    for key in ("ipc", "network_mode", "pid"):
        value = service.get(key, "")
        if isinstance(value, str) and value.startswith("service:"):
            refs.add(value.removeprefix("service:"))
    refs.update(v.split(":")[0] for v in service.get("volumes_from", []))
    return refs


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Volume entries as (source, target, read_only), short or long syntax."""
    result = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            result.append((source, target, len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            result.append((entry.get("source", ""), entry["target"], bool(entry.get("read_only"))))
    return result


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, str]]:
    """Published ports as (host_ip, host_port, protocol); '' host_ip means all interfaces."""
    result = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            if "published" in entry:
                result.append(
                    (entry.get("host_ip", ""), int(entry["published"]), entry.get("protocol", "tcp"))
                )
            continue
        spec, _, protocol = str(entry).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            result.append((parts[0], int(parts[1]), protocol or "tcp"))
        elif len(parts) == 2:
            result.append(("", int(parts[0]), protocol or "tcp"))
        # A bare container port publishes on a random host port: reported by the loopback test.
        else:
            result.append(("", 0, protocol or "tcp"))
    return result


def metrics_env(name: str, field: str) -> str:
    """The variable that sets a config field of a service (vgpusim.common.config.env_var)."""
    return f"VGPUSIM_{name.upper()}_{field.upper()}"


def metrics_port(services: dict[str, dict[str, Any]], name: str) -> int:
    return int(services[name]["environment"][metrics_env(name, "metrics_port")])


def test_common_subset(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "docker-compose 1.29.2 and the spec disagree on `version`"
    assert "name" not in compose, "docker-compose 1.29.2 rejects a top-level `name`"
    assert set(compose) <= {"services", "volumes", "networks", "configs", "secrets"} | {
        k for k in compose if k.startswith("x-")
    }


def test_core_services_present(services: dict[str, dict[str, Any]]) -> None:
    assert set(CORE_SERVICES) <= set(services)


def test_references_name_defined_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        missing = referenced_services(service) - set(services)
        assert not missing, f"{name} refers to undefined services {sorted(missing)}"


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dep, condition in dependencies(service).items():
            assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
            assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name, expected in EXPECTED_DEPENDENCIES.items():
        assert set(dependencies(services[name])) == expected, name


def test_no_dependency_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in referenced_services(services[name]):
            visit(dep, (*path, name))
        done.add(name)

    for name in services:
        visit(name, ())


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} has its healthcheck disabled"
        test = check["test"]
        assert isinstance(test, list), f"{name}: {test}"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: {test}"
        # Podman 4.3.1 re-splits CMD arguments on spaces (shared/reference/containers.md).
        if test[0] == "CMD":
            assert not any(" " in arg for arg in test[1:]), f"{name}: use CMD-SHELL: {test}"
        assert "start_interval" not in check, "docker-compose 1.29.2 rejects start_interval"


@pytest.mark.parametrize("name", CORE_SERVICES)
def test_core_service_runs_its_server(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    assert service["image"] == services[CORE_SERVICES[0]]["image"], "one image for all services"
    assert service["command"] == ["python", "-m", f"vgpusim.{name}.server", "--state-dir", STATE_DIR]
    assert service["healthcheck"]["test"] == [
        "CMD-SHELL",
        f"python -m vgpusim.common.healthcheck {name}",
    ]
    assert service["environment"]["VGPUSIM_STATE_DIR"] == STATE_DIR
    assert "profiles" not in service


@pytest.mark.parametrize("name", CORE_SERVICES)
def test_core_service_hardening(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    assert service["init"] is True, "Python as PID 1 ignores SIGTERM"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert not service.get("cap_add")
    assert not service.get("privileged")
    assert service.get("ipc") != "host"
    assert "/tmp" in service["tmpfs"]
    assert service["restart"] == "unless-stopped"
    assert re.fullmatch(r"\d+(ms|s|m)", service["stop_grace_period"])
    assert service["shm_size"]


@pytest.mark.parametrize("name", CORE_SERVICES)
def test_core_service_shares_sockets_and_shm(services: dict[str, dict[str, Any]], name: str) -> None:
    targets = {target: source for source, target, _ in mounts(services[name])}
    assert targets.get(f"{STATE_DIR}/run") == "sockets"
    assert targets.get(f"{STATE_DIR}/shm") == "shm"
    # The state dir itself must be writable in a read-only container.
    assert STATE_DIR in targets or STATE_DIR in services[name].get("tmpfs", [])


def test_shm_volume_is_tmpfs_without_size(compose: dict[str, Any]) -> None:
    opts = compose["volumes"]["shm"]["driver_opts"]
    assert opts["type"] == "tmpfs"
    assert opts["device"] == "tmpfs"
    # podman 4.3.1 rejects size= on a tmpfs volume.
    assert "size=" not in opts.get("o", "")


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, target, read_only in mounts(service):
            if not source:
                continue
            if source.startswith(("/", ".", "~")):
                assert (ROOT / source).exists(), f"{name}: bind source {source} missing"
                assert read_only, f"{name}: bind mount {source}:{target} should be read-only"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_published_ports_are_loopback_and_unique(services: dict[str, dict[str, Any]]) -> None:
    seen: dict[tuple[int, str], str] = {}
    for name, service in services.items():
        for host_ip, host_port, protocol in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port} on {host_ip or 'all'}"
            assert host_port, f"{name} publishes a random host port"
            key = (host_port, protocol)
            assert key not in seen, f"{name} and {seen.get(key)} both publish {host_port}/{protocol}"
            seen[key] = name


@pytest.mark.parametrize("name", CORE_SERVICES)
def test_metrics_port_is_published(services: dict[str, dict[str, Any]], name: str) -> None:
    service = services[name]
    # Inside the container the endpoint must listen on all interfaces to be reachable at all.
    assert service["environment"][metrics_env(name, "metrics_host")] == "0.0.0.0"
    port = metrics_port(services, name)
    assert ("127.0.0.1", port, "tcp") in published_ports(service)


def test_metrics_variables_match_the_config_loader() -> None:
    from vgpusim.common import config

    fields = {f.name for f in dataclasses.fields(config.BaseServiceConfig)}
    assert {"metrics_host", "metrics_port", "state_dir"} <= fields
    for name in CORE_SERVICES:
        assert config.env_var(name, "metrics_port") == metrics_env(name, "metrics_port")


def test_observability_profile(services: dict[str, dict[str, Any]]) -> None:
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
    for name, service in services.items():
        if name not in {"prometheus", "grafana"}:
            assert "profiles" not in service, f"{name} would not start by default"


def test_prometheus_scrapes_every_core_service(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(PROMETHEUS_FILE)
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    expected = {f"{name}:{metrics_port(services, name)}" for name in CORE_SERVICES}
    assert targets == expected


def test_grafana_datasource_has_fixed_uid() -> None:
    files = sorted(GRAFANA_DATASOURCES.glob("*.y*ml"))
    assert files, "no Grafana datasource provisioning file"
    sources = [ds for f in files for ds in load_yaml(f)["datasources"]]
    prom = [ds for ds in sources if ds["type"] == "prometheus"]
    assert [ds["uid"] for ds in prom] == [DATASOURCE_UID]
    assert prom[0]["url"] == "http://prometheus:9090"
