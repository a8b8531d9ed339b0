"""Properties of the CA's objects: availability (replicas, anti-affinity, PDB), its Service,
its RBAC, where its secrets come from, and the Kubernetes-enrollment flags it runs with."""

from .objects import (AUDIENCE, CA_DB_SECRET, CA_NAME, CA_NS, DISCOVERY_ROLE, deployment, flag,
                      listen_port, pod_labels, pod_spec, resolve, runs, selects, service_for)


def ca_container(objs):
    """The container running `tether-ca` in the CA's pod (LookupError without one)."""
    for c in pod_spec(deployment(objs, CA_NS, CA_NAME)).get("containers", []):
        if runs(c, "tether-ca"):
            return c
    raise LookupError("the CA pod has no container running tether-ca")


def check_ca_availability(objs):
    """Two replicas on different nodes where possible, and a PDB that keeps one."""
    d = deployment(objs, CA_NS, CA_NAME)
    problems, labels = [], pod_labels(d)
    if d["spec"].get("replicas", 1) < 2:
        problems.append(f"CA Deployment: replicas is {d['spec'].get('replicas', 1)}, needs >= 2")
    anti = pod_spec(d).get("affinity", {}).get("podAntiAffinity", {})
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
        t.get("podAffinityTerm", {})
        for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    if not any(t.get("topologyKey") == "kubernetes.io/hostname"
               and selects(t.get("labelSelector", {}).get("matchLabels"), labels)
               for t in terms):
        problems.append("CA Deployment: no podAntiAffinity on kubernetes.io/hostname "
                        "selecting its own pods")
    pdbs = [o for o in objs if o.get("kind") == "PodDisruptionBudget"
            and o["metadata"].get("namespace") == CA_NS
            and selects(o["spec"].get("selector", {}).get("matchLabels"), labels)]
    if not any(p["spec"].get("minAvailable", 0) >= 1 for p in pdbs):
        problems.append("no PodDisruptionBudget with minAvailable >= 1 selects the CA pods")
    return problems


def check_ca_service(objs):
    """A Service selecting the CA pods forwards 8443 to the API port the CA listens on."""
    ca = ca_container(objs)
    listen = flag(ca.get("args", []), "--listen") or "127.0.0.1:8443"
    found = service_for(objs, deployment(objs, CA_NS, CA_NAME))
    if found is None:
        return [f"no Service {CA_NS}/{CA_NAME} selecting the CA pods"]
    svc, targets = found
    port = next((p for p in svc["spec"]["ports"] if p["port"] == 8443), None)
    if port is None:
        return [f"Service {CA_NS}/{CA_NAME} has no port 8443"]
    if targets[8443] != listen_port(listen):
        return [f"Service {CA_NS}/{CA_NAME}: port 8443 targets {port.get('targetPort')}, "
                f"not the CA's --listen port {listen_port(listen)}"]
    if not listen.startswith(("0.0.0.0:", "[::]:")):
        return [f"CA --listen {listen} is not reachable from other pods (use 0.0.0.0)"]
    return []


def check_ca_rbac(objs):
    """The CA's service account is bound to the issuer-discovery ClusterRole and nothing else."""
    problems, granted = [], []
    for o in objs:
        if o.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        for s in o.get("subjects", []):
            if (s.get("kind") == "ServiceAccount" and s.get("name") == CA_NAME
                    and s.get("namespace", o["metadata"].get("namespace")) == CA_NS):
                granted.append(o["roleRef"])
    for ref in granted:
        if ref.get("kind") != "ClusterRole" or ref.get("name") != DISCOVERY_ROLE:
            problems.append(f"the CA's service account is granted {ref.get('kind')} "
                            f"{ref.get('name')}; it may have only {DISCOVERY_ROLE}")
    if not granted:
        problems.append(f"the CA's service account is not bound to {DISCOVERY_ROLE}")
    for o in objs:
        if o.get("kind") in ("Role", "ClusterRole"):
            problems.append(f"{o['kind']} {o['metadata']['name']} is rendered; the CA needs "
                            "only the built-in discovery role")
    return problems


def env_secret(container, name):
    """(secret, key) an env variable is read from; None for a literal value or no variable."""
    for e in container.get("env", []):
        if e.get("name") == name:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            return (ref.get("name"), ref.get("key")) if ref else None
    return None


def check_ca_secrets(objs):
    """The database location and password come from Secret refs; no Secret is rendered."""
    spec = pod_spec(deployment(objs, CA_NS, CA_NAME))
    ca = ca_container(objs)
    problems = []
    if env_secret(ca, "PGPASSWORD") != (CA_DB_SECRET, "password"):
        problems.append(f"CA container: PGPASSWORD is not from Secret {CA_DB_SECRET} "
                        "key password")
    urls = [env_secret(c, "DATABASE_URL") for c in spec.get("initContainers", [])]
    if (CA_DB_SECRET, "url") not in urls:
        problems.append(f"CA init container: DATABASE_URL is not from Secret {CA_DB_SECRET} "
                        "key url")
    state_dir = flag(ca.get("args", []), "--state-dir") or ""
    state = resolve(spec, ca, state_dir) if state_dir.startswith("/") else None
    if not state or state["kind"] != "emptyDir" or state["readOnly"]:
        problems.append(f"CA container: --state-dir {state_dir!r} is not a writable emptyDir "
                        "(the CA writes new generations there)")
    for o in objs:
        if o.get("kind") == "Secret":
            problems.append(f"Secret {o['metadata']['name']} is rendered: secrets are made "
                            "with kubectl create secret, never committed")
    return problems


def check_ca_args(objs):
    """Kubernetes enrollment is on, against the API server's keys, for audience tether-ca."""
    args = ca_container(objs).get("args", [])
    problems = []
    if not args or args[0] != "serve":
        problems.append("CA container: args do not start with serve")
    for name, want in (("--k8s-issuer", None), ("--k8s-jwks", None),
                       ("--k8s-audience", AUDIENCE)):
        value = flag(args, name)
        if value is None or (want is not None and value != want):
            problems.append(f"CA container: {name} is {value!r}, needs {want or 'a value'}")
    jwks = flag(args, "--k8s-jwks") or ""
    if jwks.startswith("https://") and not flag(args, "--k8s-jwks-ca"):
        problems.append("CA container: an https --k8s-jwks needs --k8s-jwks-ca")
    return problems
