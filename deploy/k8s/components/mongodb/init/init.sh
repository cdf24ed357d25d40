#!/bin/bash
# The mongodb-init Job: initiate replica set rs0 if it is not yet, then
# apply users.json (setup.js) through the replica set, on whichever member
# is primary. Idempotent; bounded by the Job's activeDeadlineSeconds.
set -euo pipefail
members="mongodb-0.mongodb:27017,mongodb-1.mongodb:27017,mongodb-2.mongodb:27017"
rs_uri="mongodb://${members}/admin?replicaSet=rs0&serverSelectionTimeoutMS=10000"
# Only to initiate a set that has no configuration yet: no replica set
# exists then, so the first member is addressed directly.
first_uri="mongodb://mongodb-0.mongodb:27017/admin?directConnection=true&serverSelectionTimeoutMS=5000"
user=$(cat /run/secrets/root/username)
pass=$(cat /run/secrets/root/password)
# Extra client flags (the mongodb-tls component sets --tls --tlsCAFile ...).
read -r -a tls <<< "${MONGO_TLS_ARGS:-}"
client() { mongosh --quiet "${tls[@]}" --authenticationDatabase admin -u "$user" -p "$pass" "$@"; }

until client "$rs_uri" --eval 'quit(db.hello().isWritablePrimary ? 0 : 1)' >/dev/null 2>&1; do
  state=$(client "$first_uri" --eval 'try { print(rs.status().ok ? "initiated" : "unknown") } catch (e) { print(e.codeName || e.message) }' 2>/dev/null || echo unreachable)
  if [ "$state" = NotYetInitialized ]; then
    echo "replica set rs0 has no configuration: initiating it from mongodb-0"
    client "$first_uri" --eval 'rs.initiate({ _id: "rs0", members: [0, 1, 2].map((i) => ({ _id: i, host: `mongodb-${i}.mongodb:27017` })) })'
  else
    echo "waiting for a primary of rs0 (mongodb-0: $state)"
  fi
  sleep 5
done
echo "primary found through the replica set; applying users.json"
client "$rs_uri" --file /scripts/setup.js
