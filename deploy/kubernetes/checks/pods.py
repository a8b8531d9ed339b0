"""Properties of both Deployments' pods: no service-link variables, and in every container
resources, probes on the long-running ones, and the restricted Pod Security settings."""

from .objects import APP_NAME, APP_NS, CA_NAME, CA_NS, deployment, long_running, pod_spec


def security_problems(what, spec, container):
    """The restricted-profile settings every container must have (pod-level ones count)."""
    pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
    problems = []
    if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        problems.append(f"{what}: runAsNonRoot is not true")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{what}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{what}: allowPrivilegeEscalation is not false")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.append(f"{what}: capabilities do not drop ALL")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    if seccomp.get("type") != "RuntimeDefault":
        problems.append(f"{what}: seccompProfile is not RuntimeDefault")
    return problems


def check_containers(objs):
    """Both pods: no service links; every container: resources, probes (long-running ones),
    security."""
    problems = []
    for ns, name in ((CA_NS, CA_NAME), (APP_NS, APP_NAME)):
        try:
            spec = pod_spec(deployment(objs, ns, name))
        except LookupError as e:
            problems.append(str(e))
            continue
        if spec.get("enableServiceLinks") is not False:
            # Hardening: the binaries read TETHER_CA_* / TETHER_PROXY_* variables as settings,
            # and service links add TETHER_CA_PORT and the like for the Service tether-ca. None
            # of those names is a setting today, but they share the prefix.
            problems.append(f"Deployment {ns}/{name}: enableServiceLinks is not false")
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            what = f"Deployment {ns}/{name} container {c['name']}"
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits", {}).get("memory"):
                problems.append(f"{what}: needs resources.requests and a memory limit")
            problems += security_problems(what, spec, c)
        for c in long_running(spec):
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"Deployment {ns}/{name} container {c['name']}: no {probe}")
    return problems
