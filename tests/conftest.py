# The tidings fixtures (postgres_service, kafka_service, postgres_schema, event_store, kafka_namespace) come
# from the installed plugin (entry point pytest11), exactly as users' test suites get them.
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tidings.devservices import LocalKafka

pytest_plugins = ["pytester", "tests.telemetry"]

# CI must be deterministic: the same examples on every run. Locally, hypothesis keeps exploring.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def own_broker() -> Iterator[LocalKafka]:
    """A broker of this test's own, which it may stop and start again."""
    broker = LocalKafka()
    broker.start()
    yield broker
    broker.stop(keep_logs=False)
