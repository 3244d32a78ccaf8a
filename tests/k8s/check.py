#!/usr/bin/env python3
"""Render, validate and lint what an operator applies from deploy/k8s.

For every overlay and example (each directory under deploy/k8s/overlays and deploy/k8s/examples
with a kustomization.yaml) and for deploy/k8s/monitoring:
  1. render it with `kubectl kustomize`;
  2. validate every object offline: built-in kinds against the Kubernetes JSON schemas that
     kubernetes-validate ships (strict: unknown fields are errors), at each --kubernetes-version;
     the Prometheus Operator kinds (PodMonitor, PrometheusRule) against the schemas in
     tests/k8s/schemas, written from the operator's CRDs for the fields used here;
  3. lint the security settings of every pod template and Service, secrets, probes, resources;
  4. run `data-exporter config check` on every config the workloads mount, with the container's
     environment and flags (as `serve` in the pod would load it), then check that what the
     config reads and writes is mounted (secrets from Secrets, state on writable volumes, the
     embedded queue on a PersistentVolumeClaim) and agrees with the pod (ports, grace period);
  5. check that every metric the alert rules and the Grafana dashboard use exists in
     host/src/metrics.rs.
Then a self-test breaks copies of the rendered manifests in known ways and fails unless each
break is caught. Exit status 0 when everything holds, 1 with the list of violations.
"""

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.schema.json",
}
SECRET_WORDS = re.compile(r"(password|passwd|secret|token|credential|private[_.-]?key|api[_.-]?key)", re.I)
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


# --- rendering ------------------------------------------------------------------------------

def targets():
    """Every kustomization an operator applies: the overlays (leaves), the examples, monitoring."""
    found = sorted(p.parent for d in ("overlays", "examples") for p in (K8S / d).rglob("kustomization.yaml"))
    found.append(K8S / "monitoring")
    return found


KUBECTL = "kubectl"


def render(path):
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def name(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --- schemas --------------------------------------------------------------------------------

class Schemas:
    """kubernetes-validate's strict schemas, loaded once per version and kind."""

    def __init__(self, versions):
        self.versions = versions
        self.cache = {}
        self.crds = {k: json.loads((SCHEMAS / f).read_text()) for k, f in CRD_SCHEMAS.items()}

    def validator(self, version, kind, api_version):
        key = (version, kind, api_version)
        if key not in self.cache:
            have = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)]
            if not have:
                raise SystemExit(f"kubernetes-validate {kv.__version__} has no schemas for {version}")
            schema_dir = f"v{have[-1]}-local-strict"
            group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
            try:
                schema = kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group}.json", version)
            except FileNotFoundError:
                self.cache[key] = None
                return None
            defs = self.defs(schema_dir, version)
            registry = kv.Resource.from_contents(schema) @ kv.Registry()
            registry = defs @ registry
            self.cache[key] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
        return self.cache[key]

    def defs(self, schema_dir, version):
        key = ("defs", schema_dir)
        if key not in self.cache:
            self.cache[key] = kv.Resource.from_contents(
                kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version))
        return self.cache[key]

    def check(self, obj, problems):
        kind, api = obj.get("kind"), obj.get("apiVersion", "")
        crd = self.crds.get((api, kind))
        if crd is not None:
            for e in jsonschema.Draft202012Validator(crd).iter_errors(obj):
                problems.append(f"{name(obj)}: schema ({api} {kind}, tests/k8s/schemas): "
                                f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}")
            return
        for version in self.versions:
            v = self.validator(version, kind, api)
            if v is None:
                problems.append(f"{name(obj)}: no schema for {api} {kind} in Kubernetes {version}")
                continue
            for e in v.iter_errors(obj):
                problems.append(f"{name(obj)}: schema (Kubernetes {version}): "
                                f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}")


# --- the host's metrics ---------------------------------------------------------------------

def known_metrics():
    """Every series name host/src/metrics.rs exports (counters get _total, histograms
    _bucket, _sum and _count)."""
    src = (ROOT / "host" / "src" / "metrics.rs").read_text()
    prefix = re.search(r'Registry::with_prefix\("([a-z_]+)"\)', src).group(1)
    types = {}
    for field, ty in re.findall(r"pub (\w+): ([^;\n]+),", src):
        for t in ("Counter", "Histogram", "Gauge"):
            if re.search(rf"\b{t}\b", ty):
                types[field] = t
                break
    names = set()
    for metric, field in re.findall(r'register\(\s*"([a-z0-9_]+)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*m\.(\w+)\.clone\(\)', src):
        base = f"{prefix}_{metric}"
        t = types.get(field)
        if t == "Counter":
            names.add(base + "_total")
        elif t == "Histogram":
            names |= {base + "_bucket", base + "_sum", base + "_count"}
        elif t == "Gauge":
            names.add(base)
        else:
            raise SystemExit(f"host/src/metrics.rs: cannot tell the type of field {field} ({metric})")
    if len(names) < 10:
        raise SystemExit(f"host/src/metrics.rs: found only {sorted(names)}: has its layout changed?")
    return prefix, names


def exprs_in(value):
    """PromQL expressions in a dashboard or rule object (every `expr`, `query` and `definition`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("expr", "query", "definition") and isinstance(v, str):
                yield v
            else:
                yield from exprs_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from exprs_in(v)


def check_metrics(objs, metrics, problems):
    prefix, names = metrics
    for obj in objs:
        sources = []
        if obj.get("kind") == "PrometheusRule":
            sources = [(r.get("alert") or r.get("record"), r.get("expr", ""))
                       for g in obj["spec"].get("groups", []) for r in g.get("rules", [])]
        elif obj.get("kind") == "ConfigMap":
            for key, text in (obj.get("data") or {}).items():
                if key.endswith(".json"):
                    try:
                        sources += [(key, e) for e in exprs_in(json.loads(text))]
                    except json.JSONDecodeError as e:
                        problems.append(f"{name(obj)}: {key} is not JSON: {e}")
        for where, expr in sources:
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                problems.append(f"{name(obj)}: {where}: unbalanced brackets in {expr!r}")
            for m in sorted(set(re.findall(rf"\b{prefix}_[a-z0-9_]+\b", expr))):
                if m not in names:
                    problems.append(f"{name(obj)}: {where}: unknown metric {m} (not in host/src/metrics.rs)")


# --- pods -----------------------------------------------------------------------------------

def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        return spec
    if obj["kind"] == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {})


def pod_labels(obj):
    if obj["kind"] == "Pod":
        return obj.get("metadata", {}).get("labels", {})
    return obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}) or {}


def selects(selector, labels):
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        val, op = labels.get(e["key"]), e["operator"]
        if op == "In" and val not in e.get("values", []):
            return False
        if op == "NotIn" and val in e.get("values", []):
            return False
        if op == "Exists" and e["key"] not in labels:
            return False
        if op == "DoesNotExist" and e["key"] in labels:
            return False
    return True


def lint_pod(obj, problems):
    """Security, probes and resources of one pod template."""
    w = name(obj)
    spec = pod_spec(obj)
    psc = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{w}: {flag} is set")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{w}: automountServiceAccountToken must be false (the host never calls the API)")
    if spec.get("enableServiceLinks") is not False:
        problems.append(f"{w}: enableServiceLinks must be false: the pod needs no Service variables (the "
                        f"host ignores those of Services named data-exporter*; keep the environment to what it sets)")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            problems.append(f"{w}: volume {v['name']} is a hostPath")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    containers = [(c, False) for c in spec.get("containers") or []] + \
                 [(c, True) for c in spec.get("initContainers") or []]
    if not spec.get("containers"):
        problems.append(f"{w}: no containers")
    for c, init in containers:
        where = f"{w}: container {c.get('name')}"
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        user = sc.get("runAsUser", psc.get("runAsUser"))
        if non_root is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if user == 0:
            problems.append(f"{where}: runAsUser is 0 (root)")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if caps.get("add"):
            problems.append(f"{where}: capabilities add {caps['add']}")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile is not RuntimeDefault (or Localhost)")
        res = c.get("resources") or {}
        for part, keys in (("requests", ("cpu", "memory")), ("limits", ("cpu", "memory"))):
            for k in keys:
                if k not in (res.get(part) or {}):
                    problems.append(f"{where}: resources.{part}.{k} is not set")
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] and "@sha256:" not in image:
            problems.append(f"{where}: image {image!r} has no tag")
        elif image.endswith(":latest"):
            problems.append(f"{where}: image {image!r} uses :latest")
        for e in c.get("env") or []:
            if "value" in e and SECRET_WORDS.search(e["name"]) and not str(e["value"]).startswith("/"):
                problems.append(f"{where}: env {e['name']} carries a secret value inline: use a mounted Secret")
        if not init:
            if not c.get("livenessProbe"):
                problems.append(f"{where}: no livenessProbe")
            if not c.get("readinessProbe"):
                problems.append(f"{where}: no readinessProbe")


def is_exporter(c):
    return (c.get("args") or [None])[0] == "serve" or c.get("name") == "data-exporter"


def serve_flags(c):
    """The --config the container gives `serve` (if any) and its other flags; None when its args
    do not run `serve`."""
    args = list(c.get("args") or [])
    if args[:1] != ["serve"]:
        return None
    flags, config, it = [], None, iter(args[1:])
    for a in it:
        if a in ("--config", "-c"):
            config = next(it, None)
        elif a.startswith("--config="):
            config = a.split("=", 1)[1]
        else:
            flags.append(a)
    return config, flags


def env_of(c):
    env, skipped = {}, []
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            skipped.append(e["name"])
    return env, skipped


def service_link_env(services):
    """What the kubelet puts in a container's environment for each Service when
    enableServiceLinks is not false (docker-links style)."""
    env = {}
    for s in services:
        n = s["metadata"]["name"].upper().replace("-", "_")
        ports = s.get("spec", {}).get("ports") or []
        env[f"{n}_SERVICE_HOST"] = "10.0.0.1"
        if ports:
            env[f"{n}_SERVICE_PORT"] = str(ports[0]["port"])
            env[f"{n}_PORT"] = f"tcp://10.0.0.1:{ports[0]['port']}"
        for p in ports:
            proto = p.get("protocol", "TCP")
            base = f"{n}_PORT_{p['port']}_{proto}"
            env[base] = f"{proto.lower()}://10.0.0.1:{p['port']}"
            env[base + "_PROTO"] = proto.lower()
            env[base + "_PORT"] = str(p["port"])
            env[base + "_ADDR"] = "10.0.0.1"
            if p.get("name"):
                env[f"{n}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
    return env


def mount_for(c, spec, path):
    """The volume mount holding `path` (longest mountPath prefix), its volume, and the path inside it."""
    best = None
    for m in c.get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[0]["mountPath"].rstrip("/")):
                best = (m, None)
    if best is None:
        return None, None, None
    m = best[0]
    vol = next((v for v in spec.get("volumes") or [] if v["name"] == m["name"]), None)
    rel = path[len(m["mountPath"].rstrip("/")):].lstrip("/")
    if m.get("subPath"):
        rel = f"{m['subPath']}/{rel}".rstrip("/")
    return m, vol, rel


def volume_kind(obj, vol, mount):
    if vol is None:
        if obj["kind"] == "StatefulSet" and any(
                t["metadata"]["name"] == mount["name"] for t in obj["spec"].get("volumeClaimTemplates") or []):
            return "pvc"
        return "missing"
    for k in ("configMap", "secret", "emptyDir", "persistentVolumeClaim", "projected", "ephemeral", "image"):
        if k in vol:
            if k == "projected":
                kinds = {next(iter(s)) for s in vol["projected"].get("sources") or []}
                return "secret" if kinds <= {"secret"} else "projected"
            return {"persistentVolumeClaim": "pvc", "ephemeral": "emptyDir"}.get(k, k)
    return next((k for k in vol if k != "name"), "unknown")


SECRET_READS = re.compile(r"^(queue\.key_file|admin_token_file|secrets_dir|http\.client_key_file|.*properties_from_files\..*"
                          r"|.*properties\.(ssl\.key\.location|ssl\.keystore\.location|sasl\.kerberos\.keytab))$")


def check_exporter(obj, c, objs, bin_path, tmp, problems, summaries):
    """Run `data-exporter config check` on the config this container mounts, as serve loads it,
    then hold the pod to what the config says."""
    w = f"{name(obj)}: container {c['name']}"
    spec = pod_spec(obj)
    env, skipped = env_of(c)
    serve = serve_flags(c)
    if serve is None:
        problems.append(f"{w}: args must start with `serve`")
        return
    config_arg, flags = serve
    config_path = config_arg or env.get("DATA_EXPORTER_CONFIG")
    if not config_path:
        problems.append(f"{w}: no config: pass --config or set DATA_EXPORTER_CONFIG")
        return
    if skipped:
        problems.append(f"{w}: env {skipped} come from elsewhere (valueFrom): set DATA_EXPORTER_* as values or in the file")
    m, vol, rel = mount_for(c, spec, config_path)
    if vol is None or "configMap" not in vol:
        problems.append(f"{w}: the config {config_path} is not on a ConfigMap volume")
        return
    cm_name = vol["configMap"]["name"]
    for item in vol["configMap"].get("items") or []:
        if item["path"] == rel:
            rel = item["key"]
    cm = next((o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name), None)
    if cm is None or rel not in (cm.get("data") or {}):
        problems.append(f"{w}: ConfigMap {cm_name} with key {rel} is not in the manifests")
        return
    text = cm["data"][rel]
    file = Path(tmp) / f"{obj['metadata']['name']}-{c['name']}-{len(summaries)}.toml"
    file.write_text(text)
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    run_env.update({k: v for k, v in env.items() if k != "DATA_EXPORTER_CONFIG"})
    if spec.get("enableServiceLinks") is not False:
        run_env.update(service_link_env([o for o in objs if o["kind"] == "Service"]))
    out = subprocess.run([bin_path, "config", "check", str(file), "--json", *flags],
                         capture_output=True, text=True, env=run_env)
    try:
        result = json.loads(out.stdout)
    except json.JSONDecodeError:
        problems.append(f"{w}: `data-exporter config check` failed: {out.stderr.strip() or out.stdout.strip()}")
        return
    if not result.get("ok"):
        for e in result.get("errors", []):
            problems.append(f"{w}: config {cm_name}/{rel}: {e}")
        return
    summaries.append((w, result))
    for warning in result.get("warnings", []):
        problems.append(f"{w}: config {cm_name}/{rel}: warning: {warning}")
    lint_config_text(f"{w}: config {cm_name}/{rel}", text, problems)

    # What the config reads is mounted; secrets come from Secrets.
    for r in result["reads"]:
        key, path = r["key"], r["path"]
        mnt, v, _ = mount_for(c, spec, path)
        if mnt is None:
            problems.append(f"{w}: {key} {path} is on no volume (the root filesystem is read-only and has none)")
            continue
        kind = volume_kind(obj, v, mnt)
        if SECRET_READS.match(key) and kind != "secret":
            problems.append(f"{w}: {key} {path} is on a {kind} volume, not a Secret")
    # What it writes is on a writable volume; the embedded queue's on a PersistentVolumeClaim.
    for wr in result["writes"]:
        key, path = wr["key"], wr["path"]
        mnt, v, _ = mount_for(c, spec, path)
        if mnt is None:
            problems.append(f"{w}: {key} {path} is on no volume (the root filesystem is read-only)")
            continue
        kind = volume_kind(obj, v, mnt)
        if mnt.get("readOnly") or kind not in ("emptyDir", "pvc"):
            problems.append(f"{w}: {key} {path} must be on a writable emptyDir or PersistentVolumeClaim, not {kind}"
                            f"{' (readOnly)' if mnt.get('readOnly') else ''}")
        if key == "data_dir" and result["queue"]["backend"] == "embedded" and kind != "pvc":
            problems.append(f"{w}: the embedded queue lives in data_dir {path}, on a volume of kind {kind}: put it on "
                            f"a PersistentVolumeClaim (a StatefulSet's volumeClaimTemplates), or a 202 is lost "
                            f"with the pod")
    if result["queue"]["backend"] == "embedded" and obj["kind"] == "Deployment":
        replicas = obj["spec"].get("replicas", 1)
        strategy = (obj["spec"].get("strategy") or {}).get("type", "RollingUpdate")
        if replicas != 1 or strategy != "Recreate":
            problems.append(f"{w}: an embedded queue in a Deployment needs replicas 1 and strategy Recreate "
                            f"(two pods must never share it): prefer a StatefulSet")
    mnt, _, _ = mount_for(c, spec, "/tmp/x")
    if mnt is None or mnt["mountPath"] != "/tmp" or mnt.get("readOnly"):
        problems.append(f"{w}: /tmp is not a writable volume (the root filesystem is read-only)")

    # Ports: the public one is the container's `http` port and the probes'; the admin API is
    # on loopback and on no port, Service or NetworkPolicy.
    listen_port = int(result["listen"].rsplit(":", 1)[1])
    admin_port = int(result["admin_listen"].rsplit(":", 1)[1])
    if not result["admin_loopback"]:
        problems.append(f"{w}: admin_listen {result['admin_listen']} is not loopback: keep the admin API in the pod")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    if admin_port in ports.values():
        problems.append(f"{w}: the admin port {admin_port} is a container port")
    if ports.get("http") != listen_port:
        problems.append(f"{w}: container port `http` ({ports.get('http')}) is not listen's port {listen_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", None)):
        p = c.get(probe)
        if not p:
            continue
        get = p.get("httpGet") or {}
        port = ports.get(get.get("port"), get.get("port"))
        if port != listen_port or (path and get.get("path") != path):
            problems.append(f"{w}: {probe} must be GET {path or '/healthz'} on port {listen_port}")
    for s in objs:
        if s["kind"] != "Service" or not selects({"matchLabels": s["spec"].get("selector") or {}}, pod_labels(obj)):
            continue
        for p in s["spec"].get("ports") or []:
            target = p.get("targetPort", p["port"])
            target = ports.get(target, target)
            if admin_port in (p["port"], target) or "admin" in str(p.get("name", "")):
                problems.append(f"{name(s)}: exposes the admin port {admin_port}")
            elif target != listen_port:
                problems.append(f"{name(s)}: targets port {target}, not the public port {listen_port}")
    policies = [n for n in objs if n["kind"] == "NetworkPolicy"
                and selects(n["spec"].get("podSelector"), pod_labels(obj))]
    if not any("Ingress" in (n["spec"].get("policyTypes") or []) for n in policies):
        problems.append(f"{w}: no NetworkPolicy restricts ingress to these pods")
    for n in policies:
        for rule in n["spec"].get("ingress") or []:
            rports = [p.get("port") for p in rule.get("ports") or []]
            if not rports:
                problems.append(f"{name(n)}: an ingress rule admits every port (the public one, {listen_port}, only)")
            for p in rports:
                if ports.get(p, p) != listen_port:
                    problems.append(f"{name(n)}: ingress admits port {p}, not only the public port {listen_port}")
            if result["accept_report_ids"]:
                for peer in rule.get("from") or [{}]:
                    ns = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                    if "ipBlock" not in peer and ns.get("kubernetes.io/metadata.name") != "monitoring":
                        problems.append(f"{name(n)}: limits.accept_report_ids is on, so only relaying exporters "
                                        f"(ipBlocks) and monitoring may reach the port; it admits {peer}")
            if not rule.get("from"):
                problems.append(f"{name(n)}: an ingress rule admits any source")

    # Graceful stop: longer than the preStop pause plus shutdown_grace_ms.
    grace = spec.get("terminationGracePeriodSeconds", 30)
    pause = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
    need = pause + result["shutdown_grace_ms"] / 1000
    if grace <= need:
        problems.append(f"{w}: terminationGracePeriodSeconds {grace} is not longer than the preStop pause ({pause} s) "
                        f"plus shutdown_grace_ms ({result['shutdown_grace_ms']} ms)")


def lint_config_text(where, text, problems):
    """Secrets written into a config file rather than named by path."""
    try:
        import tomllib
        data = tomllib.loads(text)
    except Exception as e:  # config check already parsed it; this is belt and braces
        problems.append(f"{where}: not TOML: {e}")
        return

    def walk(v, path):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, path + [k])
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, path + [str(i)])
        elif isinstance(v, str):
            key = path[-1] if path else ""
            if PRIVATE_KEY.search(v):
                problems.append(f"{where}: {'.'.join(path)} holds a private key inline")
            elif (SECRET_WORDS.search(key) and not key.endswith(("_file", "_dir")) and v
                  and "properties_from_files" not in path and not v.startswith("/")
                  and key not in ("secretRef",)):
                problems.append(f"{where}: {'.'.join(path)} holds a secret inline: mount it from a Secret "
                                f"(properties_from_files, secretRef, *_file)")
    walk(data, [])


def lint(objs, metrics, bin_path, tmp, schemas):
    problems, summaries = [], []
    for obj in objs:
        schemas.check(obj, problems)
        kind = obj.get("kind")
        if kind == "Secret" and (obj.get("data") or obj.get("stringData")):
            problems.append(f"{name(obj)}: a Secret with its values inline: create it with kubectl (deploy/k8s/README.md)")
        if kind == "ConfigMap":
            for k, v in (obj.get("data") or {}).items():
                if PRIVATE_KEY.search(v):
                    problems.append(f"{name(obj)}: {k} holds a private key")
        if kind in WORKLOAD_KINDS:
            lint_pod(obj, problems)
            exporters = [c for c in pod_spec(obj).get("containers") or [] if is_exporter(c)]
            if not exporters:
                problems.append(f"{name(obj)}: no data-exporter container (args `serve`)")
            for c in exporters:
                check_exporter(obj, c, objs, bin_path, tmp, problems, summaries)
        if kind == "HorizontalPodAutoscaler":
            ref = obj["spec"]["scaleTargetRef"]
            target = next((o for o in objs if o["kind"] == ref["kind"] and o["metadata"]["name"] == ref["name"]), None)
            if target is None:
                problems.append(f"{name(obj)}: scales {ref['kind']}/{ref['name']}, which is not in the manifests")
            elif "replicas" in target["spec"]:
                problems.append(f"{name(obj)}: {name(target)} sets spec.replicas, which every apply would reset "
                                f"under the autoscaler: leave it out")
        if kind in ("PodDisruptionBudget", "Service"):
            sel = obj["spec"].get("selector")
            sel = sel if kind == "PodDisruptionBudget" else {"matchLabels": sel or {}}
            if not any(o["kind"] in WORKLOAD_KINDS and selects(sel, pod_labels(o)) for o in objs):
                problems.append(f"{name(obj)}: its selector matches no workload's pods")
    # Kafka: every process seals with the same key Secret.
    keys = set()
    for w, s in summaries:
        if s["queue"]["backend"] == "kafka":
            keys.add(next((r["path"] for r in s["reads"] if r["key"] == "queue.key_file"), None))
    if len(keys) > 1:
        problems.append(f"processes on the Kafka queue read different queue keys: {sorted(map(str, keys))}")
    check_metrics(objs, metrics, problems)
    return problems, summaries


def lint_dockerfile(problems):
    path = ROOT / "deploy" / "Dockerfile"
    text = path.read_text()
    stages = re.split(r"(?m)^FROM\s+", text)[1:]
    if not stages:
        problems.append("deploy/Dockerfile: no FROM")
        return
    for s in stages:
        image = s.split()[0]
        if image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image and "$" not in image):
            problems.append(f"deploy/Dockerfile: FROM {image} is not pinned to a tag")
    users = re.findall(r"(?m)^USER\s+(\S+)", stages[-1])
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append("deploy/Dockerfile: the final stage does not run as a non-root USER")
    for src in re.findall(r"(?m)^COPY\s+(?!--from)(?:--\S+\s+)*(\S+)\s+\S+$", text):
        if src != "." and not (ROOT / src).exists():
            problems.append(f"deploy/Dockerfile: COPY {src}: no such path")
    ignore = (ROOT / ".dockerignore").read_text().split()
    if "target" not in ignore:
        problems.append(".dockerignore: target/ is not ignored")


# --- self-test ------------------------------------------------------------------------------

def find(objs, kind, pred=lambda o: True):
    return next(o for o in objs if o["kind"] == kind and pred(o))


def exporter_container(objs):
    w = next(o for o in objs if o["kind"] in WORKLOAD_KINDS)
    return w, pod_spec(w), next(c for c in pod_spec(w)["containers"] if is_exporter(c))


def set_config(objs, edit):
    cm = find(objs, "ConfigMap", lambda o: "data-exporter.toml" in (o.get("data") or {}))
    cm["data"]["data-exporter.toml"] = edit(cm["data"]["data-exporter.toml"])


def key_volume(spec):
    return next(v for v in spec["volumes"] if v["name"] == "queue-key")


def breaks():
    """(overlay, what it breaks, expected words in a violation, mutation)."""
    def spec_edit(f):
        def m(objs):
            w, spec, c = exporter_container(objs)
            f(w, spec, c)
        return m

    return [
        ("single", "root filesystem writable", "readOnlyRootFilesystem",
         spec_edit(lambda w, s, c: c["securityContext"].update(readOnlyRootFilesystem=False))),
        ("single", "runs as root", "runAsNonRoot",
         spec_edit(lambda w, s, c: (c["securityContext"].pop("runAsNonRoot"), s["securityContext"].pop("runAsNonRoot"),
                                    s["securityContext"].update(runAsUser=0)))),
        ("single", "privilege escalation", "allowPrivilegeEscalation",
         spec_edit(lambda w, s, c: c["securityContext"].update(allowPrivilegeEscalation=True))),
        ("scaled", "capabilities kept", "drop ALL",
         spec_edit(lambda w, s, c: c["securityContext"].pop("capabilities"))),
        ("single", "no seccomp profile", "seccompProfile",
         spec_edit(lambda w, s, c: s["securityContext"].pop("seccompProfile"))),
        ("single", "no liveness probe", "livenessProbe",
         spec_edit(lambda w, s, c: c.pop("livenessProbe"))),
        ("single", "readiness on the wrong path", "readinessProbe must be GET /readyz",
         spec_edit(lambda w, s, c: c["readinessProbe"]["httpGet"].update(path="/healthz"))),
        ("scaled", "no resource limits", "resources.limits.memory",
         spec_edit(lambda w, s, c: c["resources"].pop("limits"))),
        ("single", "admin port in the Service", "exposes the admin port",
         lambda objs: find(objs, "Service")["spec"]["ports"].append(
             {"name": "admin", "port": 6781, "targetPort": 6781, "protocol": "TCP"})),
        ("single", "admin API off loopback", "is not loopback",
         lambda objs: set_config(objs, lambda t: t.replace('admin_listen = "127.0.0.1:6781"',
                                                           'admin_listen = "0.0.0.0:6781"'))),
        ("single", "a Secret inline", "values inline",
         lambda objs: objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "leak"},
                                   "stringData": {"password": "hunter2"}})),
        ("scaled", "a Kafka password in the config", "holds a secret inline",
         lambda objs: set_config(objs, lambda t: t + '\n[queue.kafka.properties]\n"sasl.password" = "hunter2"\n')),
        ("single", "service links on", "enableServiceLinks must be false",
         spec_edit(lambda w, s, c: s.update(enableServiceLinks=True))),
        ("single", "an unknown config key", "unknown field",
         lambda objs: set_config(objs, lambda t: t.replace("[queue]", "[queue]\nmax_megabytes = 1"))),
        ("single", "--role ingest on the embedded queue", 'needs a queue that processes share',
         spec_edit(lambda w, s, c: c.update(args=["serve", "--role", "ingest"]))),
        ("scaled", "Kafka without a queue key", "needs queue.key_file",
         lambda objs: set_config(objs, lambda t: re.sub(r"(?m)^key_file = .*$", "", t))),
        ("single", "grace period too short", "terminationGracePeriodSeconds",
         spec_edit(lambda w, s, c: s.update(terminationGracePeriodSeconds=10))),
        ("single", "the queue on an emptyDir", "PersistentVolumeClaim",
         spec_edit(lambda w, s, c: (w["spec"].pop("volumeClaimTemplates"),
                                    s["volumes"].append({"name": "data", "emptyDir": {}})))),
        ("single", "the queue key on a ConfigMap", "not a Secret",
         spec_edit(lambda w, s, c: key_volume(s).update(configMap={"name": "x"}) or key_volume(s).pop("secret"))),
        ("single", "no NetworkPolicy", "no NetworkPolicy",
         lambda objs: objs.remove(find(objs, "NetworkPolicy"))),
        ("multi-cluster/central", "central open to producers", "accept_report_ids",
         lambda objs: find(objs, "NetworkPolicy")["spec"]["ingress"][0]["from"].append(
             {"namespaceSelector": {"matchLabels": {"data-exporter/producer": "true"}}})),
        ("scaled", "HPA fighting spec.replicas", "sets spec.replicas",
         lambda objs: find(objs, "Deployment").get("spec").update(replicas=3)),
        ("single", "a field Kubernetes does not have", "schema (Kubernetes",
         spec_edit(lambda w, s, c: c.update(imagePullPolicy="Sometimes", restartPolicyX="no"))),
        ("examples/plugins-from-image", "an init container without resources", "container plugins: resources",
         lambda objs: pod_spec(find(objs, "StatefulSet"))["initContainers"][0].pop("resources")),
        ("monitoring", "an alert on a metric the host does not export", "unknown metric",
         lambda objs: find(objs, "PrometheusRule")["spec"]["groups"][0]["rules"].append(
             {"alert": "X", "expr": "data_exporter_queue_size > 1"})),
        ("monitoring", "a PodMonitor field the CRD does not have", "tests/k8s/schemas",
         lambda objs: find(objs, "PodMonitor")["spec"].update(podMetricsEndpoint=[])),
    ]


def self_test(rendered, metrics, bin_path, tmp, schemas, verbose):
    failures = []
    for overlay, what, expect, mutate in breaks():
        objs = copy.deepcopy(rendered[overlay])
        mutate(objs)
        problems, _ = lint(objs, metrics, bin_path, tmp, schemas)
        caught = [p for p in problems if expect in p]
        if not caught:
            failures.append(f"self-test: breaking {overlay} ({what}) was not caught (expected {expect!r}); "
                            f"got {problems or 'no violation'}")
        elif verbose:
            print(f"  self-test: {overlay}, {what}: caught: {caught[0][:200]}")
    return failures, len(breaks())


# --- main -----------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the data-exporter binary")
    ap.add_argument("--kubernetes-version", action="append", dest="versions",
                    help="validate against this Kubernetes version (repeatable; default 1.30.0 and 1.34.0)")
    ap.add_argument("--kubectl", default="kubectl", help="the kubectl that renders the overlays")
    ap.add_argument("--no-self-test", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="show what caught each deliberate break")
    args = ap.parse_args()
    versions = args.versions or ["1.30.0", "1.34.0"]
    global KUBECTL
    KUBECTL = args.kubectl
    start = time.monotonic()
    schemas = Schemas(versions)
    metrics = known_metrics()
    paths = targets()
    with ThreadPoolExecutor(max_workers=8) as pool:
        docs = list(pool.map(render, paths))
    rendered = {str(p.relative_to(K8S / "overlays" if "overlays" in p.parts else K8S)): d
                for p, d in zip(paths, docs)}
    failed = False
    with tempfile.TemporaryDirectory(prefix="dx-k8s-") as tmp:
        for overlay, objs in rendered.items():
            problems, summaries = lint(objs, metrics, args.bin, tmp, schemas)
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(
                {o["kind"]: sum(1 for x in objs if x["kind"] == o["kind"]) for o in objs}.items()))
            print(f"{overlay}: {len(objs)} objects ({kinds})")
            for w, s in summaries:
                print(f"  config check ok: {w}: role {s['role']}, queue {s['queue']['backend']}, "
                      f"reads {len(s['reads'])} mounted paths, writes {len(s['writes'])}")
            for p in problems:
                print(f"  VIOLATION {p}")
            failed |= bool(problems)
        docker = []
        lint_dockerfile(docker)
        for p in docker:
            print(f"VIOLATION {p}")
        failed |= bool(docker)
        if not args.no_self_test:
            failures, n = self_test(rendered, metrics, args.bin, tmp, schemas, args.verbose)
            for f in failures:
                print(f"FAIL {f}")
            print(f"self-test: {n - len(failures)} of {n} deliberate breaks caught")
            failed |= bool(failures)
    print(f"schemas: Kubernetes {', '.join(versions)} (kubernetes-validate {kv.__version__}, strict); "
          f"PodMonitor, PrometheusRule: tests/k8s/schemas; {len(metrics[1])} metric series names from "
          f"host/src/metrics.rs; {time.monotonic() - start:.1f} s")
    if failed:
        print("k8s check: FAILED")
        return 1
    print("k8s check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
