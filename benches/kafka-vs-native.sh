#!/usr/bin/env bash
# The Kafka listener against Spool's own: kcat producing a file of lines to
# the Kafka port, `spool produce` the same file to the native port, the same
# release build, alternated three times, data on tmpfs. A rough yardstick
# (two different clients) until librdkafka's rdkafka_performance is built
# here.
#
#   python3 -c "open('/dev/shm/lines.txt','wb').write((b'x'*999+b'\n')*500000)"
#   bash benches/kafka-vs-native.sh target/release
set -euo pipefail
B=${1:-target/release}
for run in 1 2 3; do
  for path in kafka native; do
    d=$(mktemp -d -p /dev/shm)
    fifo=$d/ready; mkfifo $fifo
    RUST_LOG=warn $B/spool-broker --data-dir $d/data --listen 127.0.0.1:0 --kafka-listen 127.0.0.1:0 > $fifo &
    pid=$!
    { read -r a; read -r k; } < $fifo
    a=${a#spool listening on }; k=${k#kafka listening on }
    $B/spool --broker $a topic create t --flush never >/dev/null 2>&1
    start=$(date +%s.%N)
    if [ $path = kafka ]; then
      kcat -b $k -P -t t -X linger.ms=5 -X batch.size=262144 -X queue.buffering.max.messages=1000000 -l /dev/shm/lines.txt
    else
      $B/spool --broker $a produce t --file /dev/shm/lines.txt 2>/dev/null
    fi
    end=$(date +%s.%N)
    n=$($B/spool --broker $a topic describe t | awk '/offsets:/ {print $4}')
    python3 -c "print('$path', 'run $run', round($n/($end-$start)), 'msgs/s', $n)"
    kill $pid; wait $pid 2>/dev/null || true
    rm -rf $d
  done
done
