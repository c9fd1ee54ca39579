"""Reads deploy/kubernetes/poolserve.yaml and prints what the deploy test checks, as JSON: the
embedded poolserve config (also written to OUT_TOML), the Deployment's probes, ports, grace
period and the files its Secret volumes mount, and the Service's ports.

    k8s_manifest.py MANIFEST OUT_TOML
"""

import json
import sys
import tomllib

import yaml

manifest, out_toml = sys.argv[1], sys.argv[2]
docs = {d["kind"]: d for d in yaml.safe_load_all(open(manifest))}
config_text = docs["ConfigMap"]["data"]["poolserve.toml"]
open(out_toml, "w").write(config_text)
config = tomllib.loads(config_text)
pod = docs["Deployment"]["spec"]["template"]["spec"]
container = pod["containers"][0]
ports = {p["name"]: p["containerPort"] for p in container["ports"]}


def probe(name):
    p = container[name]
    if "httpGet" in p:
        port = p["httpGet"]["port"]
        return {"path": p["httpGet"]["path"], "port": ports.get(port, port)}
    return {"grpc": p["grpc"]["port"]}


volumes = {v["name"]: v for v in pod.get("volumes", [])}
# Every file a Secret volume puts in the container: path -> [secret name, key].
secret_files = {}
for mount in container.get("volumeMounts", []):
    secret = volumes.get(mount["name"], {}).get("secret")
    if secret is None:
        continue
    for item in secret.get("items", []):
        path = mount["mountPath"].rstrip("/") + "/" + item["path"]
        secret_files[path] = [secret["secretName"], item["key"]]


print(json.dumps({
    "drain_timeout": config["drain_timeout"],
    "drain_delay": config.get("drain_delay"),
    "pre_stop": container.get("lifecycle", {}).get("preStop"),
    "admin_port": int(config["admin"]["listen"].rsplit(":", 1)[1]),
    "admin_token_file": config["admin"].get("token_file"),
    "secret_files": secret_files,
    "servers": {s["name"]: [s["protocol"], int(s["listen"].rsplit(":", 1)[1])] for s in config["server"]},
    "grace_seconds": pod["terminationGracePeriodSeconds"],
    "container_ports": ports,
    "liveness": probe("livenessProbe"),
    "readiness": probe("readinessProbe"),
    "readiness_window_seconds": container["readinessProbe"].get("periodSeconds", 10)
    * container["readinessProbe"].get("failureThreshold", 3),
    "startup": probe("startupProbe"),
    "config_mount": container["volumeMounts"][0]["mountPath"],
    "args": container["args"],
    "service_targets": [p["targetPort"] for p in docs["Service"]["spec"]["ports"]],
}))
