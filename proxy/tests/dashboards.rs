//! The dashboard (`deploy/grafana/tether.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`) use only metrics Tether exports: every `tether_*` name in
//! either file is looked up in real scrapes of a real mesh — a CA served over HTTPS from a real
//! state dir, two sidecars enrolled with it, requests allowed and denied through both, a policy
//! reload and a refused CA request, so the series that only appear on an event exist — over
//! the sidecars' admin `/metrics` and the CA's metrics listener. The scrapes also pass
//! `promtool check metrics`, the dashboard's expressions parse as PromQL, and the dashboard
//! has the panels and variables an operator needs (the promtool parts skip, saying so, where
//! promtool is not installed; `.ci/run` installs it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;

/// A file of the repository's `deploy/` folder.
fn deploy_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `tether_*` metric name in `text`: an identifier (letters, digits, `_`, `:`) that starts
/// with `tether_`, has more after it, and is not the tail of a longer identifier. Alert names (`TetherCRLStale`),
/// commands (`tether-ca`) and environment variables (`TETHER_LOG`) are not names.
fn names_used(text: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("tether_") {
        if text[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let rest = &text[at..];
        let end = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
        // `tether_*` in prose is the prefix, not a name.
        if end > "tether_".len() {
            names.insert(rest[..end].to_string());
        }
    }
    names
}

/// The metric families in Prometheus text exposition, by name, with their `# TYPE`.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The names used in `text` that no family in `exported` provides. A histogram's
/// `_bucket`, `_sum` and `_count` series count as its own; those suffixes on any other kind of
/// metric do not exist.
fn unexported(text: &str, exported: &BTreeMap<String, String>) -> BTreeSet<String> {
    let provided = |name: &str| {
        exported.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|base| exported.get(base))
                    .is_some_and(|kind| kind == "histogram")
            })
    };
    names_used(text)
        .into_iter()
        .filter(|n| !provided(n))
        .collect()
}

/// `GET /metrics` on a plain-HTTP listener, as Prometheus scrapes it.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, text) = get(addr, "metrics", "/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    text
}

/// Runs `promtool ARGS…` with `stdin` as its input; returns whether it succeeded and what it
/// printed.
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// service-b's inbound sidecar and service-a's outbound sidecar, both in CA mode (enrolled with
/// one-time tokens), with admin listeners; b allows service-a on `/data` only. Returns b, a and
/// b's policy file.
async fn ca_mode_pair(pki: &Pki, ca: &CaServer) -> (Sidecar, Sidecar, PathBuf) {
    let policy = pki.policy(DATA_POLICY);
    let b_ca = ca_section(pki, ca, Some(&token(pki, SERVICE_B)), "state-b", "");
    let b = pki
        .start_inbound("b", &b_ca, start_app().await, &policy, ADMIN_SECTION)
        .await;
    let a_toml = format!(
        "{}{OUTBOUND_SECTION}{ADMIN_SECTION}{}",
        ca_section(pki, ca, Some(&token(pki, SERVICE_A)), "state-a", ""),
        service_section("service-b", &[b.inbound.unwrap()], SERVICE_B)
    );
    let a = pki.start("a", &a_toml).await;
    wait_ready(&b).await;
    wait_ready(&a).await;
    (b, a, policy)
}

/// Traffic and events that make the event-only series appear: allowed and denied requests with
/// bodies through a → b, a policy reload on b, and a request the CA refuses.
async fn exercise(ca: &CaServer, a: &Sidecar, b: &Sidecar, policy: &PathBuf) {
    let out = a.outbound.unwrap();
    let (allowed, body) = send(out, "service-b", "POST", "/data/x", &[], "hello").await;
    assert_eq!(allowed, StatusCode::OK, "{body}");
    let (denied, body) = send(out, "service-b", "POST", "/secret", &[], "hello").await;
    assert_eq!(denied, StatusCode::FORBIDDEN, "{body}");

    std::fs::write(policy, format!("{DATA_POLICY}\n# reloaded\n")).unwrap();
    assert!(
        tether_testkit::wait::eventually(Duration::from_secs(10), || async {
            b.scraped("tether_policy_reloads_total", &[("result", "ok")])
                .await
                >= 1.0
        })
        .await,
        "the policy file was never reloaded"
    );

    // An enrollment without a token: the CA refuses it (and counts the failure).
    let ca_addr = ca.url.trim_start_matches("https://").parse().unwrap();
    let tls = tls_connect(ca_addr, raw_client_config(None)).await.unwrap();
    let head = "POST /v1/enroll HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\n\
                Content-Length: 2\r\n";
    let (status, body) = raw_exchange(tls, head, "{}").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let pki = Pki::new();
    let ca = CaServer::start(&pki).await;
    let (b, a, policy) = ca_mode_pair(&pki, &ca).await;
    exercise(&ca, &a, &b, &policy).await;

    let scrapes = [
        ("sidecar a (outbound)", scrape(a.admin.unwrap()).await),
        ("sidecar b (inbound)", scrape(b.admin.unwrap()).await),
        ("the CA", scrape(ca.metrics.unwrap()).await),
    ];
    let mut exported = BTreeMap::new();
    for (_, text) in &scrapes {
        exported.extend(families(text));
    }
    for file in ["grafana/tether.json", "prometheus/alerts.yml"] {
        let text = deploy_file(file);
        assert!(
            names_used(&text).len() >= 10,
            "deploy/{file} names fewer metrics than expected: {:?}",
            names_used(&text)
        );
        let missing = unexported(&text, &exported);
        assert!(
            missing.is_empty(),
            "deploy/{file} uses metrics no scrape exports: {missing:?}\nexported: {:?}",
            exported.keys().collect::<Vec<_>>()
        );
        // The same check flags a name nobody exports.
        let with_made_up = format!("{text}\nrate(tether_made_up_total[5m])\n");
        assert_eq!(
            unexported(&with_made_up, &exported),
            BTreeSet::from(["tether_made_up_total".to_string()])
        );
    }

    if tether_testkit::tools::have("promtool") {
        for (what, text) in &scrapes {
            let (ok, printed) = promtool(&["check", "metrics"], text);
            assert!(ok && printed.trim().is_empty(), "{what}: {printed}");
        }
    }
}

#[test]
fn the_extractor_flags_names_that_are_not_exported() {
    let exposition = "\
# TYPE tether_requests_total counter
tether_requests_total{code=\"200\"} 1
# TYPE tether_request_duration_seconds histogram
tether_request_duration_seconds_bucket{le=\"+Inf\"} 1
tether_request_duration_seconds_sum 0.1
tether_request_duration_seconds_count 1
";
    let exported = families(exposition);
    let dashboard = r#"{"expr": "sum(rate(tether_requests_total{code!~\"5..\"}[5m]))",
        "b": "histogram_quantile(0.99, rate(tether_request_duration_seconds_bucket[5m]))",
        "c": "tether_request_duration_seconds_count / tether_request_duration_seconds_sum",
        "d": "rate(tether_made_up_total[5m]) + tether_requests_total_bucket",
        "e": "TetherCRLStale, tether-ca check, TETHER_LOG, my_tether_thing, every tether_*"}"#;
    assert_eq!(
        unexported(dashboard, &exported),
        BTreeSet::from([
            "tether_made_up_total".to_string(),
            "tether_requests_total_bucket".to_string()
        ]),
        "a made-up name and a histogram suffix on a counter are flagged; nothing else is"
    );
    assert!(!names_used(dashboard).contains("tether_thing"));
}

#[test]
fn the_dashboard_is_importable_with_the_panels_and_variables_an_operator_needs() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy_file("grafana/tether.json")).expect("the dashboard is JSON");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for want in ["datasource", "direction", "peer"] {
        assert!(
            variables.contains(&want),
            "no ${want} variable: {variables:?}"
        );
    }
    let panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Requests per second",
        "Success rate",
        "Latency quantiles by peer",
        "Handshakes by result",
        "Authz decisions",
        "Time until outage",
        "CRL number and age",
        "CA issuance",
        "Fleet size",
    ] {
        assert!(titles.contains(&want), "no panel {want:?}: {titles:?}");
    }
    let mut exprs = Vec::new();
    for panel in &panels {
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has queries");
        for t in targets.iter().chain([*panel]) {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{}: the data source is the $datasource variable",
                panel["title"]
            );
        }
        exprs.extend(targets.iter().filter_map(|t| t["expr"].as_str()));
    }

    if tether_testkit::tools::have("promtool") {
        // Each query, with Grafana's variables filled in, as a recording rule: promtool parses
        // every one as PromQL.
        let rules: Vec<serde_json::Value> = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let promql = [
                    ("$__rate_interval", "5m"),
                    ("$instance", ".*"),
                    ("$direction", ".*"),
                    ("$peer", ".*"),
                ]
                .iter()
                .fold(e.to_string(), |q, (var, value)| q.replace(var, value));
                serde_json::json!({"record": format!("dashboard:query{i}"), "expr": promql})
            })
            .collect();
        let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dashboard-queries.yml");
        std::fs::write(&path, file.to_string()).unwrap();
        let (ok, printed) = promtool(&["check", "rules", path.to_str().unwrap()], "");
        assert!(ok, "a dashboard query is not valid PromQL:\n{printed}");
    }
}
