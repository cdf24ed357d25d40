#!/usr/bin/env python3
"""Mutation tests of policy_check.py: take today's rendered overlays (which
pass), put one known mistake back, and require the matching check to fire.
Covers the mistakes that the pre-#25 manifests (tests/before-25/) do not
contain, and proves each check also fires on the current layout.

  mutations.py RENDERED_DIR [WORKFLOWS_DIR]
      (the *.yaml that validate.sh's render step wrote; .github/workflows)
"""
import copy
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import policy_check as pc  # noqa: E402

CASES = []


def case(bundle, check_id):
    def deco(fn):
        CASES.append((fn.__name__, bundle, check_id, fn))
        return fn
    return deco


def obj(b, kind, name):
    d = b.get(kind, name)
    assert d is not None, f"{kind}/{name} not in {b.name}"
    return d


def arca(b):
    return next(c for c in obj(b, "Deployment", "arca")["spec"]["template"]["spec"]["containers"] if c["name"] == "arca")


@case("prod", "metrics-exposed")
def route_to_metrics_port(b):
    svc = obj(b, "Service", "arca")
    svc["spec"]["ports"].append({"name": "metrics", "port": 9090, "targetPort": "metrics"})
    for r in b.of("HTTPRoute", "Ingress"):
        for rule in r["spec"].get("rules") or []:
            for br in rule.get("backendRefs") or []:
                if br.get("name") == "arca":
                    br["port"] = 9090
            for p in ((rule.get("http") or {}).get("paths")) or []:
                if p["backend"]["service"]["name"] == "arca":
                    p["backend"]["service"]["port"] = {"name": "metrics"}


@case("prod", "metrics-exposed")
def metrics_port_open_to_ingress(b):
    np = obj(b, "NetworkPolicy", "arca-ingress")
    for rule in np["spec"]["ingress"]:
        rule["ports"] = [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 9090}]


@case("prod", "store-url-in-env")
def store_url_from_secret_env(b):
    c = arca(b)
    c["env"] = [e for e in c["env"] if e["name"] != "ARCA_STORE__URL_FILE"]
    c["env"].append({"name": "ARCA_STORE__URL", "valueFrom": {"secretKeyRef": {"name": "mongodb-arca", "key": "uri"}}})


@case("prod", "store-url-in-env")
def store_url_file_not_a_secret(b):
    c = arca(b)
    for e in c["env"]:
        if e["name"] == "ARCA_STORE__URL_FILE":
            e["value"] = "/tmp/url"


@case("dev", "metrics-on-api-port")
def metrics_on_api_port(b):
    c = arca(b)
    c["env"].append({"name": "ARCA_METRICS__LISTEN", "value": "0.0.0.0:8080"})


@case("prod", "hpa-owns-replicas")
def replicas_with_hpa(b):
    obj(b, "Deployment", "arca")["spec"]["replicas"] = 3


def sts(b, name):
    return obj(b, "StatefulSet", name)


@case("prod", "mongodb-client-certs")
def members_certificate_without_client_auth(b):
    c = obj(b, "Certificate", "mongodb-tls")
    c["spec"]["usages"] = ["digital signature", "key encipherment", "server auth"]


@case("prod", "mongodb-client-certs")
def mongod_demands_client_certificates(b):
    c = sts(b, "mongodb")["spec"]["template"]["spec"]["containers"][0]
    c["args"] = [a for a in c["args"] if a != "--tlsAllowConnectionsWithoutCertificates"]


@case("prod", "mongodb-init-primary")
def init_job_talks_to_mongodb_0(b):
    cm = next(d for d in b.of("ConfigMap") if "init.sh" in (d.get("data") or {}))
    cm["data"]["init.sh"] = cm["data"]["init.sh"].replace("replicaSet=rs0", "directConnection=true")


@case("prod", "job-bounds")
def job_without_ttl(b):
    del obj(b, "Job", "mongodb-init")["spec"]["ttlSecondsAfterFinished"]


@case("prod", "replica-spread")
def members_may_share_a_zone(b):
    del sts(b, "mongodb")["spec"]["template"]["spec"]["topologySpreadConstraints"]


@case("prod", "startup-probe")
def mongod_without_startup_probe(b):
    del sts(b, "mongodb")["spec"]["template"]["spec"]["containers"][0]["startupProbe"]


@case("prod", "cert-renewal")
def no_tls_reload_sidecar(b):
    ps = sts(b, "mongodb")["spec"]["template"]["spec"]
    ps["containers"] = [c for c in ps["containers"] if c["name"] != "tls-reload"]


@case("prod", "mongodb-least-privilege")
def arca_role_without_collmod(b):
    import json
    cm = next(d for d in b.of("ConfigMap") if "users.json" in (d.get("data") or {}))
    spec = json.loads(cm["data"]["users.json"])
    spec["roles"][0]["privileges"][0]["actions"].remove("collMod")
    cm["data"]["users.json"] = json.dumps(spec)


@case("prod", "mongodb-least-privilege")
def backup_user_with_root(b):
    import json
    cm = next(d for d in b.of("ConfigMap") if "users.json" in (d.get("data") or {}))
    spec = json.loads(cm["data"]["users.json"])
    spec["users"][1]["roles"].append({"role": "root", "db": "admin"})
    cm["data"]["users.json"] = json.dumps(spec)


@case("prod", "acme-http01-blocked")
def no_solver_policy(b):
    b.docs.remove(b.get("NetworkPolicy", "acme-http01-solver", "arca-gateway"))


@case("prod", "acme-http01-blocked")
def gateway_egress_to_solver_dropped(b):
    np = b.get("NetworkPolicy", "gateway", "arca-gateway")
    np["spec"]["egress"] = [e for e in np["spec"]["egress"] if not any(
        "acme.cert-manager.io/http01-solver" in ((t.get("podSelector") or {}).get("matchLabels") or {}) for t in e.get("to") or [])]


@case("prod", "route-attachment")
def route_to_missing_listener(b):
    obj(b, "HTTPRoute", "arca")["spec"]["parentRefs"][0]["sectionName"] = "https"


@case("prod", "route-attachment")
def route_from_a_namespace_the_listener_refuses(b):
    gw = b.get("Gateway", "arca", "arca-gateway")
    gw["spec"]["listeners"][1]["allowedRoutes"] = {"namespaces": {"from": "Same"}}


def kickstart(b, fn):
    import json
    cm = next(d for d in b.of("ConfigMap") if "kickstart.json" in (d.get("data") or {}))
    k = json.loads(cm["data"]["kickstart.json"])
    fn(k)
    cm["data"]["kickstart.json"] = json.dumps(k)


@case("dev", "fusionauth-kickstart")
def registration_without_user_id(b):
    def fn(k):
        k["requests"][-1]["url"] = "/api/user/registration"
    kickstart(b, fn)


@case("dev", "fusionauth-kickstart")
def random_tenant_id(b):
    def fn(k):
        del k["variables"]["defaultTenantId"]
    kickstart(b, fn)


@case("dev", "fusionauth-kickstart")
def api_key_from_the_environment(b):
    def fn(k):
        k["variables"]["apiKey"] = "#{ENV.FUSIONAUTH_KICKSTART_API_KEY}"
    kickstart(b, fn)


@case("dev", "fusionauth-db-superuser")
def superuser_password_in_fusionauth(b):
    c = obj(b, "Deployment", "fusionauth")["spec"]["template"]["spec"]["containers"][0]
    c["env"].append({"name": "DATABASE_ROOT_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "fusionauth-db", "key": "root-password"}}})


@case("dev", "image-uid")
def fusionauth_as_a_foreign_uid(b):
    obj(b, "Deployment", "fusionauth")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 10001


@case("dev", "fusionauth-public-paths")
def fusionauth_admin_public(b):
    obj(b, "HTTPRoute", "fusionauth")["spec"]["rules"][0]["matches"].append({"path": {"type": "PathPrefix", "value": "/admin"}})


@case("prod", "backup-offsite")
def postgres_backup_stays_in_cluster(b):
    cj = obj(b, "CronJob", "fusionauth-postgres-backup")
    ps = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    ps["containers"] = [c for c in ps["containers"] if c["name"] != "upload"] or [ps["initContainers"][0]]


@case("prod", "backup-offsite")
def no_mongodb_backup(b):
    b.docs.remove(obj(b, "CronJob", "mongodb-backup"))


@case("prod", "image-digest")
def mongo_by_tag(b):
    ps = obj(b, "StatefulSet", "mongodb")["spec"]["template"]["spec"]
    ps["containers"][0]["image"] = "arcaregistry.azurecr.io/mirror/mongo:7.0.16"


def set_template(b, fn):
    d = obj(b, "Deployment", "arca")
    a = d["metadata"]["annotations"]
    a["arca.io/store-url-template"] = fn(a["arca.io/store-url-template"])


@case("prod", "store-url-shape")
def uri_without_tls(b):
    set_template(b, lambda t: t.replace("&tls=true&tlsCAFile=/etc/arca/mongodb-ca/ca.crt", ""))


@case("prod", "store-url-shape")
def uri_with_old_auth_source(b):
    set_template(b, lambda t: t.replace("authSource=admin", "authSource=arca"))


@case("prod", "store-url-shape")
def uri_without_majority(b):
    set_template(b, lambda t: t.replace("&w=majority", ""))


@case("prod", "store-url-shape")
def ca_path_not_mounted(b):
    set_template(b, lambda t: t.replace("/etc/arca/mongodb-ca/ca.crt", "/etc/ssl/ca.crt"))


@case("prod-external", "store-url-shape")
def external_without_database(b):
    set_template(b, lambda t: t.replace(".net/arca?", ".net/?"))


WF_CASES = []


def wf_case(check_id):
    def deco(fn):
        WF_CASES.append((fn.__name__, check_id, fn))
        return fn
    return deco


@wf_case("cd-trust")
def fork_pull_request_named_main(wf):
    g = wf["deploy.yml"]["jobs"]["gate"]
    g["if"] = g["if"].replace("&& github.event.workflow_run.head_repository.full_name == github.repository", "")


@wf_case("cd-trust")
def dispatch_from_any_branch(wf):
    g = wf["deploy.yml"]["jobs"]["gate"]
    g["if"] = g["if"].replace("&& github.ref == 'refs/heads/main'", "")


@wf_case("azure-identity-per-env")
def prod_with_dev_identity(wf):
    wf["deploy.yml"]["jobs"]["deploy-prod"]["with"]["azure-client-id"] = "${{ vars.AZURE_CLIENT_ID_DEV }}"


@wf_case("acr-roles")
def build_in_acr(wf):
    wf["deploy.yml"]["jobs"]["build"]["steps"].append({"run": "az acr build --registry r --image arca:x ."})


@wf_case("rollout-safety")
def no_undo(wf):
    steps = wf["rollout.yml"]["jobs"]["rollout"]["steps"]
    wf["rollout.yml"]["jobs"]["rollout"]["steps"] = [st for st in steps if "rollout undo" not in str(st.get("run", ""))]


@wf_case("rollout-safety")
def no_preflight(wf):
    steps = wf["rollout.yml"]["jobs"]["rollout"]["steps"]
    wf["rollout.yml"]["jobs"]["rollout"]["steps"] = [st for st in steps if "arca_preflight.py" not in str(st.get("run", ""))]


@wf_case("image-supply-chain")
def unsigned_release(wf):
    steps = wf["deploy.yml"]["jobs"]["build"]["steps"]
    wf["deploy.yml"]["jobs"]["build"]["steps"] = [st for st in steps if "cosign sign" not in str(st.get("run", ""))]


@wf_case("image-supply-chain")
def no_image_in_ci(wf):
    del wf["ci.yml"]["jobs"]["image"]


def run_wf_cases(wf_dir):
    import yaml
    wf = {}
    for fn in sorted(os.listdir(wf_dir)):
        if fn.endswith((".yml", ".yaml")):
            with open(os.path.join(wf_dir, fn), encoding="utf-8") as fh:
                wf[fn] = yaml.load(fh, Loader=yaml.BaseLoader)
    failed = 0
    for name, cid, fn in WF_CASES:
        w = copy.deepcopy(wf)
        before = pc.Findings()
        pc.CHECKS[cid][2](w, before)
        if before.items:
            print(f"FAIL {name}: {cid} already fires before the mutation: {before.items[0]}")
            failed += 1
            continue
        fn(w)
        after = pc.Findings()
        pc.CHECKS[cid][2](w, after)
        if any(i[0] == cid for i in after.items):
            print(f"ok   {name}: {cid} fires ({after.items[0][2][:90]})")
        else:
            print(f"FAIL {name}: {cid} did not fire")
            failed += 1
    return failed


class Opts:
    strict_digests = False
    pending_digests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../deploy/images-pending-digest.txt")


def run(cid, b, findings):
    scope, _, fn = pc.CHECKS[cid]
    if scope == "bundle+opts":
        fn(b, findings, Opts())
    else:
        fn(b, findings)


def main():
    rendered = sys.argv[1]
    bundles = {}
    for fn in sorted(os.listdir(rendered)):
        if fn.endswith(".yaml"):
            b = pc.Bundle(os.path.join(rendered, fn))
            # validate.sh names them kustomize-deploy-k8s-overlays-<overlay>.yaml
            bundles[fn.rsplit("-overlays-", 1)[-1][:-5]] = b
    failed = 0
    for name, bname, cid, fn in CASES:
        b = copy.deepcopy(bundles[bname])
        before = pc.Findings()
        run(cid, b, before)
        if before.items:
            print(f"FAIL {name}: {cid} already fires before the mutation: {before.items[0]}")
            failed += 1
            continue
        fn(b)
        after = pc.Findings()
        run(cid, b, after)
        if any(i[0] == cid for i in after.items):
            print(f"ok   {name}: {cid} fires ({after.items[0][2][:90]})")
        else:
            print(f"FAIL {name}: {cid} did not fire")
            failed += 1
    if len(sys.argv) > 2:
        failed += run_wf_cases(sys.argv[2])
    total = len(CASES) + (len(WF_CASES) if len(sys.argv) > 2 else 0)
    print(f"mutations: {total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
