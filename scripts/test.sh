#!/usr/bin/env bash
# Install everything the tests need, start the services they use, run the whole suite.
# This is the README's test command (`make test`); .ci/run calls it and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

# A CJK font, so grounding labels such as 击掌 draw as glyphs (Debian/Ubuntu package).
if ! ls /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q fonts-wqy-zenhei >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-wqy-zenhei >/dev/null; } \
      || echo "warning: could not install fonts-wqy-zenhei; the CJK label test will fail under CI" >&2
  else
    echo "note: install fonts-wqy-zenhei for the CJK label test (sudo apt-get install fonts-wqy-zenhei)" >&2
  fi
fi

# PostgreSQL and Redis on loopback, started when they are installed but stopped.
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi

# torch first and pinned: on CPU machines this is the CPU build; anything looser pulls CUDA wheels.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test,wechat]'

exec python3 -m pytest "$@"
