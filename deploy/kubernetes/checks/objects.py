"""Reading the rendered objects: finding them, their pods and containers, and which volume a
file path inside a container comes from.

The property checks (`ca.py`, `sidecar.py`) take the list of rendered objects (dicts, as PyYAML
reads `kubectl kustomize`) and return a list of problems, one sentence each; an empty list
means the property holds. Names that the manifests and the sidecar's config must agree on (the
CA's Service, the token's audience, the mounted files) are compared across objects rather than
trusted to stay in step by hand.
"""

CA_NS, CA_NAME = "tether-system", "tether-ca"
APP_NS, APP_NAME = "payments", "api"
AUDIENCE = "tether-ca"
DISCOVERY_ROLE = "system:service-account-issuer-discovery"
CA_DB_SECRET = "tether-ca-database"
BUNDLE_CONFIGMAP = "tether-trust-bundle"
# The generated ConfigMap (kustomization.yaml) holding the sidecar's tether.toml and policy.toml.
APP_CONFIGMAP = "api-tether"


def find(objs, kind, name, namespace=None):
    """The one object of `kind` called `name` (in `namespace`), or None."""
    for o in objs:
        meta = o.get("metadata", {})
        if o.get("kind") == kind and meta.get("name") == name:
            if namespace is None or meta.get("namespace") == namespace:
                return o
    return None


def deployment(objs, ns, name):
    """The Deployment `ns`/`name` (LookupError without it)."""
    d = find(objs, "Deployment", name, ns)
    if d is None:
        raise LookupError(f"no Deployment {ns}/{name} is rendered")
    return d


def pod_spec(deployment):
    """A Deployment's pod spec."""
    return deployment["spec"]["template"]["spec"]


def pod_labels(deployment):
    """The labels a Deployment's pods get."""
    return deployment["spec"]["template"]["metadata"].get("labels", {})


def selects(selector, labels):
    """Whether a matchLabels-style selector (a dict) selects `labels`; an empty one never does."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def runs(container, binary):
    """Whether `container` runs `binary`: the first word of its command or, without a command,
    of its args (the image has no entrypoint), by name or as a path ending in it."""
    argv = container.get("command") or container.get("args") or [""]
    return argv[0] == binary or argv[0].endswith("/" + binary)


def service_for(objs, deployment):
    """The Service named like `deployment`, in its namespace, that selects its pods, and where
    each of its ports goes: (Service, {port: the targetPort as a number, or None if no
    container of the pod has a port of that name}); None without such a Service."""
    meta = deployment["metadata"]
    svc = find(objs, "Service", meta["name"], meta.get("namespace"))
    if svc is None or not selects(svc["spec"].get("selector"), pod_labels(deployment)):
        return None
    spec = pod_spec(deployment)
    containers = spec.get("initContainers", []) + spec.get("containers", [])
    targets = {}
    for p in svc["spec"].get("ports", []):
        target = p.get("targetPort", p["port"])
        named = (port_number(c, target) for c in containers)
        targets[p["port"]] = target if isinstance(target, int) else next(
            (n for n in named if n is not None), None)
    return svc, targets


def long_running(spec):
    """The containers that run for the pod's life: app containers and native sidecars."""
    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    return spec.get("containers", []) + sidecars


def flag(args, name):
    """The value of `--name VALUE` or `--name=VALUE` in an argument list, or None."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def port_number(container, port):
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def listen_port(addr):
    """The port of an `IP:PORT` or `HOST:PORT` listen address."""
    return int(addr.rsplit(":", 1)[1])


def resolve(spec, container, path):
    """What file `path` is inside `container`: a dict naming its volume source, or None.

    {"kind": "configMap"/"secret", "name": N, "key": K}, {"kind": "serviceAccountToken",
    "audience": A, "expirationSeconds": S}, or {"kind": "emptyDir", "readOnly": B}.
    """
    mounts = [m for m in container.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        return None
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    rel = path[len(mount["mountPath"]):].strip("/")
    if mount.get("subPath"):
        rel = (mount["subPath"].strip("/") + "/" + rel).strip("/")
    volume = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), None)
    if volume is None:
        return None
    if "emptyDir" in volume:
        return {"kind": "emptyDir", "readOnly": bool(mount.get("readOnly"))}
    sources = volume.get("projected", {}).get("sources", [])
    for kind in ("configMap", "secret"):
        if kind in volume:
            sources = [{kind: volume[kind]}]
    for source in sources:
        token = source.get("serviceAccountToken")
        if token is not None and token.get("path") == rel:
            return {"kind": "serviceAccountToken", "audience": token.get("audience"),
                    "expirationSeconds": token.get("expirationSeconds")}
        for kind in ("configMap", "secret"):
            src = source.get(kind)
            if src is None:
                continue
            items = src.get("items")
            key = next((i["key"] for i in items if i["path"] == rel), None) if items else rel
            if key is not None:
                name = src.get("name") or src.get("secretName")
                return {"kind": kind, "name": name, "key": key}
    return None
