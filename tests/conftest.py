# The tidings fixtures (postgres_service, kafka_service, postgres_schema, kafka_namespace) come from the
# installed plugin (entry point pytest11), exactly as users' test suites get them.
pytest_plugins = ["pytester"]
