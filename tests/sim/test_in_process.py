"""The simulator also works under ``moto.mock_aws`` (no server): same hooks, same behaviour."""
from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

import ecssim
from ecssim import FakeClock, Simulator
from ecssim.seed import ServiceSpec, seed


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # talk to mock_aws, not to the session's server
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "eu-central-1"}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        sim = ecssim.install(Simulator(clock=FakeClock(), seed=3))
        try:
            yield sim
        finally:
            ecssim.uninstall()


def test_stop_and_replace_under_mock_aws(in_process: Simulator) -> None:
    sim = in_process
    seed(sim, "qa", [ServiceSpec("api", desired=1)], region="eu-central-1")
    ecs = boto3.client("ecs", region_name="eu-central-1")
    [arn] = ecs.list_tasks(cluster="qa", serviceName="api")["taskArns"]
    ecs.stop_task(cluster="qa", task=arn)
    assert ecs.describe_tasks(cluster="qa", tasks=[arn])["tasks"][0]["lastStatus"] == "RUNNING"
    sim.advance(15)
    [new] = ecs.list_tasks(cluster="qa", serviceName="api")["taskArns"]
    assert new != arn
    assert ecs.describe_tasks(cluster="qa", tasks=[new])["tasks"][0]["lastStatus"] == "RUNNING"
    assert sim.calls.of("StopTask")[0].region == "eu-central-1"
