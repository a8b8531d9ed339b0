"""Properties of the example app's pod: tether-proxy runs as a native sidecar with the probes
the kubelet needs, and every file its config names is mounted from the right place (the
projected token for the CA's audience, the trust bundle, a writable state dir, the policy)."""

import tomllib
from typing import NamedTuple

from .ca import ca_container
from .objects import (APP_NAME, APP_NS, BUNDLE_CONFIGMAP, CA_NAME, CA_NS, deployment,
                      find, flag, listen_port, pod_spec, port_number, resolve, runs, service_for)


def sidecar(spec):
    """The init container that runs tether-proxy (LookupError without one)."""
    for c in spec.get("initContainers", []):
        if runs(c, "tether-proxy"):
            return c
    raise LookupError("the app pod has no init container running tether-proxy")


def configmap_file(objs, source):
    """The text of a ConfigMap key that `resolve` found, or None."""
    if not source or source["kind"] != "configMap":
        return None
    cm = find(objs, "ConfigMap", source["name"], APP_NS)
    return (cm or {}).get("data", {}).get(source["key"])


class AppSidecar(NamedTuple):
    """The example app's Deployment, its pod spec, its tether-proxy container, and the files
    that container reads: tether.toml (as text and parsed) and the policy (as text)."""
    deployment: dict
    spec: dict
    proxy: dict
    text: str
    config: dict
    policy: str


def app_sidecar(objs):
    """The app's sidecar and its config, read once for all the checks that need them.

    LookupError when the sidecar does not run `run --config FILE` with FILE and the policy it
    names from a rendered ConfigMap; ValueError when FILE is not TOML.
    """
    d = deployment(objs, APP_NS, APP_NAME)
    spec = pod_spec(d)
    proxy = sidecar(spec)
    args = proxy.get("args", [])
    path = flag(args, "--config") or ""
    text = configmap_file(objs, resolve(spec, proxy, path)) if path else None
    if not args or args[0] != "run" or text is None:
        raise LookupError(f"the sidecar does not run `run --config FILE` with FILE from a "
                          f"rendered ConfigMap: {args}")
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"the sidecar's {path} is not TOML: {e}") from e
    policy_path = config.get("inbound", {}).get("policy", "")
    policy = configmap_file(objs, resolve(spec, proxy, policy_path)) if policy_path else None
    if policy is None:
        raise LookupError(f"the policy {policy_path!r} is not mounted from a rendered ConfigMap")
    return AppSidecar(d, spec, proxy, text, config, policy)


def sidecar_files(objs):
    """(tether.toml text, policy.toml text): the files the sidecar reads, from their ConfigMap
    (errors as `app_sidecar`)."""
    s = app_sidecar(objs)
    return s.text, s.policy


def check_sidecar_runs(objs):
    """A native sidecar: restartPolicy Always, kubelet probes on the admin listener."""
    s = app_sidecar(objs)
    proxy = s.proxy
    problems = []
    if proxy.get("restartPolicy") != "Always":
        problems.append("sidecar: restartPolicy is not Always (not a native sidecar)")
    admin = listen_port(s.config.get("admin", {}).get("listen", ":0"))
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        get = proxy.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or port_number(proxy, get.get("port")) != admin:
            problems.append(f"sidecar: {probe} is not GET {path} on the admin port {admin}")
    if s.spec.get("automountServiceAccountToken") is not False:
        problems.append("app pod: automountServiceAccountToken is not false")
    return problems


def check_sidecar_mounts(objs):
    """Each file the `[ca]` section names is mounted from where it must come from."""
    s = app_sidecar(objs)
    spec, proxy, ca = s.spec, s.proxy, s.config.get("ca", {})
    problems = []
    if "token_file" in ca:
        problems.append("sidecar config: token_file is set; in Kubernetes use k8s_token_file")
    token_path = ca.get("k8s_token_file", "")
    token = resolve(spec, proxy, token_path) if token_path else None
    ca_audience = flag(ca_container(objs).get("args", []), "--k8s-audience")
    if not token or token["kind"] != "serviceAccountToken":
        problems.append(f"sidecar: k8s_token_file {token_path!r} is not a projected "
                        "serviceAccountToken mounted in the sidecar")
    elif token["audience"] != ca_audience:
        # Compared with the CA's own flag, which check_ca_args holds to AUDIENCE.
        problems.append(f"sidecar: the projected token's audience is {token['audience']!r}, "
                        f"not the CA's --k8s-audience {ca_audience!r}")
    bundle = resolve(spec, proxy, ca.get("bundle", ""))
    if bundle != {"kind": "configMap", "name": BUNDLE_CONFIGMAP, "key": "bundle.pem"}:
        problems.append(f"sidecar: [ca] bundle {ca.get('bundle')!r} is not ConfigMap "
                        f"{BUNDLE_CONFIGMAP} key bundle.pem (got {bundle})")
    state = resolve(spec, proxy, ca.get("state_dir", ""))
    if not state or state["kind"] != "emptyDir" or state["readOnly"]:
        problems.append(f"sidecar: state_dir {ca.get('state_dir')!r} is not a writable emptyDir")
    want = {f"https://{CA_NAME}.{CA_NS}.svc:8443",
            f"https://{CA_NAME}.{CA_NS}.svc.cluster.local:8443"}
    if not ca.get("urls") or not set(ca["urls"]) <= want:
        problems.append(f"sidecar: [ca] urls {ca.get('urls')} are not the CA's Service "
                        f"(one of {sorted(want)})")
    return problems


def check_app_traffic(objs):
    """Peers reach the app only through the sidecar's inbound; the app calls out through it."""
    s = app_sidecar(objs)
    inbound, outbound = s.config.get("inbound", {}), s.config.get("outbound", {})
    problems = []
    if not inbound.get("app", "").startswith("127.0.0.1:"):
        problems.append(f"sidecar: [inbound] app {inbound.get('app')!r} is not on loopback")
    found = service_for(objs, s.deployment)
    if found is None:
        return problems + [f"no Service {APP_NS}/{APP_NAME} selecting the app pods"]
    svc, targets = found
    inbound_port = listen_port(inbound.get("listen", ":0"))
    for p in svc["spec"]["ports"]:
        if targets[p["port"]] != inbound_port:
            problems.append(f"Service {APP_NS}/{APP_NAME}: port {p['port']} targets "
                            f"{p.get('targetPort')}, not the sidecar's inbound {inbound_port}")
    proxy_url = f"http://{outbound.get('listen')}"
    for c in s.spec.get("containers", []):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if env.get("http_proxy") != proxy_url:
            problems.append(f"app container {c['name']}: http_proxy is not {proxy_url}")
    return problems
