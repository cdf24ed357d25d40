#!/usr/bin/env bash
# Proves that policy_check.py's checks fail on the mistakes they were
# written for:
#  1. the manifests, workflows and Dockerfile as they were before issue #25
#     (tests/before-25/: rendered overlays and copies) must make every check
#     listed in EXPECT fire;
#  2. mutations.py puts single mistakes back into today's rendered overlays
#     (RENDERED_DIR, from validate.sh's render step) and requires the
#     matching check to fire, after passing before the mutation.
#   selftest.sh RENDERED_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PY:-python3}
before=$here/before-25
EXPECT=(
  hpa-owns-replicas config-not-generated metrics-on-api-port entra-audience
  mongodb-client-certs mongodb-init-primary job-bounds replica-spread startup-probe cert-renewal
  mongodb-least-privilege acme-http01-blocked ingress-nginx
  fusionauth-kickstart fusionauth-db-superuser image-uid fusionauth-public-paths
  backup-offsite image-digest dockerfile-digest
  cd-trust azure-identity-per-env acr-roles rollout-safety image-supply-chain store-url-shape
)
echo "== the pre-#25 deployment must trip: ${EXPECT[*]}"
"$PY" "$here/../policy_check.py" --expect "$(IFS=,; echo "${EXPECT[*]}")" \
  --workflows "$before/workflows" --dockerfile "$before/arca.Dockerfile" "$before"/*.yaml
echo "== the rollout's strict mode refuses images whose digest is pending"
if strict=$("$PY" "$here/../policy_check.py" --strict-digests --pending-digests "$here/../../../deploy/images-pending-digest.txt" "$1"/*overlays-prod.yaml); then
  echo "FAIL: --strict-digests accepted the prod overlay although images are pending"; exit 1
fi
grep -q 'ERROR \[image-digest\].*listed as pending' <<< "$strict" || { echo "FAIL: --strict-digests failed for another reason:"; echo "$strict"; exit 1; }
echo "ok   --strict-digests refuses the pending digests"
echo "== single mistakes put back into today's overlays"
"$PY" "$here/mutations.py" "$1" "$here/../../../.github/workflows"
