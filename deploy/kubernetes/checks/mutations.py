"""Broken copies of the render for `check.py --self-test`: each entry is (what is broken, a
phrase the problem reporting it must contain, a function that breaks a copy in place). A check
that stops catching its mutation fails the self-test, so the checks cannot rot into no-ops."""

from .ca import ca_container
from .objects import APP_CONFIGMAP, APP_NAME, APP_NS, CA_NAME, CA_NS, deployment, find, pod_spec
from .sidecar import sidecar


def ca_pod(objs):
    return pod_spec(deployment(objs, CA_NS, CA_NAME))


def app_pod(objs):
    return pod_spec(deployment(objs, APP_NS, APP_NAME))


def proxy(objs):
    return sidecar(app_pod(objs))


def volume(spec, name):
    return next(v for v in spec["volumes"] if v["name"] == name)


def set_arg(container, name, value):
    """Replaces the value after `name` in the args, or drops both with value None."""
    args = container["args"]
    i = args.index(name)
    args[i:i + 2] = [] if value is None else [name, value]


def set_literal_env(container, name, value):
    """Replaces the env variable `name`'s valueFrom with a literal value."""
    var = next(e for e in container["env"] if e["name"] == name)
    var.pop("valueFrom")
    var["value"] = value


def drop_env(container, name):
    container["env"] = [e for e in container["env"] if e["name"] != name]


def edit_config(objs, old, new):
    cm = find(objs, "ConfigMap", APP_CONFIGMAP, APP_NS)
    assert old in cm["data"]["tether.toml"], old
    cm["data"]["tether.toml"] = cm["data"]["tether.toml"].replace(old, new)


def token_source(objs):
    return volume(app_pod(objs), "tether-token")["projected"]["sources"][0]["serviceAccountToken"]


MUTATIONS = [
    ("sidecar without restartPolicy", "restartPolicy is not Always",
     lambda o: proxy(o).pop("restartPolicy")),
    ("CA with 1 replica", "replicas is 1",
     lambda o: deployment(o, CA_NS, CA_NAME)["spec"].update(replicas=1)),
    ("token for the wrong audience", "the projected token's audience",
     lambda o: token_source(o).update(audience="https://kubernetes.default.svc")),
    ("sidecar with a writable root filesystem", "readOnlyRootFilesystem is not true",
     lambda o: proxy(o)["securityContext"].update(readOnlyRootFilesystem=False)),
    ("token mounted where the config does not look", "k8s_token_file",
     lambda o: next(m for m in proxy(o)["volumeMounts"] if m["name"] == "tether-token").update(
         mountPath="/var/run/secrets/tokens")),
    ("token file renamed in the config", "k8s_token_file",
     lambda o: edit_config(o, "/var/run/secrets/tether/token", "/var/run/secrets/tether/jwt")),
    ("sidecar without readinessProbe", "readinessProbe",
     lambda o: proxy(o).pop("readinessProbe")),
    ("sidecar liveness on the wrong path", "livenessProbe is not GET /live",
     lambda o: proxy(o)["livenessProbe"]["httpGet"].update(path="/ready")),
    ("CA without livenessProbe", "no livenessProbe",
     lambda o: ca_container(o).pop("livenessProbe")),
    ("CA without anti-affinity", "podAntiAffinity",
     lambda o: ca_pod(o).pop("affinity")),
    ("PDB selecting other pods", "PodDisruptionBudget",
     lambda o: find(o, "PodDisruptionBudget", CA_NAME, CA_NS)["spec"]["selector"].update(
         matchLabels={"app.kubernetes.io/name": "other"})),
    ("CA Service on the metrics port", "targets",
     lambda o: find(o, "Service", CA_NAME, CA_NS)["spec"]["ports"][0].update(
         targetPort="metrics")),
    ("CA bound to cluster-admin", "cluster-admin",
     lambda o: find(o, "ClusterRoleBinding", "tether-ca-issuer-discovery")["roleRef"].update(
         name="cluster-admin")),
    ("PGPASSWORD written into the manifest", "PGPASSWORD",
     lambda o: ca_container(o).update(
         env=[{"name": "PGPASSWORD", "value": "hunter2"}])),
    ("a Secret rendered", "Secret tether-ca-state is rendered",
     lambda o: o.append({"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": "tether-ca-state", "namespace": CA_NS}})),
    ("CA without --k8s-audience", "--k8s-audience",
     lambda o: set_arg(ca_container(o), "--k8s-audience", None)),
    ("CA for another audience", "--k8s-audience",
     lambda o: set_arg(ca_container(o), "--k8s-audience", "vault")),
    ("app container without resources", "resources",
     lambda o: app_pod(o)["containers"][0].pop("resources")),
    ("CA keeping its capabilities", "drop ALL",
     lambda o: ca_container(o)["securityContext"].pop("capabilities")),
    ("CA pod with service-link variables", "enableServiceLinks",
     lambda o: ca_pod(o).pop("enableServiceLinks")),
    ("API token mounted in the app pod", "automountServiceAccountToken",
     lambda o: app_pod(o).update(automountServiceAccountToken=True)),
    ("bundle read from elsewhere", "[ca] bundle",
     lambda o: edit_config(o, "/etc/tether/bundle/bundle.pem", "/etc/tether/bundle.pem")),
    ("state dir on the read-only config mount", "state_dir",
     lambda o: edit_config(o, 'state_dir = "/var/lib/tether"', 'state_dir = "/etc/tether"')),
    ("sidecar pointed at another CA", "[ca] urls",
     lambda o: edit_config(o, "tether-ca.tether-system.svc:8443", "ca.example.com:8443")),
    ("app Service bypassing the sidecar", "not the sidecar's inbound",
     lambda o: find(o, "Service", APP_NAME, APP_NS)["spec"]["ports"][0].update(
         targetPort=8080)),
    ("DATABASE_URL written into the manifest", "DATABASE_URL is not from Secret",
     lambda o: set_literal_env(ca_pod(o)["initContainers"][0], "DATABASE_URL",
                               "postgres://tether@db.example:5432/tether")),
    ("CA without --k8s-jwks-ca", "needs --k8s-jwks-ca",
     lambda o: set_arg(ca_container(o), "--k8s-jwks-ca", None)),
    ("CA pod without a seccompProfile",
     "container tether-ca: seccompProfile is not RuntimeDefault",
     lambda o: ca_pod(o)["securityContext"].pop("seccompProfile")),
    ("sidecar allowing privilege escalation",
     "container tether-proxy: allowPrivilegeEscalation is not false",
     lambda o: proxy(o)["securityContext"].update(allowPrivilegeEscalation=True)),
    ("token_file instead of k8s_token_file", "token_file is set",
     lambda o: edit_config(o, "\nk8s_token_file = ", "\ntoken_file = ")),
    ("app without http_proxy", "http_proxy is not",
     lambda o: drop_env(app_pod(o)["containers"][0], "http_proxy")),
]
