#!/usr/bin/env bash
# Installs what the tests drive besides Cairn itself: the real Kafka clients of
# tests/integration/kafka_clients.rs, cargo-nextest, and the Python client (clients/python)
# with pytest and mypy for its suite. From the registries only: Debian
# for kcat (and node when the machine lacks it), PyPI for the Python clients, npm
# (tests/kafka/js/package-lock.json, registry.npmjs.org only) for kafkajs. Pinned, so a new
# client release cannot change what the tests see without a commit here. Each step is a
# no-op, or about a second, when its client is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  # Refresh the package lists only when the cached ones do not know a package.
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
command -v kcat >/dev/null || apt_install kcat
command -v npm >/dev/null || apt_install nodejs npm
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  confluent-kafka==2.16.2 kafka-python==3.0.12 pytest==9.2.0 mypy==2.4.1
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  ./clients/python
(cd tests/kafka/js && npm ci --silent --no-audit --no-fund)
