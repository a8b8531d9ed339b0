#!/usr/bin/env python3
"""Checks deploy/kubernetes without a cluster: renders it with `kubectl kustomize`, validates
every object against the Kubernetes 1.30 schemas (`kubernetes-validate --strict`), checks the
properties in `checks/` (the CA's availability, RBAC and secrets; the native sidecar, its probes
and mounts), runs `tether-proxy check` on the sidecar's config and policy as mounted, and
checks that `tether-ca serve --help` lists every flag the CA container is given.

    python3 deploy/kubernetes/check.py                   # everything above
    python3 deploy/kubernetes/check.py --self-test       # each check catches a broken copy
    python3 deploy/kubernetes/check.py --with-self-test  # both, on one render

`deploy/check.sh` (and so `make test`) runs `--with-self-test`. Without kubectl,
kubernetes-validate (whose PyYAML this reads with) or the debug builds of tether-proxy and
tether-ca ($TETHER_PROXY_BIN, $TETHER_CA_BIN), the step prints SKIPPED and succeeds, except when
CI is set: .ci/run installs the tools and `make test` builds the binaries, so there a missing
one is a failure.
"""

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree


def in_ci():
    """Whether CI is set (to anything but "", "0" or "false")."""
    return os.environ.get("CI", "") not in ("", "0", "false")


def unavailable(what, skipped="deploy/kubernetes not checked", ci="and .ci/run installs it"):
    """A missing tool: SKIPPED and success outside CI, a failure under CI."""
    if in_ci():
        sys.exit(f"FAILED: {what} (CI is set, {ci})")
    print(f"SKIPPED: {what}: {skipped}")
    sys.exit(0)


if sys.version_info < (3, 11):
    unavailable("python3 older than 3.11 (tomllib reads the sidecar's config)")

import tomllib  # noqa: E402  (after the version check)

import checks  # noqa: E402
from checks.mutations import MUTATIONS  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# The oldest Kubernetes the manifests target: native sidecars (initContainers with
# restartPolicy: Always) are on by default from 1.29; 1.30 is the oldest still widely supported.
KUBE_VERSION = "1.30.0"
# What a check may raise on an object missing what it reads: a problem to report, not a crash.
UNREADABLE = (LookupError, TypeError, ValueError, AttributeError, tomllib.TOMLDecodeError)


def render():
    """The rendered manifests, as text and as a list of objects."""
    if shutil.which("kubectl") is None:
        unavailable("kubectl not installed (apt-get install kubernetes-client)")
    if shutil.which("kubernetes-validate") is None:
        unavailable("kubernetes-validate not installed (python3 -m pip install "
                    "kubernetes-validate)")
    try:
        import yaml
    except ImportError:
        unavailable("PyYAML not importable by python3 (it comes with kubernetes-validate)")
    out = subprocess.run(["kubectl", "kustomize", HERE], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"FAILED: kubectl kustomize {HERE}:\n{out.stderr}")
    return out.stdout, [o for o in yaml.safe_load_all(out.stdout) if o]


def validate(text):
    """Every rendered object against the schemas of KUBE_VERSION, unknown fields refused."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        out = subprocess.run(["kubernetes-validate", "-k", KUBE_VERSION, "--strict", "--quiet",
                              f.name], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"FAILED: kubernetes-validate -k {KUBE_VERSION} --strict:\n"
                 f"{out.stdout}{out.stderr}")


def problems(objs):
    """Every property check's problems with `objs`; checks that cannot read the objects for the
    same reason (the sidecar's checks all read its config) share one problem."""
    found, unreadable = [], {}
    for check in checks.ALL:
        try:
            found += check(objs)
        except UNREADABLE as e:
            unreadable.setdefault(str(e), []).append(check.__name__)
    return found + [f"{', '.join(names)}: cannot read the objects: {why}"
                    for why, names in unreadable.items()]


def binary(name, env_var, subcommand):
    """$env_var, or the workspace's debug build of `name`, if it has `subcommand`."""
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    path = os.environ.get(env_var) or os.path.join(target, "debug", name)
    if not os.access(path, os.X_OK):
        return None
    knows = subprocess.run([path, subcommand, "--help"], capture_output=True)
    return path if knows.returncode == 0 else None


def binaries():
    """(tether-proxy, tether-ca) with `check` and `serve`; outside CI, SKIPPED without them."""
    proxy = binary("tether-proxy", "TETHER_PROXY_BIN", "check")
    ca = binary("tether-ca", "TETHER_CA_BIN", "serve")
    if proxy is None or ca is None:
        unavailable("no target/debug/tether-proxy with `check` or tether-ca (cargo build "
                    "-p tether-proxy -p tether-ca, or set TETHER_PROXY_BIN and TETHER_CA_BIN)",
                    "the sidecar's config and the CA's flags were not run through them",
                    "and `make test` builds them before it runs this")
    return proxy, ca


def unknown_ca_flags(ca_binary, objs):
    """The flags in the CA container's args that `tether-ca serve --help` does not list."""
    listed = subprocess.run([ca_binary, "serve", "--help"], capture_output=True, text=True)
    known = set(re.findall(r"--[a-z0-9-]+", listed.stdout))
    args = checks.ca_container(objs).get("args", [])
    return [a.split("=")[0] for a in args
            if a.startswith("--") and a.split("=")[0] not in known]


def proxy_check(binary, objs, break_config=False):
    """`tether-proxy check` on the sidecar's config and policy, copied out of the ConfigMap
    into a temp dir, the policy named there with `--inbound-policy` (the property checks have
    already matched the config's own policy path to that ConfigMap key): (accepted, its output)."""
    text, policy = checks.sidecar_files(objs)
    if break_config:
        text += "\n[inbound.unknown]\n"
    with tempfile.TemporaryDirectory() as tmp:
        config, policy_file = os.path.join(tmp, "tether.toml"), os.path.join(tmp, "policy.toml")
        for file, content in ((config, text), (policy_file, policy)):
            with open(file, "w") as f:
                f.write(content)
        # A clean environment: TETHER_PROXY_* variables would override the file under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_PROXY_")}
        out = subprocess.run([binary, "check", "--config", config, "--inbound-policy",
                              policy_file], capture_output=True, text=True, env=env)
    said = (out.stdout + out.stderr).strip()
    said = said.replace(tmp + "/", f"ConfigMap {checks.APP_CONFIGMAP}: ")
    return out.returncode == 0, said


def check(text, objs):
    """The whole check of the real render; exits non-zero on the first failing stage."""
    validate(text)
    print(f"ok: {len(objs)} objects render and validate against Kubernetes {KUBE_VERSION}")
    found = problems(objs)
    if found:
        sys.exit("FAILED: deploy/kubernetes:\n" + "\n".join(f"  - {p}" for p in found))
    print(f"ok: {len(checks.ALL)} property checks hold")
    proxy, ca = binaries()
    unknown = unknown_ca_flags(ca, objs)
    if unknown:
        sys.exit(f"FAILED: tether-ca serve does not know the CA container's {unknown}")
    print("ok: tether-ca serve knows every flag the CA container is given")
    accepted, said = proxy_check(proxy, objs)
    print(said)
    if not accepted:
        sys.exit("FAILED: tether-proxy check refused the sidecar's config")


def self_test(objs):
    """Each mutation in `checks/mutations.py` must be caught, by the problem it names."""
    if problems(objs):
        sys.exit("FAILED: the self-test needs manifests that pass; run without --self-test")
    missed = []
    for name, expect, mutate in MUTATIONS:
        broken = copy.deepcopy(objs)
        mutate(broken)
        hit = next((p for p in problems(broken) if expect in p), None)
        print(f"{'caught' if hit else 'MISSED'}: {name}: {hit or f'no problem says {expect!r}'}")
        if not hit:
            missed.append(name)
    proxy, ca = binaries()
    accepted, said = proxy_check(proxy, objs, break_config=True)
    if accepted:
        missed.append("tether-proxy check accepted a config with an unknown table")
    else:
        print(f"caught: a config with an unknown table: {said}")
    renamed = copy.deepcopy(objs)
    args = checks.ca_container(renamed)["args"]
    args[args.index("--k8s-jwks-ca")] = "--k8s-jwks-roots"
    if unknown_ca_flags(ca, renamed) != ["--k8s-jwks-roots"]:
        missed.append("a CA flag tether-ca serve does not know")
    else:
        print("caught: a CA flag tether-ca serve does not know (--k8s-jwks-roots)")
    if missed:
        sys.exit("FAILED: the self-test missed: " + "; ".join(missed))
    print(f"ok: self-test caught all {len(MUTATIONS) + 2} broken copies")


def main():
    mode = sys.argv[1:]
    if mode not in ([], ["--self-test"], ["--with-self-test"]):
        sys.exit(f"usage: {sys.argv[0]} [--self-test | --with-self-test]")
    text, objs = render()
    if mode != ["--self-test"]:
        check(text, objs)
    if mode != []:
        self_test(objs)


if __name__ == "__main__":
    main()
