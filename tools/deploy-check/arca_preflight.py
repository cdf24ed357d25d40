#!/usr/bin/env python3
"""Preflight: does this Arca image accept this rendered overlay's configuration?

Runs `arca config` (which loads and validates the configuration exactly as
`serve` does, then prints it) in the image, with the Arca container's
environment and its configuration files as the overlay renders them. The
store URI, which lives in a Secret nobody here may read, is replaced by the
overlay's own template (annotation arca.io/store-url-template on the
Deployment) with a dummy password: same scheme, hosts and options.

So a binary that refuses the overlay's store (a mongodb:// URI before the
MongoDB engine exists, a missing config key...) stops the rollout before
anything is applied.

  arca_preflight.py RELEASE.yaml IMAGE[@DIGEST]     (needs docker and PyYAML)
"""
import os
import subprocess
import sys
import tempfile

import yaml

PLACEHOLDER_PEM = "# preflight placeholder for a mounted Secret file\n"


def main():
    release, image = sys.argv[1], sys.argv[2]
    with open(release, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    cms = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs if d.get("kind") == "ConfigMap"}
    dep = next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "arca")
    ns = dep["metadata"].get("namespace")
    ps = dep["spec"]["template"]["spec"]
    c = next(c for c in ps["containers"] if c["name"] == "arca")
    template = (dep["metadata"].get("annotations") or {}).get("arca.io/store-url-template")
    work = tempfile.mkdtemp(prefix="arca-preflight-")
    env_lines = []
    for e in c.get("env") or []:
        if "value" in e:
            env_lines.append(f"{e['name']}={e['value']}")
            continue
        ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
        if ref:
            value = (cms[(ns, ref["name"])].get("data") or {}).get(ref["key"])
            if value is None and not ref.get("optional"):
                sys.exit(f"preflight: {e['name']}: ConfigMap {ref['name']} has no key {ref['key']}")
            if value is not None:
                env_lines.append(f"{e['name']}={value}")
            continue
        sys.exit(f"preflight: {e['name']} comes from {list((e.get('valueFrom') or {}))}: not supported here")
    vols = {v["name"]: v for v in ps.get("volumes") or []}
    mounts = []
    for m in c.get("volumeMounts") or []:
        v = vols[m["name"]]
        host = os.path.join(work, m["name"])
        os.makedirs(host, exist_ok=True)
        if "configMap" in v:
            data = cms[(ns, v["configMap"]["name"])].get("data") or {}
            items = v["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for it in items:
                with open(os.path.join(host, it["path"]), "w", encoding="utf-8") as fh:
                    fh.write(data[it["key"]])
        elif "secret" in v:
            items = v["secret"].get("items") or []
            for it in items:
                content = PLACEHOLDER_PEM
                if it["key"] == "uri":
                    if not template:
                        sys.exit("preflight: the store URI Secret is mounted but the Deployment has no arca.io/store-url-template")
                    content = template.replace("{password}", "preflight") + "\n"
                with open(os.path.join(host, it["path"]), "w", encoding="utf-8") as fh:
                    fh.write(content)
        os.chmod(host, 0o755)
        for root, _, files in os.walk(host):
            for fn in files:
                os.chmod(os.path.join(root, fn), 0o644)
        mounts += ["-v", f"{host}:{m['mountPath']}:ro"]
    envfile = os.path.join(work, "env")
    with open(envfile, "w", encoding="utf-8") as fh:
        fh.write("\n".join(env_lines) + "\n")
    cmd = ["docker", "run", "--rm", "--read-only", "--network", "none", "--user", "65532:65532",
           "--tmpfs", "/tmp", "--env-file", envfile, *mounts, image, "config"]
    print("preflight:", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    print(f"preflight: the image {'accepts' if rc == 0 else 'REFUSES'} this overlay's configuration")
    return rc


if __name__ == "__main__":
    sys.exit(main())
