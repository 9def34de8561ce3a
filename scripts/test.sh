#!/usr/bin/env bash
# Install everything the tests need, start the services they use, run the whole suite.
# This is the README's test command (`make test`); .ci/run calls it and nothing else.
#
# Two runs: everything but the WeChat tests in this environment (the worker's: `.[test]`),
# then the WeChat tests (marker `wechat`) in .venv-wechat, a virtual environment on top
# of this one that holds only the `wechat` extra and its pins (urllib3<2, pyee<12), so
# those never downgrade anything here. Arguments go to both runs, e.g. `-x -q -k discord`;
# a run that selects no tests (pytest's exit status 5) is not a failure unless both do.
set -euo pipefail
cd "$(dirname "$0")/.."

# A CJK font, so grounding labels such as 击掌 draw as glyphs (Debian/Ubuntu package).
if ! ls /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "scripts/test.sh: installing the system package fonts-wqy-zenhei (apt-get), a CJK font, so the grounding-label test can draw 击掌 as glyphs" >&2
    apt-get install -y -q fonts-wqy-zenhei >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-wqy-zenhei >/dev/null; } \
      || echo "warning: could not install fonts-wqy-zenhei; the CJK label test will fail under CI" >&2
  else
    echo "note: install fonts-wqy-zenhei for the CJK label test (sudo apt-get install fonts-wqy-zenhei)" >&2
  fi
fi

# Chromium, for the web page's browser tests (Playwright drives the system's; its own download cannot work here).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "scripts/test.sh: installing the system package chromium (apt-get) for the web page's browser tests" >&2
    apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null; } \
      || echo "warning: could not install chromium; the web page tests will fail under CI" >&2
  else
    echo "note: install chromium for the web page tests (sudo apt-get install chromium)" >&2
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
python3 -m pip install -q -e '.[test]'
if python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("wechaty") is None)' 2>/dev/null; then
  echo "note: wechaty is installed in $(command -v python3)'s environment; the WeChat extra belongs in .venv-wechat only" \
       "(pip uninstall wechaty wechaty-puppet-service wechaty-grpc wechaty-puppet; pip install 'urllib3>=2' 'pyee>=12')" >&2
fi

# The WeChat extra in its own venv. --system-site-packages reuses everything installed
# above (torch, pytest, ...); pip puts only what the extra needs, or pins differently
# (urllib3<2, pyee<12, wechaty...), into the venv, where it shadows the main environment's.
python3 -m venv --system-site-packages .venv-wechat
.venv-wechat/bin/python -m pip install -q -e '.[wechat]'

# A -m EXPR among the arguments is combined with each run's own marker expression.
args=() marks=""
while [ $# -gt 0 ]; do
  case "$1" in
    -m) marks="${2:-}"; shift 2 || shift ;;
    -m*) marks="${1#-m}"; marks="${marks#=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
main_marks="not wechat" wechat_marks="wechat"
if [ -n "$marks" ]; then main_marks="($marks) and not wechat" wechat_marks="($marks) and wechat"; fi

status=0
python3 -m pytest -m "$main_marks" ${args[@]+"${args[@]}"} || status=$?
wechat_status=0
# The WeChat tests skip where wechaty is missing: make sure it is not missing here.
if .venv-wechat/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("wechaty") is None)'; then
  .venv-wechat/bin/python -m pytest -m "$wechat_marks" ${args[@]+"${args[@]}"} || wechat_status=$?
else
  echo "error: wechaty is not importable in .venv-wechat" >&2
  wechat_status=1
fi

# 5: no tests collected (e.g. a -k filter that matches only the other run's tests).
if [ "$status" = 5 ] && [ "$wechat_status" != 5 ]; then status=0; fi
if [ "$wechat_status" = 5 ]; then wechat_status=0; fi
if [ "$status" = 0 ]; then status=$wechat_status; fi
exit "$status"
