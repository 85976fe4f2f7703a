# The tidings fixtures (postgres_service, kafka_service, postgres_schema, event_store, kafka_namespace) come
# from the installed plugin (entry point pytest11), exactly as users' test suites get them.
import os

from hypothesis import settings

pytest_plugins = ["pytester", "tests.telemetry"]

# CI must be deterministic: the same examples on every run. Locally, hypothesis keeps exploring.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
