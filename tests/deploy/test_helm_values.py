"""deploy/helm/values.yaml, validated as configuration without a cluster:

- every key we set is one Dagster's Helm chart declares (the chart's values schema, for the
  parts we use, restated as models that forbid unknown keys: a typo fails here, not at
  `helm install`);
- the instance configuration the chart renders from them (run launcher, run coordinator,
  run storage, retries, monitoring) passes Dagster's own config schemas, the K8sRunLauncher's
  from dagster-k8s;
- it agrees with deploy/dagster.yaml (same queue limits, same Postgres driver), the code
  location pyproject names, and the pinned Dagster release.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from typing import Any, Literal

import pydantic
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config_schema
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.config import pg_config

from tests.deploy.conftest import ROOT

VALUES = ROOT / "deploy" / "helm" / "values.yaml"


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)


class Image(Strict):
    repository: str
    tag: str
    pullPolicy: Literal["Always", "IfNotPresent", "Never"]


class NameRef(Strict):
    name: str
    optional: bool | None = None


class Global(Strict):
    postgresqlSecretName: str
    dagsterHome: str
    serviceAccountName: str | None = None


class Webserver(Strict):
    replicaCount: int
    image: Image


class UserDeployment(Strict):
    name: str
    image: Image
    dagsterApiGrpcArgs: list[str]
    port: int
    env: dict[str, str] | list[dict[str, Any]] | None = None
    envConfigMaps: list[NameRef] | None = None
    envSecrets: list[NameRef] | None = None
    resources: dict[str, Any] | None = None


class UserDeployments(Strict):
    enabled: bool
    deployments: list[UserDeployment] = pydantic.Field(min_length=1)


class K8sRunLauncherConfig(Strict):
    image: Image | None = None
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"]
    jobNamespace: str | None = None
    loadInclusterConfig: bool
    kubeconfigFile: str | None = None
    envConfigMaps: list[NameRef]
    envSecrets: list[NameRef]
    envVars: list[str]
    volumeMounts: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    labels: dict[str, str] | None = None
    failPodOnRunFailure: bool | None = None


class RunLauncherConfig(Strict):
    k8sRunLauncher: K8sRunLauncherConfig


class RunLauncher(Strict):
    type: Literal["K8sRunLauncher"]
    config: RunLauncherConfig


class Service(Strict):
    port: int


class PostgreSQL(Strict):
    enabled: bool
    postgresqlHost: str
    postgresqlUsername: str
    postgresqlPassword: str
    postgresqlDatabase: str
    postgresqlParams: dict[str, Any]
    postgresqlScheme: str | None = None
    service: Service


class LimitPerValue(Strict):
    applyLimitPerUniqueValue: bool


class TagLimit(Strict):
    key: str
    value: str | LimitPerValue | None = None
    limit: int


class QueuedRunCoordinatorConfig(Strict):
    maxConcurrentRuns: int | None = None
    tagConcurrencyLimits: list[TagLimit] | None = None
    dequeueIntervalSeconds: int | None = None
    dequeueNumWorkers: int | None = None
    dequeueUseThreads: bool | None = None


class RunCoordinatorConfig(Strict):
    queuedRunCoordinator: QueuedRunCoordinatorConfig


class RunCoordinator(Strict):
    enabled: bool
    type: Literal["QueuedRunCoordinator"]
    config: RunCoordinatorConfig


class Daemon(Strict):
    enabled: bool
    runCoordinator: RunCoordinator
    runRetries: dict[str, Any]
    runMonitoring: dict[str, Any]


class Telemetry(Strict):
    enabled: bool


class Values(Strict):
    global_: Global = pydantic.Field(alias="global")
    generatePostgresqlPasswordSecret: bool
    dagsterWebserver: Webserver
    user_deployments: UserDeployments = pydantic.Field(alias="dagster-user-deployments")
    runLauncher: RunLauncher
    postgresql: PostgreSQL
    dagsterDaemon: Daemon
    telemetry: Telemetry


@pytest.fixture(scope="module")
def values() -> Values:
    return Values.model_validate(yaml.safe_load(VALUES.read_text()))


def rendered_instance(v: Values) -> dict[str, Any]:
    """The dagster.yaml the chart writes into its instance ConfigMap for these values (its
    templates turn each camelCase value into the snake_case config field)."""
    k8s = v.runLauncher.config.k8sRunLauncher
    q = v.dagsterDaemon.runCoordinator.config.queuedRunCoordinator
    pg = v.postgresql
    snake = lambda d: {_snake(k): val for k, val in d.items()}  # noqa: E731
    return {
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": k8s.loadInclusterConfig,
                "image_pull_policy": k8s.imagePullPolicy,
                "job_namespace": k8s.jobNamespace or "dagster",
                "service_account_name": v.global_.serviceAccountName or "dagster",
                "instance_config_map": "dagster-instance",
                "postgres_password_secret": v.global_.postgresqlSecretName,
                "dagster_home": v.global_.dagsterHome,
                "env_config_maps": [c.name for c in k8s.envConfigMaps],
                "env_secrets": [s.name for s in k8s.envSecrets],
                "env_vars": k8s.envVars,
                "volume_mounts": k8s.volumeMounts,
                "volumes": k8s.volumes,
                "labels": k8s.labels or {},
                "fail_pod_on_run_failure": k8s.failPodOnRunFailure,
            },
        },
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                "max_concurrent_runs": q.maxConcurrentRuns,
                "dequeue_interval_seconds": q.dequeueIntervalSeconds,
                "tag_concurrency_limits": [
                    t.model_dump(exclude_none=True) for t in q.tagConcurrencyLimits or []
                ],
            },
        },
        "storage": {
            "postgres": {
                "postgres_db": {
                    "username": pg.postgresqlUsername,
                    "password": {"env": "DAGSTER_PG_PASSWORD"},
                    "hostname": pg.postgresqlHost,
                    "db_name": pg.postgresqlDatabase,
                    "port": pg.service.port,
                    "params": pg.postgresqlParams,
                    "scheme": pg.postgresqlScheme or "postgresql",
                }
            }
        },
        "run_retries": snake(v.dagsterDaemon.runRetries),
        "run_monitoring": snake(v.dagsterDaemon.runMonitoring),
        "telemetry": {"enabled": v.telemetry.enabled},
    }


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _valid(schema: Any, value: Any) -> None:
    result = validate_config(schema, value)
    assert result.success, [e.message for e in result.errors or []]


def test_values_use_only_keys_the_chart_declares(values: Values) -> None:
    assert values.runLauncher.type == "K8sRunLauncher"
    assert values.user_deployments.enabled and values.dagsterDaemon.runCoordinator.enabled


def test_a_misspelt_key_is_refused() -> None:
    raw = yaml.safe_load(VALUES.read_text())
    raw["runLauncher"]["config"]["k8sRunLauncher"]["loadInClusterConfig"] = True
    with pytest.raises(pydantic.ValidationError, match="loadInClusterConfig"):
        Values.model_validate(raw)


def test_the_rendered_instance_passes_dagsters_config_schemas(values: Values) -> None:
    from dagster_k8s import K8sRunLauncher

    inst = rendered_instance(values)
    _valid(dagster_instance_config_schema(), inst)
    _valid(K8sRunLauncher.config_type(), inst["run_launcher"]["config"])
    _valid(QueuedRunCoordinator.config_type(), inst["run_coordinator"]["config"])
    _valid(pg_config(), inst["storage"]["postgres"])


def test_values_agree_with_the_instance_file_the_code_and_the_pins(values: Values) -> None:
    inst = rendered_instance(values)
    local = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    assert inst["run_coordinator"]["config"] == local["run_coordinator"]["config"]
    assert inst["run_retries"] == local["run_retries"]
    scheme = local["storage"]["postgres"]["postgres_db"]["scheme"]
    assert inst["storage"]["postgres"]["postgres_db"]["scheme"] == scheme == "postgresql+psycopg2"
    module = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    [code] = values.user_deployments.deployments
    assert code.dagsterApiGrpcArgs == ["-m", module]
    # the chart's webserver and daemon images must run the Dagster release the code pins
    assert values.dagsterWebserver.image.tag == version("dagster")
