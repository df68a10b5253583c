#!/usr/bin/env bash
# One Apache Kafka node in KRaft mode (combined broker + controller), run from Kafka's Maven
# Central jars with the machine's Java. The local stack and the failure-injection harness both
# start their nodes through this script, so a node is configured in one place only.
#
#   deploy/kafka/node.sh version
#       Prints the Apache Kafka version the script runs.
#   deploy/kafka/node.sh fetch
#       Fetches Kafka's jars once into $SAGA_CACHE_DIR/kafka-$KAFKA_VERSION/libs (Maven) and
#       prints that folder.
#   deploy/kafka/node.sh run <cluster-dir> <node-id> <node-count> <base-port>
#       Writes <cluster-dir>/node-<id>/server.properties, formats the node's storage the first
#       time (every node of a cluster with the cluster id in <cluster-dir>/cluster.id), then
#       replaces itself with the node's JVM, so the caller's process id is the node's.
#
# Ports: node i listens for clients on base-port + 2(i-1) and for its controller quorum on the
# port after that; with base port 9092 and three nodes: 9092/9093, 9094/9095, 9096/9097.
# Replication: with n nodes, topics and the internal topics get min(n, 3) replicas and
# min.insync.replicas of one less (at least 1), so a three-node cluster survives one node down.
#
# Settings (environment): KAFKA_VERSION (default: the pinned version below), SAGA_CACHE_DIR (default
# ~/.cache/saga-platform), KAFKA_HEAP (default 512m, per node), JAVA (default: java on PATH).
#
# Security: KAFKA_SECURITY=plaintext (default) or sasl_ssl. With sasl_ssl the client listener is
# SASL_SSL, the brokers talk to each other over it too, and no plaintext client listener exists:
#   KAFKA_TLS_DIR         ca.pem and broker.pem (the broker's key and certificate, signed by that
#                         CA for 127.0.0.1 and localhost), as deploy/kafka/tls.sh makes them
#   KAFKA_SASL_USERS      user:password[,user:password...], the clients' accounts; each gets
#                         SCRAM-SHA-512 credentials (stored in the cluster's metadata when the
#                         storage is first formatted) and a PLAIN account
#   KAFKA_BROKER_PASSWORD the password of the brokers' own account, `broker`
# The controller listener stays plaintext on 127.0.0.1 (the quorum's own traffic).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The pinned Apache Kafka version; compose.kafka.yml and deploy/k8s use the same image tag.
: "${KAFKA_VERSION:=4.1.1}"
: "${SAGA_CACHE_DIR:=$HOME/.cache/saga-platform}"
: "${KAFKA_HEAP:=512m}"
: "${JAVA:=java}"
KAFKA_HOME="$SAGA_CACHE_DIR/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"

die() { echo "node.sh: $*" >&2; exit 1; }

fetch() {
  if [[ -f "$LIBS/.complete" ]]; then echo "$LIBS"; return; fi
  command -v mvn >/dev/null || die "mvn not found; Apache Kafka is fetched with Maven (apt-get install maven)"
  mkdir -p "$KAFKA_HOME"
  rm -rf "$LIBS.partial"
  mvn -B -q -f "$HERE/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.partial" \
    >"$KAFKA_HOME/fetch.log" 2>&1 \
    || die "fetching Apache Kafka $KAFKA_VERSION with Maven failed; see $KAFKA_HOME/fetch.log"
  rm -rf "$LIBS"
  mv "$LIBS.partial" "$LIBS"
  touch "$LIBS/.complete"
  echo "$LIBS"
}

replication_factor() { local n=$1; ((n < 3)) && echo "$n" || echo 3; }

SECURITY="${KAFKA_SECURITY:-plaintext}"
case "$SECURITY" in
  plaintext) ;;
  sasl_ssl)
    [[ -f "${KAFKA_TLS_DIR:-}/ca.pem" && -f "${KAFKA_TLS_DIR:-}/broker.pem" ]] \
      || die "KAFKA_SECURITY=sasl_ssl needs KAFKA_TLS_DIR with ca.pem and broker.pem (deploy/kafka/tls.sh makes them)"
    [[ -n "${KAFKA_SASL_USERS:-}" ]] || die "KAFKA_SECURITY=sasl_ssl needs KAFKA_SASL_USERS (user:password,...)"
    [[ -n "${KAFKA_BROKER_PASSWORD:-}" ]] || die "KAFKA_SECURITY=sasl_ssl needs KAFKA_BROKER_PASSWORD"
    ;;
  *) die "KAFKA_SECURITY must be plaintext or sasl_ssl, not '$SECURITY'" ;;
esac

# Each account of KAFKA_SASL_USERS and the brokers' own, one `user:password` per line.
sasl_accounts() {
  echo "broker:$KAFKA_BROKER_PASSWORD"
  tr ',' '\n' <<<"$KAFKA_SASL_USERS" | sed '/^$/d'
}

# The SASL_SSL listener: TLS from PEM files, SCRAM-SHA-512 and PLAIN, the brokers logging in to
# each other as `broker` with SCRAM.
write_sasl_ssl_properties() {
  local plain_users="" account
  while IFS= read -r account; do
    plain_users+=" user_${account%%:*}=\"${account#*:}\""
  done < <(sasl_accounts)
  cat <<PROPERTIES

ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_TLS_DIR/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_TLS_DIR/ca.pem
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="$KAFKA_BROKER_PASSWORD";
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="broker" password="$KAFKA_BROKER_PASSWORD"$plain_users;
PROPERTIES
}

# StorageTool arguments storing every account's SCRAM credentials in the new cluster, one per line.
scram_format_args() {
  local account
  while IFS= read -r account; do
    printf -- '--add-scram\nSCRAM-SHA-512=[name=%s,password=%s]\n' "${account%%:*}" "${account#*:}"
  done < <(sasl_accounts)
}
min_insync() { local rf; rf=$(replication_factor "$1"); ((rf > 1)) && echo $((rf - 1)) || echo 1; }

write_properties() { # file node-id node-count base-port data-dir
  local file=$1 id=$2 count=$3 base=$4 data=$5 voters="" i rf isr
  for ((i = 1; i <= count; i++)); do
    voters+="${voters:+,}$i@127.0.0.1:$((base + 2 * (i - 1) + 1))"
  done
  rf=$(replication_factor "$count")
  isr=$(min_insync "$count")
  local port=$((base + 2 * (id - 1)))
  local client=PLAINTEXT
  [[ "$SECURITY" == sasl_ssl ]] && client=SASL_SSL
  cat >"$file" <<EOF
# Written by deploy/kafka/node.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=$client://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=$client://127.0.0.1:$port
listener.security.protocol.map=$client:$client,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=$client
log.dirs=$data
EOF
  if [[ "$SECURITY" == sasl_ssl ]]; then write_sasl_ssl_properties >>"$file"; fi
  cat >>"$file" <<EOF

auto.create.topics.enable=false
num.partitions=6
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
# A local group starts working at once instead of waiting for more members.
group.initial.rebalance.delay.ms=0

# Sized for several nodes and the platform on one 2-core machine.
num.network.threads=2
num.io.threads=2
background.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
EOF
}

run() { # cluster-dir node-id node-count base-port
  (($# == 4)) || die "usage: node.sh run <cluster-dir> <node-id> <node-count> <base-port>"
  local dir=$1 id=$2 count=$3 base=$4
  fetch >/dev/null
  local node_dir="$dir/node-$id"
  mkdir -p "$node_dir"
  # Nodes of one cluster may start at once: the first to take the lock picks the cluster id.
  exec 9>"$dir/.lock"
  flock 9
  # A cluster's storage is formatted for one quorum; a different node count needs new storage.
  if [[ -f "$dir/node-count" && "$(cat "$dir/node-count")" != "$count" ]]; then
    die "$dir holds a $(cat "$dir/node-count")-node cluster, not a $count-node one; stop it and delete $dir to start anew"
  fi
  echo "$count" >"$dir/node-count"
  if [[ ! -s "$dir/cluster.id" ]]; then
    "$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid >"$dir/cluster.id.new"
    mv "$dir/cluster.id.new" "$dir/cluster.id"
  fi
  exec 9>&-
  write_properties "$node_dir/server.properties" "$id" "$count" "$base" "$node_dir/data"
  local java_opts=(
    "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP"
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:CICompilerCount=2 -XX:ParallelGCThreads=1 -XX:ConcGCThreads=1
    -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$HERE/log4j2.xml"
  )
  if [[ ! -f "$node_dir/data/meta.properties" ]]; then
    local scram=()
    if [[ "$SECURITY" == sasl_ssl ]]; then mapfile -t scram < <(scram_format_args); fi
    "$JAVA" "${java_opts[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format \
      --ignore-formatted --cluster-id "$(cat "$dir/cluster.id")" --config "$node_dir/server.properties" \
      "${scram[@]}" \
      || die "formatting the storage of node $id failed"
  fi
  exec "$JAVA" "${java_opts[@]}" -cp "$LIBS/*" kafka.Kafka "$node_dir/server.properties"
}

case "${1:-}" in
  version) echo "$KAFKA_VERSION" ;;
  fetch) fetch ;;
  run) shift; run "$@" ;;
  *) die "usage: node.sh version | fetch | run <cluster-dir> <node-id> <node-count> <base-port>" ;;
esac
