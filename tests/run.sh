#!/usr/bin/env bash
# The one test command (README): installs what the tests need when it is missing (redis-server,
# redis-sentinel, nginx, openssl, Chromium and its WebDriver, promtool, docker-compose and
# kubernetes-validate for offline validation, schemathesis and openapi-python-client, cargo-fuzz),
# then runs every test and every fuzz target for a bounded time. The browser tests fail, not skip, when Chromium cannot run. Tests
# start their own redis-server processes on free loopback ports; nothing needs to be running
# beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# promtool: checks and unit-tests the alert rules.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# npm: TypeScript (tsc) type-checks the browser client's declarations and the README example.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Offline Kubernetes schema validation, and the independent Standard Webhooks verifier of the
# webhook tests (PyPI).
if ! python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
  echo "installing: kubernetes-validate"
  python3 -m pip install -q kubernetes-validate
fi
if ! python3 -c "import standardwebhooks" >/dev/null 2>&1; then
  echo "installing: standardwebhooks"
  python3 -m pip install -q standardwebhooks
fi
# The email tests' SMTP server (PyPI).
if ! python3 -c "import aiosmtpd" >/dev/null 2>&1; then
  echo "installing: aiosmtpd"
  python3 -m pip install -q aiosmtpd
fi

# tsc and React's types for tests/typescript.rs, in target/ (pinned majors).
if [ ! -x target/ts-check/node_modules/.bin/tsc ]; then
  echo "installing: typescript, @types/react (npm)"
  npm install --silent --no-audit --no-fund --prefix target/ts-check typescript@5 @types/react@18 >/dev/null
fi

# schemathesis (property-based API tests) and openapi-python-client (a client generated from
# /openapi.json) for tests/openapi.rs, in a virtualenv of their own under target/ (pinned majors).
if [ ! -x target/py-api/bin/schemathesis ] || [ ! -x target/py-api/bin/openapi-python-client ]; then
  echo "installing: schemathesis, openapi-python-client (PyPI, into target/py-api)"
  python3 -m venv target/py-api
  target/py-api/bin/pip install -q "schemathesis>=4,<5" "openapi-python-client>=0.29,<0.30"
fi

# The property-based API run prints its summary (cases tried, failures): it runs on its own with
# its output shown, the rest without it.
cargo test --all-targets "$@" -- --skip schemathesis_finds_no_failure
cargo test --test openapi "$@" -- --exact schemathesis_finds_no_failure --nocapture

# Every fuzz target for a bounded time, from the checked-in corpus (tests/fuzz/README.md);
# FUZZ_SECS=0 skips it (the corpus itself still runs in `cargo test`, fuzzing::tests).
if [ "${FUZZ_SECS:-30}" != 0 ]; then
  bash tests/fuzz/run.sh
fi
