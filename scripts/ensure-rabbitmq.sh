#!/usr/bin/env bash
# ensure-rabbitmq.sh: make sure a RabbitMQ broker answers AMQP on 127.0.0.1:5672.
# Installs rabbitmq-server from Debian's packages when it is missing, starts it when it is installed
# but not running, and waits until it accepts connections. Never stops a running broker.
set -euo pipefail

port=${RABBITKIT_AMQP_PORT:-5672}
say() { echo "ensure-rabbitmq: $*" >&2; }

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && printf 'AMQP\x00\x00\x09\x01' >&3 && head -c 8 <&3 >/dev/null" 2>/dev/null; }
ready() { answers && rabbitmqctl -q status >/dev/null 2>&1; }

if answers; then
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  say "rabbitmq-server is not installed; installing it with apt-get"
  if [ "$(id -u)" != 0 ]; then say "need root to install rabbitmq-server"; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's post-install script may try to start the service; without an init system that fails
  # harmlessly, and we start the broker below.
  apt-get install -y -qq rabbitmq-server >/dev/null || apt-get install -y rabbitmq-server
fi

if ! answers; then
  say "starting rabbitmq-server -detached"
  rabbitmq-server -detached >/dev/null 2>&1 || true
fi

for _ in $(seq 1 120); do
  if ready; then
    say "RabbitMQ answers on 127.0.0.1:$port"
    exit 0
  fi
  sleep 1
done
say "RabbitMQ did not start within 120 s; see /var/log/rabbitmq/"
exit 1
