#!/usr/bin/env python3
"""Arca's deployment policy: semantic checks a platform review would make.

k8s_check.py answers "would the API server accept these objects?"; this
script answers "would the stack come up and stay safe?": mistakes that are
valid Kubernetes but break (or expose) Arca on AKS. Each check has an id;
each id was written for a mistake found in review (issue #25) and is proved
to fire on that mistake by tests/selftest.sh (the manifests and workflows as
they were before the fix are kept in tests/before-25/).

Inputs: rendered manifests (one file per overlay, `kubectl kustomize`
output), optionally the workflow folder and Dockerfiles.

  policy_check.py [--workflows DIR] [--dockerfile FILE]... [--pending-digests FILE]
                  [--strict-digests] [--expect ID,ID,...] [--list] RENDERED.yaml...

Exit 0 when no finding, 1 when findings, 2 on usage errors. With --expect,
exit 0 only when every listed check id fired at least once (self-test).
Needs only PyYAML (and tomllib, Python >= 3.11).
"""
import argparse
import ipaddress
import json
import os
import re
import sys
import tomllib
import urllib.parse

import yaml

CHECKS = {}  # id -> (scope, description, function)


def check(cid, scope, description):
    def deco(fn):
        CHECKS[cid] = (scope, description, fn)
        return fn
    return deco


class Findings:
    def __init__(self):
        self.items = []

    def add(self, cid, where, msg):
        self.items.append((cid, where, msg))


# --------------------------------------------------------------------------
# Rendered manifests


WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# kustomize's generator suffix: "-" and 10 characters of its hash alphabet.
GENERATED = re.compile(r"-[bcdfghkmt2-9]{10}$")


class Bundle:
    """The objects of one rendered overlay."""

    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        with open(path, encoding="utf-8") as f:
            self.docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]

    def of(self, *kinds):
        return [d for d in self.docs if d.get("kind") in kinds]

    def get(self, kind, name, ns=None):
        for d in self.docs:
            md = d.get("metadata") or {}
            if d.get("kind") == kind and md.get("name") == name and (ns is None or md.get("namespace") == ns):
                return d
        return None

    def where(self, d, extra=""):
        md = d.get("metadata") or {}
        ns = md.get("namespace")
        s = f"{self.name}: {d.get('kind')}/{(ns + '/') if ns else ''}{md.get('name')}"
        return s + (f" {extra}" if extra else "")


def ns_of(d):
    return (d.get("metadata") or {}).get("namespace")


def name_of(d):
    return (d.get("metadata") or {}).get("name")


def pod_template(d):
    k, s = d.get("kind"), d.get("spec") or {}
    if k in WORKLOADS:
        return s.get("template") or {}
    if k == "CronJob":
        return ((s.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    if k == "Pod":
        return {"metadata": d.get("metadata") or {}, "spec": s}
    return None


def pod_spec(d):
    t = pod_template(d)
    return None if t is None else (t.get("spec") or {})


def pod_labels(d):
    t = pod_template(d)
    return {} if t is None else ((t.get("metadata") or {}).get("labels") or {})


def containers(ps, init=False):
    return (ps.get("initContainers") or [] if init else []) + (ps.get("containers") or [])


def workloads(b):
    return [d for d in b.docs if pod_spec(d) is not None]


def selector_matches(sel, labels):
    if not isinstance(sel, dict):
        return False
    if any(labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for ex in sel.get("matchExpressions") or []:
        key, op, vals = ex.get("key"), ex.get("operator"), ex.get("values") or []
        if (op == "In" and labels.get(key) not in vals) or (op == "NotIn" and labels.get(key) in vals) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def is_arca(c):
    """Arca's own container: configured with ARCA_* variables."""
    return any(str(e.get("name", "")).startswith("ARCA_") for e in c.get("env") or [])


def env_value(c, name):
    for e in c.get("env") or []:
        if e.get("name") == name:
            return e
    return None


def resolve_file(b, ns, ps, c, path):
    """(kind, object name, key) of the volume file a container sees at path, or None."""
    vols = {v.get("name"): v for v in ps.get("volumes") or []}
    best = None
    for m in c.get("volumeMounts") or []:
        mp = m.get("mountPath", "").rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, m)
    if best is None:
        return None
    mp, m = best
    rel = m.get("subPath") or path[len(mp):].lstrip("/")
    if m.get("subPath") and path != mp:
        return None
    v = vols.get(m.get("name")) or {}
    for kind, src, ref in (("ConfigMap", v.get("configMap"), "name"), ("Secret", v.get("secret"), "secretName")):
        if src is None:
            continue
        key = rel
        items = src.get("items")
        if items:
            key = next((i.get("key") for i in items if i.get("path") == rel), None)
            if key is None:
                return None
        return kind, src.get(ref), key
    if "emptyDir" in v:
        return "emptyDir", m.get("name"), rel
    return "other", m.get("name"), rel


def arca_config(b, d, c):
    """The parsed arca.toml an Arca container loads (ARCA_CONFIG), or None."""
    e = env_value(c, "ARCA_CONFIG")
    if not e or "value" not in e:
        return None
    ps = pod_spec(d)
    r = resolve_file(b, ns_of(d), ps, c, e["value"])
    if not r or r[0] != "ConfigMap":
        return None
    cm = b.get("ConfigMap", r[1], ns_of(d))
    text = ((cm or {}).get("data") or {}).get(r[2])
    if text is None:
        return None
    return tomllib.loads(text)


def port_of(addr):
    m = re.search(r":(\d+)$", str(addr or ""))
    return int(m.group(1)) if m else None


def arca_workloads(b):
    for d in workloads(b):
        if d.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        for c in pod_spec(d).get("containers") or []:
            if is_arca(c):
                yield d, c


@check("hpa-owns-replicas", "manifests",
       "a workload scaled by a HorizontalPodAutoscaler sets no spec.replicas (every apply would reset the count)")
def _hpa_replicas(b, f):
    for h in b.of("HorizontalPodAutoscaler"):
        ref = (h.get("spec") or {}).get("scaleTargetRef") or {}
        t = b.get(ref.get("kind"), ref.get("name"), ns_of(h))
        if t is not None and "replicas" in (t.get("spec") or {}):
            f.add("hpa-owns-replicas", b.where(t),
                  f"sets spec.replicas while HorizontalPodAutoscaler/{name_of(h)} owns its replica count")


@check("config-not-generated", "manifests",
       "ConfigMaps a pod uses come from a configMapGenerator (content-hashed name), so a change rolls the pods")
def _config_generated(b, f):
    for d in workloads(b):
        ps = pod_spec(d)
        names = set()
        for v in ps.get("volumes") or []:
            if v.get("configMap"):
                names.add(v["configMap"].get("name"))
            for src in (v.get("projected") or {}).get("sources") or []:
                if src.get("configMap"):
                    names.add(src["configMap"].get("name"))
        for c in containers(ps, init=True):
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref:
                    names.add(ref.get("name"))
            for e in c.get("envFrom") or []:
                if e.get("configMapRef"):
                    names.add(e["configMapRef"].get("name"))
        for n in sorted(x for x in names if x):
            if b.get("ConfigMap", n, ns_of(d)) is not None and not GENERATED.search(n):
                f.add("config-not-generated", b.where(d),
                      f"uses ConfigMap {n!r}, which has no content hash in its name: editing it does not roll the pods (use a configMapGenerator)")


@check("metrics-on-api-port", "manifests",
       "Arca serves /metrics on its own listener (metrics.listen) and port, never on the API port the ingress routes")
def _metrics_listener(b, f):
    for d, c in arca_workloads(b):
        cfg = arca_config(b, d, c) or {}
        listen = ((cfg.get("metrics") or {}).get("listen"))
        env = env_value(c, "ARCA_METRICS__LISTEN")
        if env and "value" in env:
            listen = env["value"]
        api = env_value(c, "ARCA_SERVER__LISTEN")
        api = api["value"] if api and "value" in api else ((cfg.get("server") or {}).get("listen"))
        if not listen:
            f.add("metrics-on-api-port", b.where(d),
                  "arca.toml sets no metrics.listen: /metrics is served on the API listener, and so wherever the API is routed")
            continue
        if port_of(listen) == port_of(api):
            f.add("metrics-on-api-port", b.where(d), f"metrics.listen {listen} shares the API listener's port")
            continue
        ports = {p.get("containerPort"): p.get("name") for p in c.get("ports") or []}
        if ports.get(port_of(listen)) != "metrics":
            f.add("metrics-on-api-port", b.where(d),
                  f"the metrics listener's port {port_of(listen)} is not declared as a container port named 'metrics'")


def named_port_numbers(b, ns, sel_labels_pred, port_name):
    """Container port numbers named port_name in pods selected by the predicate."""
    nums = set()
    for d in workloads(b):
        if ns_of(d) != ns or not sel_labels_pred(pod_labels(d)):
            continue
        for c in containers(pod_spec(d)):
            for p in c.get("ports") or []:
                if p.get("name") == port_name:
                    nums.add(p.get("containerPort"))
    return nums


def route_backends(b):
    """(route object, namespace, service name, port) of every Ingress / HTTPRoute backend."""
    out = []
    for r in b.of("Ingress"):
        for rule in (r.get("spec") or {}).get("rules") or []:
            for p in ((rule.get("http") or {}).get("paths")) or []:
                svc = ((p.get("backend") or {}).get("service")) or {}
                port = svc.get("port") or {}
                out.append((r, ns_of(r), svc.get("name"), port.get("name") or port.get("number")))
    for r in b.of("HTTPRoute"):
        for rule in (r.get("spec") or {}).get("rules") or []:
            for br in rule.get("backendRefs") or []:
                if br.get("kind", "Service") == "Service":
                    out.append((r, br.get("namespace") or ns_of(r), br.get("name"), br.get("port")))
    return out


@check("metrics-exposed", "manifests",
       "no route reaches a metrics port, and only the monitoring namespace may connect to one")
def _metrics_exposed(b, f):
    for r, ns, svc_name, port in route_backends(b):
        svc = b.get("Service", svc_name, ns)
        if svc is None:
            continue
        for sp in (svc.get("spec") or {}).get("ports") or []:
            if port not in (sp.get("name"), sp.get("port")):
                continue
            tp = sp.get("targetPort")
            sel = (svc.get("spec") or {}).get("selector") or {}
            pred = lambda labels, sel=sel: all(labels.get(k) == v for k, v in sel.items())
            if tp == "metrics" or sp.get("name") == "metrics" or tp in named_port_numbers(b, ns, pred, "metrics"):
                f.add("metrics-exposed", b.where(r), f"routes to {svc_name}:{port}, a metrics port")
    for np in b.of("NetworkPolicy"):
        spec = np.get("spec") or {}
        pred = lambda labels, sel=spec.get("podSelector") or {}: selector_matches(sel, labels)
        metric_ports = named_port_numbers(b, ns_of(np), pred, "metrics")
        if not metric_ports:
            continue
        for rule in spec.get("ingress") or []:
            ports = rule.get("ports")
            hit = ports is None or any(p.get("port") in metric_ports or p.get("port") == "metrics" for p in ports)
            if not hit:
                continue
            peers = rule.get("from")
            only_monitoring = bool(peers) and all(
                ((p.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name") == "monitoring"
                for p in peers)
            if not only_monitoring:
                f.add("metrics-exposed", b.where(np),
                      f"allows ingress to the metrics port {sorted(metric_ports)} from outside the monitoring namespace")


@check("store-url-in-env", "manifests",
       "Arca's store URI (credentials inside) comes from a Secret file (ARCA_STORE__URL_FILE), never an env value")
def _store_url(b, f):
    for d, c in arca_workloads(b):
        e = env_value(c, "ARCA_STORE__URL")
        if e is not None:
            if "valueFrom" in e:
                f.add("store-url-in-env", b.where(d), "ARCA_STORE__URL comes from a secretKeyRef/configMapKeyRef: the URI (with its password) sits in the environment; mount it and set ARCA_STORE__URL_FILE")
            elif not str(e.get("value", "")).startswith("sqlite://"):
                f.add("store-url-in-env", b.where(d), "ARCA_STORE__URL holds a network store's URI in the manifest")
        ef = env_value(c, "ARCA_STORE__URL_FILE")
        if ef is not None:
            r = resolve_file(b, ns_of(d), pod_spec(d), c, ef.get("value", ""))
            if not r or r[0] != "Secret":
                f.add("store-url-in-env", b.where(d), f"ARCA_STORE__URL_FILE {ef.get('value')!r} is not a file of a mounted Secret")


@check("entra-audience", "manifests",
       "with an Entra ID v2 issuer, the accepted audience is the application (client) id GUID")
def _entra(b, f):
    for cm in b.of("ConfigMap"):
        data = cm.get("data") or {}
        iss, aud = data.get("issuer", ""), data.get("audience")
        if re.match(r"^https://login\.microsoftonline\.com/[^/]+/v2\.0/?$", iss) and aud is not None:
            for a in [x.strip() for x in str(aud).split(",") if x.strip()]:
                if not GUID.match(a):
                    f.add("entra-audience", b.where(cm),
                          f"audience {a!r}: Entra ID v2 access tokens carry the application (client) id GUID in aud, so no token would ever be accepted")


# --------------------------------------------------------------------------
# Ingress: Gateway API, TLS issuance


def rule_allows(rule_peers, ports, peer_ns, peer_labels, port, own_ns):
    """Does one NetworkPolicy rule (from/to peers + ports) admit this peer and port?"""
    if ports is not None and not any(p.get("port") in (port, None) for p in ports):
        return False
    if rule_peers is None:
        return True
    for peer in rule_peers:
        nss, pss = peer.get("namespaceSelector"), peer.get("podSelector")
        if "ipBlock" in peer:
            continue
        ns_ok = (peer_ns == own_ns) if nss is None else selector_matches(nss, {"kubernetes.io/metadata.name": peer_ns})
        pod_ok = True if pss is None else selector_matches(pss, peer_labels)
        if ns_ok and pod_ok:
            return True
    return False


def flow_allowed(b, src_ns, src_labels, dst_ns, dst_labels, port):
    """Would the namespaces' NetworkPolicies let src reach dst on TCP port? (isolation per side)"""
    def side(ns, labels, direction, peer_ns, peer_labels):
        pols = [np for np in b.of("NetworkPolicy") if ns_of(np) == ns
                and selector_matches((np.get("spec") or {}).get("podSelector") or {}, labels)
                and direction in ((np.get("spec") or {}).get("policyTypes") or ["Ingress"])]
        if not pols:
            return True  # not isolated in that direction
        key = "ingress" if direction == "Ingress" else "egress"
        peer_key = "from" if direction == "Ingress" else "to"
        return any(rule_allows(r.get(peer_key), r.get("ports"), peer_ns, peer_labels, port, ns)
                   for np in pols for r in (np.get("spec") or {}).get(key) or [])
    return side(src_ns, src_labels, "Egress", dst_ns, dst_labels) and side(dst_ns, dst_labels, "Ingress", src_ns, src_labels)


SOLVER_LABELS = {"acme.cert-manager.io/http01-solver": "true"}


@check("acme-http01-blocked", "manifests",
       "where cert-manager issues certificates by ACME HTTP-01, the NetworkPolicies let the gateway reach the solver pods (TCP 8089)")
def _acme(b, f):
    for g in b.of("Gateway", "Ingress"):
        ann = (g.get("metadata") or {}).get("annotations") or {}
        if not (ann.get("cert-manager.io/cluster-issuer") or ann.get("cert-manager.io/issuer")):
            continue
        if ann.get("arca.io/acme-challenge") == "dns01":
            continue
        ns = ns_of(g)
        if g.get("kind") == "Gateway":
            src_ns, src_labels = ns, {"gateway.networking.k8s.io/gateway-name": name_of(g)}
            who = f"the Gateway's proxies ({name_of(g)})"
        else:
            # ingress-nginx style controllers run in their own namespace
            src_ns, src_labels = "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}
            who = "the ingress controller"
        if not flow_allowed(b, src_ns, src_labels, ns, SOLVER_LABELS, 8089):
            f.add("acme-http01-blocked", b.where(g),
                  f"cert-manager puts its HTTP-01 solver pods in {ns}, and the NetworkPolicies there drop {who} -> solver:8089: the ACME challenge fails and no certificate is ever issued")


@check("ingress-nginx", "manifests",
       "nothing depends on ingress-nginx (end of life, March 2026): routes are Gateway API HTTPRoutes")
def _nginx(b, f):
    for d in b.of("Ingress"):
        cls = (d.get("spec") or {}).get("ingressClassName")
        anns = [k for k in ((d.get("metadata") or {}).get("annotations") or {}) if k.startswith("nginx.ingress.kubernetes.io/")]
        if cls == "nginx" or anns:
            f.add("ingress-nginx", b.where(d), "an Ingress for ingress-nginx, which is end of life: route with a Gateway API HTTPRoute")
    for np in b.of("NetworkPolicy"):
        if "ingress-nginx" in json.dumps(np.get("spec") or {}):
            f.add("ingress-nginx", b.where(np), "admits traffic from ingress-nginx, which is end of life")


@check("route-attachment", "manifests",
       "every HTTPRoute attaches to an existing Gateway listener that admits its namespace, and reaches an existing Service port")
def _routes(b, f):
    for r in b.of("HTTPRoute"):
        ns = ns_of(r)
        for pr in (r.get("spec") or {}).get("parentRefs") or []:
            gw = b.get("Gateway", pr.get("name"), pr.get("namespace") or ns)
            if gw is None:
                f.add("route-attachment", b.where(r), f"parent Gateway {pr.get('namespace') or ns}/{pr.get('name')} is not in the bundle")
                continue
            ls = [l for l in (gw.get("spec") or {}).get("listeners") or [] if pr.get("sectionName") in (None, l.get("name"))]
            if not ls:
                f.add("route-attachment", b.where(r), f"Gateway {name_of(gw)} has no listener {pr.get('sectionName')!r}")
                continue
            for l in ls:
                an = ((l.get("allowedRoutes") or {}).get("namespaces")) or {"from": "Same"}
                ok = (an.get("from") == "All") or (an.get("from", "Same") == "Same" and ns == ns_of(gw)) or \
                     (an.get("from") == "Selector" and selector_matches(an.get("selector") or {}, {"kubernetes.io/metadata.name": ns}))
                if not ok:
                    f.add("route-attachment", b.where(r), f"listener {l.get('name')} of Gateway {name_of(gw)} does not admit routes from namespace {ns}")
                hn = l.get("hostname")
                if hn and r["spec"].get("hostnames") and hn not in r["spec"]["hostnames"]:
                    f.add("route-attachment", b.where(r), f"hostnames {r['spec']['hostnames']} do not match listener {l.get('name')}'s {hn}")
        for _, bns, svc, port in [x for x in route_backends(b) if x[0] is r]:
            s = b.get("Service", svc, bns)
            if s is None or not any(port in (p.get("port"), p.get("name")) for p in (s.get("spec") or {}).get("ports") or []):
                f.add("route-attachment", b.where(r), f"backend {bns}/{svc}:{port} is not a Service port in the bundle")


# --------------------------------------------------------------------------
# FusionAuth


def image_is(c, name):
    img = str(c.get("image", "")).split("@")[0]
    return img.rsplit("/", 1)[-1].split(":")[0] == name


def kickstarts(b):
    for cm in b.of("ConfigMap"):
        text = ((cm.get("data") or {}).get("kickstart.json"))
        if text:
            yield cm, json.loads(text)


@check("fusionauth-kickstart", "manifests",
       "the kickstart registers the admin by user id, fixes the tenant id, and uses an API key no one outside FusionAuth holds")
def _kickstart(b, f):
    for cm, k in kickstarts(b):
        variables = k.get("variables") or {}
        for r in k.get("requests") or []:
            url = r.get("url", "")
            if url.rstrip("/") == "/api/user/registration" and "user" not in (r.get("body") or {}):
                f.add("fusionauth-kickstart", b.where(cm),
                      f"{r.get('method')} {url} registers an existing user without a user id in the path: FusionAuth refuses it (a registration-only call is /api/user/registration/{{userId}}), so the admin never gets that application's roles")
            for var in re.findall(r"#\{([A-Za-z0-9_]+)\}", url):
                if var not in variables and not var.startswith("FUSIONAUTH_"):
                    f.add("fusionauth-kickstart", b.where(cm), f"{url} uses #{{{var}}}, which no variable defines")
        tid = variables.get("defaultTenantId")
        if not (isinstance(tid, str) and GUID.match(tid)):
            f.add("fusionauth-kickstart", b.where(cm),
                  "no fixed variables.defaultTenantId: the tenant id (tokens' tid, Arca's tenant) changes when FusionAuth is rebuilt")
        for key in k.get("apiKeys") or []:
            v = str(key.get("key", ""))
            m = re.fullmatch(r"#\{([A-Za-z0-9_]+)\}", v)
            src = str(variables.get(m.group(1), "")) if m else v
            if "#{UUID()}" not in src:
                f.add("fusionauth-kickstart", b.where(cm),
                      f"API key {v!r} comes from {src!r}: a key someone holds outlives the kickstart (make it #{{UUID()}}, known to no one)")
            elif key.get("retrievable") is not False:
                f.add("fusionauth-kickstart", b.where(cm), "the kickstart API key is retrievable: an admin could read it back (retrievable: false)")
    for d in workloads(b):
        for c in containers(pod_spec(d)):
            for e in c.get("env") or []:
                if e.get("name") == "FUSIONAUTH_KICKSTART_API_KEY" or (
                        (e.get("valueFrom") or {}).get("secretKeyRef", {}).get("key") == "api-key" and image_is(c, "fusionauth-app")):
                    f.add("fusionauth-kickstart", b.where(d), "the kickstart API key is handed in from a Secret: it stays valid and known after use")


@check("fusionauth-db-superuser", "manifests",
       "FusionAuth holds only its own database user's credentials, never PostgreSQL's superuser")
def _fa_root(b, f):
    for d in workloads(b):
        for c in containers(pod_spec(d)):
            if not image_is(c, "fusionauth-app"):
                continue
            for e in c.get("env") or []:
                if e.get("name", "").startswith("DATABASE_ROOT_"):
                    f.add("fusionauth-db-superuser", b.where(d),
                          f"{e['name']} in FusionAuth's environment: the superuser's password stays in every FusionAuth pod for good")


# The uid each third-party image owns its files as (its USER), from the images' Dockerfiles.
IMAGE_UIDS = {"fusionauth-app": 1001, "mongo": 999, "postgres": 999}


@check("image-uid", "manifests",
       "containers of third-party images run as the image's own uid (the owner of its files)")
def _uid(b, f):
    for d in workloads(b):
        ps = pod_spec(d)
        pod_uid = (ps.get("securityContext") or {}).get("runAsUser")
        for c in containers(ps, init=True):
            name = str(c.get("image", "")).split("@")[0].rsplit("/", 1)[-1].split(":")[0]
            want = IMAGE_UIDS.get(name)
            uid = (c.get("securityContext") or {}).get("runAsUser", pod_uid)
            if want is not None and uid is not None and uid != want:
                f.add("image-uid", b.where(d, f"container {c.get('name')}"),
                      f"runs as uid {uid}, but {name} owns its files as uid {want}: it cannot write its own directories")


FUSIONAUTH_PUBLIC = ("/oauth2/", "/.well-known/", "/password/", "/email/", "/registration/",
                     "/css/", "/js/", "/images/", "/fonts/")


@check("fusionauth-public-paths", "manifests",
       "FusionAuth's public routes expose only OAuth2/OIDC, well-known and login paths, never /admin or /api")
def _fa_paths(b, f):
    fa_services = set()
    for svc in b.of("Service"):
        sel = (svc.get("spec") or {}).get("selector") or {}
        for d in workloads(b):
            if ns_of(d) == ns_of(svc) and sel and all(pod_labels(d).get(k) == v for k, v in sel.items()) \
                    and any(image_is(c, "fusionauth-app") for c in containers(pod_spec(d))):
                fa_services.add((ns_of(svc), name_of(svc)))
    for r in b.of("HTTPRoute"):
        for rule in (r.get("spec") or {}).get("rules") or []:
            targets = {(br.get("namespace") or ns_of(r), br.get("name")) for br in rule.get("backendRefs") or []}
            if not targets & fa_services:
                continue
            matches = rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]
            for m in matches:
                path = (m.get("path") or {"value": "/"}).get("value", "/")
                if not any(path.startswith(p) for p in FUSIONAUTH_PUBLIC):
                    f.add("fusionauth-public-paths", b.where(r),
                          f"routes {path!r} to FusionAuth publicly: that includes /admin and /api (keep them internal or allow-listed)")
    for ing in b.of("Ingress"):
        for rule in (ing.get("spec") or {}).get("rules") or []:
            for p in ((rule.get("http") or {}).get("paths")) or []:
                svc = ((p.get("backend") or {}).get("service") or {}).get("name")
                if (ns_of(ing), svc) in fa_services and not any(p.get("path", "/").startswith(x) for x in FUSIONAUTH_PUBLIC):
                    f.add("fusionauth-public-paths", b.where(ing), f"routes {p.get('path', '/')!r} to FusionAuth publicly: that includes /admin and /api")


# --------------------------------------------------------------------------
# MongoDB


# What Arca's MongoDB engine needs on its database, exactly (docs/deploy.md).
ARCA_MONGODB_ACTIONS = {"find", "insert", "update", "remove", "createCollection", "dropCollection",
                        "createIndex", "dropIndex", "collMod", "listCollections", "listIndexes", "killCursors"}
BROAD_ROLES = {"readWrite", "dbOwner", "dbAdmin", "readWriteAnyDatabase", "dbAdminAnyDatabase", "root",
               "userAdmin", "userAdminAnyDatabase", "clusterAdmin", "restore", "__system"}


def mongod_containers(b):
    for d in workloads(b):
        for c in pod_spec(d).get("containers") or []:
            words = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
            if any(w.startswith("--replSet") for w in words) or (words and words[0] == "mongod"):
                yield d, c, words


def flag(words, name):
    """Value of --name=value / --name value in an argument list (True for a bare flag)."""
    for i, w in enumerate(words):
        if w == name:
            nxt = words[i + 1] if i + 1 < len(words) else None
            return nxt if nxt is not None and not nxt.startswith("--") else True
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def script_text(b, d):
    """Everything a pod runs as shell/JS: commands, args, env values, and mounted ConfigMap files."""
    ps = pod_spec(d)
    parts = []
    for c in containers(ps, init=True):
        parts += [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
        parts += [str(e.get("value", "")) for e in c.get("env") or []]
    for v in ps.get("volumes") or []:
        if v.get("configMap"):
            cm = b.get("ConfigMap", v["configMap"].get("name"), ns_of(d))
            parts += [str(x) for x in ((cm or {}).get("data") or {}).values()]
    return "\n".join(parts)


@check("mongodb-client-certs", "manifests",
       "mongod with TLS accepts clients without certificates (probes, init Job, backup and Arca present none), "
       "and the members' certificate allows client auth (members connect to each other as clients)")
def _mongodb_client_certs(b, f):
    for d, c, words in mongod_containers(b):
        mode = flag(words, "--tlsMode") or flag(words, "--sslMode")
        if mode in ("requireTLS", "preferTLS", "allowTLS", "requireSSL", "preferSSL") and \
                (flag(words, "--tlsCAFile") or flag(words, "--sslCAFile")) and \
                not (flag(words, "--tlsAllowConnectionsWithoutCertificates") or flag(words, "--sslAllowConnectionsWithoutCertificates")):
            f.add("mongodb-client-certs", b.where(d),
                  "mongod has a CA file and so demands a client certificate, which its probes, the init Job, the backup and Arca do not present (members crash-loop): add --tlsAllowConnectionsWithoutCertificates")
        keyfile_secret = None
        for v in pod_spec(d).get("volumes") or []:
            if v.get("secret") and any(m.get("name") == v["name"] for cc in containers(pod_spec(d), init=True)
                                       for m in cc.get("volumeMounts") or [] if "tls" in m.get("mountPath", "")):
                keyfile_secret = v["secret"].get("secretName")
        for cert in b.of("Certificate"):
            if keyfile_secret and (cert.get("spec") or {}).get("secretName") == keyfile_secret:
                usages = set((cert.get("spec") or {}).get("usages") or ["digital signature", "key encipherment"])
                if not {"server auth", "client auth"} <= usages:
                    f.add("mongodb-client-certs", b.where(cert),
                          f"usages {sorted(usages)}: the members' certificate needs both server auth and client auth")


@check("mongodb-init-primary", "manifests",
       "database client Jobs reach MongoDB through the replica set (replicaSet=...), not one fixed member")
def _init_primary(b, f):
    for d in b.of("Job", "CronJob"):
        text = script_text(b, d)
        if "mongosh" not in text and "mongodump" not in text:
            continue
        if "replicaSet=" not in text and not re.search(r"--host\s+'?rs\d*/", text):
            f.add("mongodb-init-primary", b.where(d),
                  "connects to MongoDB without the replica set (no replicaSet=): it writes to whichever single member it names, which may be a secondary or down")


@check("job-bounds", "manifests",
       "Jobs are bounded in time (activeDeadlineSeconds) and removed after they finish (ttlSecondsAfterFinished), "
       "so a re-apply never meets an old Job's immutable template")
def _job_bounds(b, f):
    for d in b.of("Job", "CronJob"):
        spec = d.get("spec") or {}
        if d.get("kind") == "CronJob":
            spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
        if "activeDeadlineSeconds" not in spec:
            f.add("job-bounds", b.where(d), "no activeDeadlineSeconds: a stuck run (a replica set with no primary) retries forever")
        if d.get("kind") == "Job" and "ttlSecondsAfterFinished" not in spec:
            f.add("job-bounds", b.where(d), "no ttlSecondsAfterFinished: the finished Job stays, and applying a changed one fails (its pod template is immutable)")


@check("replica-spread", "manifests",
       "replicated StatefulSets (a PDB guards them) require one member per node and spread members over zones")
def _replica_spread(b, f):
    for d in b.of("StatefulSet"):
        spec = d.get("spec") or {}
        if (spec.get("replicas") or 1) < 2:
            continue
        labels = pod_labels(d)
        if not any(ns_of(p) == ns_of(d) and selector_matches((p.get("spec") or {}).get("selector") or {}, labels)
                   for p in b.of("PodDisruptionBudget")):
            continue
        ps = pod_spec(d)
        req = (((ps.get("affinity") or {}).get("podAntiAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")) or []
        if not any(t.get("topologyKey") == "kubernetes.io/hostname" and selector_matches(t.get("labelSelector") or {}, labels) for t in req):
            f.add("replica-spread", b.where(d), "no required pod anti-affinity on kubernetes.io/hostname: two members may share a node, and one node loss then takes the majority")
        tsc = ps.get("topologySpreadConstraints") or []
        if not any(t.get("topologyKey") == "topology.kubernetes.io/zone" and t.get("whenUnsatisfiable") == "DoNotSchedule"
                   and selector_matches(t.get("labelSelector") or {}, labels) for t in tsc):
            f.add("replica-spread", b.where(d), "members are not spread over zones (topologySpreadConstraints on topology.kubernetes.io/zone, DoNotSchedule)")


@check("startup-probe", "manifests",
       "database containers with a liveness probe have a startupProbe (recovery may outlast the liveness budget)")
def _startup_probe(b, f):
    for d in b.of("StatefulSet"):
        for c in pod_spec(d).get("containers") or []:
            if c.get("livenessProbe") and not c.get("startupProbe"):
                f.add("startup-probe", b.where(d, f"container {c.get('name')}"),
                      "livenessProbe without startupProbe: a long recovery gets the container killed and restarted in a loop")


@check("cert-renewal", "manifests",
       "a server certificate assembled into a file at start is rebuilt and reloaded when its Secret is renewed")
def _cert_renewal(b, f):
    for d, c, words in mongod_containers(b):
        path = flag(words, "--tlsCertificateKeyFile") or flag(words, "--sslPEMKeyFile")
        if not isinstance(path, str):
            continue
        ps = pod_spec(d)
        r = resolve_file(b, ns_of(d), ps, c, path)
        if not r or r[0] != "emptyDir":
            continue
        writers = [cc for cc in ps.get("containers") or [] if cc is not c and any(
            m.get("name") == r[1] and not m.get("readOnly") for m in cc.get("volumeMounts") or [])]
        if not writers:
            f.add("cert-renewal", b.where(d),
                  f"{path} is built once by an init container: a renewed certificate never reaches mongod (add a sidecar that rebuilds it and runs rotateCertificates)")


def users_specs(b):
    for cm in b.of("ConfigMap"):
        text = ((cm.get("data") or {}).get("users.json"))
        if text:
            yield cm, json.loads(text)


@check("mongodb-least-privilege", "manifests",
       "Arca's MongoDB user holds exactly the engine's actions on its database (custom role, with collMod); "
       "the backup user holds the built-in backup role only; no client Job runs as root where a narrower user fits")
def _least_privilege(b, f):
    for d in b.of("Job", "CronJob"):
        text = script_text(b, d)
        for role in sorted(BROAD_ROLES):
            if re.search(r"role\s*:\s*[\"']%s[\"']" % role, text):
                f.add("mongodb-least-privilege", b.where(d), f"grants the built-in role {role!r}")
        if "mongodump" in text:
            ps = pod_spec(d)
            if any((v.get("secret") or {}).get("secretName", "").endswith("-root") for v in ps.get("volumes") or []):
                f.add("mongodb-least-privilege", b.where(d), "the backup runs as the root user (it needs the backup role only)")
    for cm, spec in users_specs(b):
        roles = {(r["role"], r["db"]): r for r in spec.get("roles") or []}
        for u in spec.get("users") or []:
            granted = [(r["role"], r["db"]) for r in u.get("roles") or []]
            if u["user"].endswith("backup"):
                if granted != [("backup", "admin")]:
                    f.add("mongodb-least-privilege", b.where(cm), f"user {u['user']} has {granted}; the backup user gets the built-in role backup@admin only")
                continue
            for g in granted:
                if g[0] in BROAD_ROLES or g not in roles:
                    f.add("mongodb-least-privilege", b.where(cm), f"user {u['user']} has the built-in role {g[0]}@{g[1]}; Arca gets a custom role with the engine's actions")
                    continue
                acts = set()
                for p in roles[g].get("privileges") or []:
                    acts |= set(p.get("actions") or [])
                    res = p.get("resource") or {}
                    if res.get("collection") != "" or not res.get("db"):
                        f.add("mongodb-least-privilege", b.where(cm), f"role {g[0]}: privileges on {res}, not on the Arca database as a whole")
                if acts != ARCA_MONGODB_ACTIONS:
                    f.add("mongodb-least-privilege", b.where(cm),
                          f"role {g[0]}: missing {sorted(ARCA_MONGODB_ACTIONS - acts)}, extra {sorted(acts - ARCA_MONGODB_ACTIONS)}")


@check("store-url-shape", "manifests",
       "the store URI Arca is given (its template annotation) is what the MongoDB engine expects: database in the path, "
       "authSource, TLS options matching the members, w=majority, the replica set's members and name")
def _store_url_shape(b, f):
    members = list(mongod_containers(b))
    for d, c in arca_workloads(b):
        if env_value(c, "ARCA_STORE__URL_FILE") is None:
            continue
        tpl = ((d.get("metadata") or {}).get("annotations") or {}).get("arca.io/store-url-template")
        if not tpl:
            f.add("store-url-shape", b.where(d), "the store URI comes from a Secret but the Deployment states no arca.io/store-url-template: nothing checks its shape")
            continue
        u = urllib.parse.urlsplit(tpl)
        q = dict(urllib.parse.parse_qsl(u.query))
        bad = lambda msg: f.add("store-url-shape", b.where(d), f"{msg} (template {tpl})")
        if u.scheme not in ("mongodb", "mongodb+srv"):
            bad(f"scheme {u.scheme!r} is not mongodb:// or mongodb+srv://")
            continue
        db = u.path.lstrip("/")
        if not db:
            bad("no database in the URI path (the engine would use 'arca' silently)")
        if u.username and "authSource" not in q:
            bad("no authSource: the driver would authenticate against the database in the path")
        if q.get("w") != "majority":
            bad("no w=majority: an acknowledged write could be lost in a failover")
        for cm, spec in users_specs(b):
            user = next((x for x in spec.get("users") or [] if x.get("user") == u.username), None)
            if user is None:
                bad(f"user {u.username!r} is not among the users the init Job creates")
                continue
            if q.get("authSource") != user.get("db"):
                bad(f"authSource={q.get('authSource')} but user {u.username} is created in database {user.get('db')}")
            dbs = {(p.get("resource") or {}).get("db") for r in spec.get("roles") or [] for p in r.get("privileges") or []}
            if dbs and db not in dbs:
                bad(f"database {db!r} is not the one Arca's role grants ({sorted(dbs)})")
        if not members:
            if u.scheme == "mongodb" and q.get("tls") != "true" and q.get("ssl") != "true":
                bad("an external MongoDB without tls=true")
            continue
        for st, mc, words in members:
            rs = flag(words, "--replSet")
            if q.get("replicaSet") != rs:
                bad(f"replicaSet={q.get('replicaSet')} but the members run --replSet={rs}")
            svc = (st.get("spec") or {}).get("serviceName")
            want = {f"{name_of(st)}-{i}.{svc}" for i in range((st.get("spec") or {}).get("replicas") or 1)}
            hosts = {h.split(":")[0] for h in u.netloc.rsplit("@", 1)[-1].split(",")}
            if not all(any(h == w or h.startswith(w + ".") for h in hosts) for w in want):
                bad(f"hosts {sorted(hosts)} do not name every member {sorted(want)}")
            mode = flag(words, "--tlsMode")
            if mode in ("requireTLS", "preferTLS"):
                if q.get("tls") != "true":
                    bad(f"the members run --tlsMode={mode} but the URI has no tls=true")
                ca = q.get("tlsCAFile")
                r = resolve_file(b, ns_of(d), pod_spec(d), c, ca) if ca else None
                if not r or r[0] != "Secret":
                    bad(f"tlsCAFile={ca} is not a file of a Secret mounted in Arca's container")


# --------------------------------------------------------------------------
# Backups


@check("backup-offsite", "manifests",
       "every database StatefulSet has a backup CronJob whose dumps leave the cluster (Blob Storage, workload identity)")
def _backup(b, f):
    for st in b.of("StatefulSet"):
        comp = pod_labels(st).get("app.kubernetes.io/component", "")
        if comp not in ("database", "identity-database"):
            continue
        jobs = [cj for cj in b.of("CronJob") if ns_of(cj) == ns_of(st) and pod_labels(cj).get("arca.io/backup-of") == name_of(st)]
        if not jobs:
            f.add("backup-offsite", b.where(st), "no backup CronJob (label arca.io/backup-of) takes this database off the cluster: a lost cluster or disk loses it")
            continue
        for cj in jobs:
            ps = pod_spec(cj)
            sa = b.get("ServiceAccount", ps.get("serviceAccountName"), ns_of(cj))
            client = (((sa or {}).get("metadata") or {}).get("annotations") or {}).get("azure.workload.identity/client-id", "")
            uploads = any("az storage blob upload" in " ".join(str(x) for x in (c.get("command") or []) + (c.get("args") or []))
                          for c in containers(ps))
            if pod_labels(cj).get("azure.workload.identity/use") != "true" or not GUID.match(client) or not uploads:
                f.add("backup-offsite", b.where(cj),
                      "does not upload its dump to Blob Storage as a workload identity (pod label azure.workload.identity/use, a ServiceAccount with azure.workload.identity/client-id, az storage blob upload)")


# --------------------------------------------------------------------------
# Images


DIGEST_REF = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


def pending_digests(opts):
    if not getattr(opts, "pending_digests", None):
        return set()
    with open(opts.pending_digests, encoding="utf-8") as fh:
        return {ln.split()[0] for ln in fh if ln.strip() and not ln.lstrip().startswith("#")}


def is_project_image(ref):
    """Arca's own image: the CD pipeline sets it by digest (kustomize images) at every rollout."""
    return ref.split("@")[0].split(":")[0].rsplit("/", 1)[-1] == "arca"


_pending_seen = {}


@check("image-digest", "bundle+opts",
       "every image is pinned by digest (name@sha256:<64 hex>); Arca's own image gets its digest from CD, "
       "and with --strict-digests (the rollout) nothing is exempt")
def _digests(b, f, opts):
    pending = pending_digests(opts)
    for d in workloads(b):
        for c in containers(pod_spec(d), init=True):
            ref = str(c.get("image", ""))
            if DIGEST_REF.match(ref):
                continue
            if is_project_image(ref) and not opts.strict_digests:
                continue
            if ref in pending and not opts.strict_digests:
                _pending_seen[ref] = True
                continue
            why = " (listed as pending: fill in its digest before it can be rolled out)" if ref in pending else ""
            f.add("image-digest", b.where(d, f"container {c.get('name')}"), f"image {ref!r} is not pinned by digest{why}")


def pending_unused(f, opts, ran_bundles):
    """A pending entry no rendered image uses any more is stale: the list must stay exact."""
    if opts.strict_digests or not ran_bundles:
        return
    for ref in sorted(pending_digests(opts) - set(_pending_seen)):
        f.add("image-digest", opts.pending_digests, f"{ref} is listed as pending but no rendered image uses it: remove the line")


@check("dockerfile-digest", "dockerfile",
       "every base image of a Dockerfile is pinned by digest")
def _dockerfile(path, f, opts):
    args, stages = {}, set()
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().replace("\\\n", " ").splitlines()
    for ln in lines:
        m = re.match(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)", ln)
        if m:
            args[m.group(1)] = m.group(2).strip('"')
        m = re.match(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", ln, re.I)
        if not m:
            continue
        ref = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda x: args.get(x.group(1), x.group(0)), m.group(1))
        if ref in stages or ref == "scratch":
            pass
        elif not DIGEST_REF.match(ref):
            f.add("dockerfile-digest", path, f"FROM {ref}: not pinned by digest")
        if m.group(2):
            stages.add(m.group(2))


# --------------------------------------------------------------------------
# Workflows (parsed as plain strings: "on" stays a key)


def wf_jobs(w):
    return (w or {}).get("jobs") or {}


def wf_text(job):
    return json.dumps(job)


def needs_of(job):
    n = job.get("needs") or []
    return [n] if isinstance(n, str) else list(n)


def ancestors(jobs, name, seen=None):
    seen = set() if seen is None else seen
    for n in needs_of(jobs.get(name) or {}):
        if n not in seen:
            seen.add(n)
            ancestors(jobs, n, seen)
    return seen


def norm(expr):
    return re.sub(r"\s+", " ", str(expr or "")).replace('"', "'")


@check("cd-trust", "workflows",
       "deployments start only from CI runs of a push to this repository (workflow_run event and head repository checked) "
       "or manual runs of refs/heads/main")
def _cd_trust(wf, f):
    for fn, w in wf.items():
        on = (w or {}).get("on") or {}
        on = {on: None} if isinstance(on, str) else ({k: None for k in on} if isinstance(on, list) else on)
        if "workflow_run" not in on and "workflow_dispatch" not in on:
            continue
        jobs = wf_jobs(w)
        if not any("azure/login" in wf_text(j) or "uses" in j for j in jobs.values()):
            continue
        for name, job in jobs.items():
            conds = [norm(job.get("if"))] + [norm(jobs[a].get("if")) for a in ancestors(jobs, name)]
            text = " ".join(conds)
            if "workflow_run" in on and not ("workflow_run.event == 'push'" in text
                                             and "workflow_run.head_repository.full_name == github.repository" in text):
                f.add("cd-trust", f"{fn}: job {name}",
                      "runs for any successful CI whose head branch is named main, a fork's pull request included: "
                      "require github.event.workflow_run.event == 'push' and head_repository.full_name == github.repository")
            if "workflow_dispatch" in on and "github.ref == 'refs/heads/main'" not in text:
                f.add("cd-trust", f"{fn}: job {name}", "a manual run from any branch deploys it: require github.ref == 'refs/heads/main'")


def azure_logins(wf):
    """(workflow, job, environment expression, client-id expression) of each Azure login, reusable calls resolved."""
    out = []
    callers = {}
    for fn, w in wf.items():
        for name, job in wf_jobs(w).items():
            uses = str(job.get("uses", ""))
            if uses.startswith("./.github/workflows/"):
                callers.setdefault(os.path.basename(uses), []).append((fn, name, job.get("with") or {}))
    for fn, w in wf.items():
        for name, job in wf_jobs(w).items():
            for st in job.get("steps") or []:
                if not str(st.get("uses", "")).startswith("azure/login@"):
                    continue
                cid = norm((st.get("with") or {}).get("client-id"))
                env = norm(job.get("environment"))
                if "inputs." in cid or "inputs." in env:
                    for cfn, cname, cwith in callers.get(fn, []):
                        rc = re.sub(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}", lambda m: norm(cwith.get(m.group(1))), cid)
                        re_env = re.sub(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}", lambda m: norm(cwith.get(m.group(1))), env)
                        out.append((f"{cfn} -> {fn}", f"{cname}/{name}", re_env, rc))
                else:
                    out.append((fn, name, env, cid))
    return out


@check("azure-identity-per-env", "workflows",
       "every Azure login runs in a GitHub environment, and each environment uses its own identity")
def _identity(wf, f):
    by_cid = {}
    for fn, job, env, cid in azure_logins(wf):
        if not env:
            f.add("azure-identity-per-env", f"{fn}: job {job}", "logs in to Azure outside a GitHub environment (its OIDC subject is not bound to one)")
        by_cid.setdefault(cid, set()).add(env)
    for cid, envs in by_cid.items():
        if len(envs) > 1:
            f.add("azure-identity-per-env", f"client-id {cid}",
                  f"one Azure identity for environments {sorted(envs)}: build, dev and prod each need their own (least privilege, blast radius)")


@check("acr-roles", "workflows",
       "the pipeline needs only AcrPush on the registry: it builds on the runner and pushes, no az acr build / az acr show")
def _acr(wf, f):
    for fn, w in wf.items():
        for name, job in wf_jobs(w).items():
            for st in job.get("steps") or []:
                run = str(st.get("run", ""))
                for cmd in ("az acr build", "az acr show", "az acr repository show"):
                    if cmd in run:
                        f.add("acr-roles", f"{fn}: job {name}", f"`{cmd}` needs more than AcrPush (ACR Tasks / Reader): build on the runner and push")


def rollout_workflows(wf):
    for fn, w in wf.items():
        for name, job in wf_jobs(w).items():
            runs = " ".join(str(st.get("run", "")) for st in job.get("steps") or [])
            if re.search(r"kubectl (--namespace[ =]\S+ )?apply (-f|-k|--filename|--kustomize)", runs):
                yield fn, name, job, runs


@check("rollout-safety", "workflows",
       "a rollout pins the image by digest, passes the strict policy and the preflight first, waits, smoke-tests, and undoes a failure")
def _rollout(wf, f):
    for fn, name, job, runs in rollout_workflows(wf):
        steps = job.get("steps") or []
        need = {
            "pins the image by digest": "digest: ${DIGEST}" in runs or "@sha256" in runs,
            "refuses unpinned images (policy_check.py --strict-digests)": "policy_check.py --strict-digests" in runs,
            "checks the image accepts the overlay (arca_preflight.py)": "arca_preflight.py" in runs,
            "waits for the rollout (kubectl rollout status)": "rollout status" in runs,
            "smoke-tests through the public URL": "/readyz" in runs and "curl" in runs,
            "undoes a failed rollout (kubectl rollout undo, if: failure())": any(
                "rollout undo" in str(st.get("run", "")) and "failure()" in str(st.get("if", "")) for st in steps),
            "replaces Jobs rather than patching their immutable template": "delete job" in runs,
        }
        for what, ok in need.items():
            if not ok:
                f.add("rollout-safety", f"{fn}: job {name}", f"applies without: {what}")


@check("image-supply-chain", "workflows",
       "the image is built in CI on every change; releases carry an SBOM and a signature, which the rollout verifies")
def _supply(wf, f):
    every = " ".join(wf_text(j) for w in wf.values() for j in wf_jobs(w).values())
    ci_builds = False
    for fn, w in wf.items():
        on = (w or {}).get("on") or {}
        keys = [on] if isinstance(on, str) else list(on)
        if "pull_request" in keys:
            ci_builds |= any("docker/build-push-action" in wf_text(j) or "docker build" in wf_text(j) for j in wf_jobs(w).values())
    if not ci_builds:
        f.add("image-supply-chain", "workflows", "no pull-request workflow builds the image: Dockerfile breakage shows only at release")
    if "build-push-action" in every and '"sbom": "true"' not in every:
        f.add("image-supply-chain", "workflows", "the release image is built without an SBOM (sbom: true)")
    if "build-push-action" not in every and "az acr build" in every and "--sbom" not in every:
        f.add("image-supply-chain", "workflows", "the release image is built without an SBOM")
    if "cosign sign" not in every:
        f.add("image-supply-chain", "workflows", "the release image is not signed (cosign sign)")
    if "cosign verify" not in every:
        f.add("image-supply-chain", "workflows", "the rollout does not verify the image's signature (cosign verify)")


# --------------------------------------------------------------------------
# Driver


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered", nargs="*")
    ap.add_argument("--workflows")
    ap.add_argument("--dockerfile", action="append", default=[])
    ap.add_argument("--pending-digests")
    ap.add_argument("--strict-digests", action="store_true")
    ap.add_argument("--expect", default="")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        for cid, (scope, desc, _) in CHECKS.items():
            print(f"{cid:28} {scope:10} {desc}")
        return 0
    f = Findings()
    opts = a
    for path in a.rendered:
        b = Bundle(path)
        for cid, (scope, _, fn) in CHECKS.items():
            if scope == "manifests":
                fn(b, f)
            elif scope == "bundle+opts":
                fn(b, f, opts)
    if a.workflows:
        wf = {}
        for fn_ in sorted(os.listdir(a.workflows)):
            if fn_.endswith((".yml", ".yaml")):
                with open(os.path.join(a.workflows, fn_), encoding="utf-8") as fh:
                    wf[fn_] = yaml.load(fh, Loader=yaml.BaseLoader)  # "on" stays a string key
        for cid, (scope, _, fn) in CHECKS.items():
            if scope == "workflows":
                fn(wf, f)
    pending_unused(f, opts, a.rendered)
    for path in a.dockerfile:
        for cid, (scope, _, fn) in CHECKS.items():
            if scope == "dockerfile":
                fn(path, f, opts)
    for cid, where, msg in f.items:
        print(f"ERROR [{cid}] {where}: {msg}")
    for ref in sorted(_pending_seen):
        print(f"NOTE  [image-digest] {ref}: digest pending ({opts.pending_digests}); the rollout refuses it until it is filled in")
    fired = {cid for cid, _, _ in f.items}
    if a.expect:
        want = [x for x in a.expect.split(",") if x]
        unknown = [x for x in want if x not in CHECKS]
        missing = [x for x in want if x in CHECKS and x not in fired]
        for x in unknown:
            print(f"SELFTEST unknown check id {x}")
        for x in missing:
            print(f"SELFTEST check {x} did not fire")
        ok = not unknown and not missing
        print(f"policy_check self-test: {len(want) - len(missing) - len(unknown)}/{len(want)} expected checks fired -> {'OK' if ok else 'FAIL'}")
        return 0 if ok else 1
    print(f"policy_check: {len(a.rendered)} bundles, {len(f.items)} findings, {len(CHECKS)} checks -> {'FAIL' if f.items else 'OK'}")
    return 1 if f.items else 0


if __name__ == "__main__":
    sys.exit(main())
