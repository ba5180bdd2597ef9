//! The clinic's HTTP API over a real clinic synced from a real hub (QUIC on loopback): every
//! answer shape as an insta snapshot (time-dependent fields redacted), 4xx errors naming the
//! problem, and the FHIR R4 `CoverageEligibilityResponse` parsed and validated by an
//! independent FHIR library (Python `fhir.resources` 6.1.0, the FHIR 4.0.1 models, installed
//! into `target/fhir-venv` by this test on first use). Also the insurer's side: `hub import`
//! with its progress output and `reconcile` in its three formats.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use shikaku_core::{
    AnswerCode, CardToken, CheckQuery, Date, EventBody, Freshness, Hlc, MemberKey, Projection,
    Replication,
};
use shikaku_net::{ClinicService, HubService, Runtime};
use shikaku_node::Role;

use crate::net::{http, wait_for, Deployment};

/// A hub with the generated world and one clinic (subscribed to the first insurer) serving its
/// API on loopback.
pub(crate) struct Running {
    pub(crate) d: Deployment,
    pub(crate) hub: Arc<Runtime>,
    pub(crate) hub_service: Option<HubService>,
    pub(crate) clinic: Arc<Runtime>,
    pub(crate) clinic_service: Option<ClinicService>,
    pub(crate) url: String,
    api: tokio::task::JoinHandle<()>,
    hub_tls: shikaku_net::tls::TlsFiles,
    hub_addr: std::net::SocketAddr,
}

impl Running {
    pub(crate) async fn start(name: &str, members: usize) -> Running {
        let d = Deployment::new(name, members);
        let hub_tls = d.issue(Role::Hub, "hub");
        let clinic_tls = d.issue(Role::Clinic, "front-desk");
        let hub = d.runtime(Role::Hub, "hub", &d.insurers);
        hub.with_node(|n, now| n.import(now, &d.events).unwrap());
        let hub_service =
            HubService::start(hub.clone(), &hub_tls, "127.0.0.1:0".parse().unwrap()).unwrap();
        let clinic = d.runtime(Role::Clinic, "front-desk", &d.insurers[..1]);
        let hub_addr = hub_service.local_addr().unwrap();
        let clinic_service =
            ClinicService::start(clinic.clone(), &clinic_tls, &[hub_addr]).unwrap();
        wait_for("sync", || clinic.with_node(|n, _| n.in_sync())).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let rt = clinic.clone();
        let api = tokio::spawn(async move {
            let _ = shikaku_api::clinic::serve_api(listener, rt).await;
        });
        Running {
            d,
            hub,
            hub_service: Some(hub_service),
            clinic,
            clinic_service: Some(clinic_service),
            url,
            api,
            hub_tls,
            hub_addr,
        }
    }

    /// Starts the hub again on its address; waits until the clinic's records reached it.
    pub(crate) async fn restart_hub(&mut self) {
        self.hub.resume();
        self.hub_service =
            Some(HubService::start(self.hub.clone(), &self.hub_tls, self.hub_addr).unwrap());
        let (hub, clinic) = (self.hub.clone(), self.clinic.clone());
        let own = shikaku_core::Namespace::Clinic(self.d.signer("front-desk").node_id());
        wait_for("the clinic is back in sync", || {
            clinic.with_node(|n, _| n.in_sync())
                && crate::net::state(&hub, own) == crate::net::state(&clinic, own)
        })
        .await;
    }

    /// Stops the clinic's API server (the node itself keeps running).
    pub(crate) fn stop_api(&self) {
        self.api.abort();
    }

    /// Stops the hub (the clinic goes offline).
    pub(crate) async fn stop_hub(&mut self) {
        if let Some(service) = self.hub_service.take() {
            service.shutdown().await;
        }
        let clinic = self.clinic.clone();
        wait_for("the clinic notices", || !clinic.with_node(|n, _| n.in_sync())).await;
    }

    pub(crate) async fn shutdown(mut self) {
        self.api.abort();
        if let Some(cs) = self.clinic_service.take() {
            cs.shutdown().await;
        }
        if let Some(service) = self.hub_service.take() {
            service.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.d.root);
    }
}

/// Members of the clinic's insurer for the story: (valid card and its member, an invalid
/// member) on `date`, found with an independent projection of the generated events.
pub(crate) fn cast(d: &Deployment, date: Date) -> (CardToken, MemberKey, MemberKey) {
    let mut p = Projection::new(Replication::All);
    for e in &d.events {
        p.apply(e);
    }
    let fresh = Freshness::default();
    let insurer = d.insurers[0];
    let mut valid = None;
    let mut invalid = None;
    for e in &d.events {
        if let EventBody::CardLinked { card, member } = &e.event().body {
            if member.insurer != insurer || member.branch != 0 || valid.is_some() {
                continue;
            }
            let a = p.check(&CheckQuery::Card(*card), date, Hlc(u64::MAX), fresh);
            if a.code == AnswerCode::Valid && a.member.as_ref() == Some(member) {
                valid = Some((*card, member.clone()));
            }
        }
        if let Some(member) = e.event().body.membership_subject() {
            if member.insurer != insurer || invalid.is_some() {
                continue;
            }
            let a = p.check(&CheckQuery::Member(member.clone()), date, Hlc(u64::MAX), fresh);
            if a.code == AnswerCode::Invalid && a.conflicts.is_empty() && a.end_reason.is_some() {
                invalid = Some(member.clone());
            }
        }
    }
    let (card, member) = valid.expect("a valid card in the generated world");
    (card, member, invalid.expect("an invalid member in the generated world"))
}

/// Replaces what depends on the clock or on timing (record-time cut-offs, sync times, hub
/// positions that move as check records arrive, hashes over cut-offs) by a marker.
fn redact(value: &mut Value) {
    if let Value::String(text) = value {
        *text = mask_times(text);
        return;
    }
    const VOLATILE: [&str; 3] = ["last-hub-sync", "knowledge-as-of", "hub-position"];
    match value {
        Value::Object(map) => {
            let volatile_ext = map
                .get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| VOLATILE.iter().any(|v| u.ends_with(v)));
            for (key, v) in map.iter_mut() {
                let by_key = matches!(
                    key.as_str(),
                    "as_of" | "last_hub_sync_ms" | "hub_position" | "created" | "id"
                );
                if by_key || (volatile_ext && key.starts_with("value")) {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v);
                }
            }
            if let Some(Value::Object(request)) = map.get_mut("request") {
                if let Some(Value::Object(identifier)) = request.get_mut("identifier") {
                    identifier.insert("value".into(), Value::String("[answer hash]".into()));
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// "2026-11-26 07:47 JST" → "[time] JST" (the rendered text's knowledge line).
fn mask_times(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(" JST") {
        let (before, after) = rest.split_at(at);
        let stamp = before.len().checked_sub(16).map(|i| &before[i..]);
        let is_stamp = stamp.is_some_and(|s| {
            s.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b' ',
                13 => b == b':',
                _ => b.is_ascii_digit(),
            })
        });
        if is_stamp {
            out.push_str(&before[..before.len() - 16]);
            out.push_str("[time]");
        } else {
            out.push_str(before);
        }
        out.push_str(" JST");
        rest = &after[4..];
    }
    out.push_str(rest);
    out
}

fn body(response: &str) -> (u16, &str) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body)
}

/// `target/fhir-venv/bin/python` with fhir.resources 6.1.0 (FHIR 4.0.1), created on first use.
fn fhir_python() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let _installing = crate::venv_install_lock();
    let venv = target.join("fhir-venv");
    let python = venv.join("bin/python");
    let ready = |python: &PathBuf| {
        std::process::Command::new(python)
            .args(["-c", "import fhir.resources.coverageeligibilityresponse"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&python) {
        return python;
    }
    let status = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 is needed to validate FHIR output (apt-get install python3-venv)");
    assert!(status.success(), "python3 -m venv failed (apt-get install python3-venv)");
    let status = std::process::Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "fhir.resources==6.1.0", "pydantic==1.10.13"])
        .status()
        .unwrap();
    assert!(status.success(), "pip install fhir.resources failed");
    assert!(ready(&python), "fhir.resources does not import after installing it");
    python
}

/// Parses every file with fhir.resources' CoverageEligibilityResponse model (validating
/// cardinalities, types and value sets) and prints what a consumer would read from it.
const FHIR_CHECK: &str = r#"
import json, sys
from fhir.resources.coverageeligibilityresponse import CoverageEligibilityResponse
for path in sys.argv[1:]:
    r = CoverageEligibilityResponse.parse_file(path)
    assert r.resource_type == "CoverageEligibilityResponse"
    ins = r.insurance[0] if r.insurance else None
    copay = None
    if ins and ins.item:
        copay = ins.item[0].benefit[0].allowedUnsignedInt
    code = [e.valueCode for e in r.extension if e.url.endswith("validity-code")][0]
    period = (str(ins.benefitPeriod.start), str(ins.benefitPeriod.end) if ins.benefitPeriod.end else None) if ins else None
    print(json.dumps({"outcome": r.outcome, "code": code, "serviced": str(r.servicedDate),
        "insurer": r.insurer.identifier.value if r.insurer.identifier else None,
        "inforce": ins.inforce if ins else None, "copay_percent": copay, "period": period,
        "error": r.error[0].code.coding[0].code if r.error else None}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_are_snapshotted_and_fhir_validates_with_an_independent_library() {
    let running = Running::start("api", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let (card, member, invalid) = cast(&running.d, date);
    let other = crate::net::member_of(&running.d.events, running.d.insurers[1]);
    let key = |m: &MemberKey| m.to_string().replace(':', "%3A");
    let insurer = running.d.insurers[0];
    let nobody = format!("{insurer}:0:999999:00").replace(':', "%3A");
    let requests: Vec<(&str, String)> = vec![
        ("valid card", format!("GET /v1/check?card={card}&date={date}")),
        ("valid member key", format!("GET /v1/check?member={}&date={date}", key(&member))),
        ("invalid member key", format!("GET /v1/check?member={}&date={date}", key(&invalid))),
        ("no match", format!("GET /v1/check?member={nobody}&date={date}")),
        ("insurer not replicated", format!("GET /v1/check?member={}&date={date}", key(&other))),
        ("fhir valid card", format!("GET /v1/check?card={card}&date={date}&format=fhir")),
        (
            "fhir invalid member key",
            format!("GET /v1/check?member={}&date={date}&format=fhir", key(&invalid)),
        ),
        ("fhir no match", format!("GET /v1/check?member={nobody}&date={date}&format=fhir")),
        (
            "fhir not replicated",
            format!("GET /v1/check?member={}&date={date}&format=fhir", key(&other)),
        ),
        ("400 nothing asked", "GET /v1/check".to_owned()),
        ("400 both asked", format!("GET /v1/check?card={card}&member={}", key(&member))),
        ("400 bad date", format!("GET /v1/check?card={card}&date=2026-02-30")),
        ("400 bad card", "GET /v1/check?card=12345".to_owned()),
        ("400 bad check digit", "GET /v1/check?member=33120016%3A1%3A2%3A00".to_owned()),
        ("400 bad format", format!("GET /v1/check?card={card}&format=xml")),
        ("400 unknown parameter", format!("GET /v1/check?card={card}&name=x")),
    ];
    let mut snapshot = serde_json::Map::new();
    let dir = running.d.root.join("fhir");
    std::fs::create_dir_all(&dir).unwrap();
    let mut fhir_files = Vec::new();
    for (name, request) in &requests {
        let response = http(&running.url, request, "").await;
        let (status, text) = body(&response);
        let mut value = match serde_json::from_str::<Value>(text) {
            Ok(v) => v,
            Err(_) => Value::String(text.trim().to_owned()),
        };
        if name.starts_with("fhir") {
            assert_eq!(status, 200, "{name}: {text}");
            assert!(response.contains("application/fhir+json"), "{name}: {response}");
            let path = dir.join(format!("{}.json", fhir_files.len()));
            std::fs::write(&path, text).unwrap();
            fhir_files.push(path);
        }
        if name.starts_with("400") {
            assert_eq!(status, 400, "{name}: {text}");
        } else {
            assert_eq!(status, 200, "{name}: {text}");
        }
        redact(&mut value);
        snapshot.insert(format!("{name} ({status})"), value);
    }
    insta::assert_json_snapshot!("clinic_api_answers", Value::Object(snapshot));

    // Health, online, once the hub has acknowledged every check record.
    let clinic = running.clinic.clone();
    wait_for("the records acknowledged", || clinic.with_node(|n, _| n.unacked_own() == 0)).await;
    let response = http(&running.url, "GET /v1/health", "").await;
    let (status, text) = body(&response);
    assert_eq!(status, 200);
    let mut health: Value = serde_json::from_str(text).unwrap();
    redact(&mut health);
    health["events"] = Value::String("[count]".into());
    // The receipt's numbers depend on the generated world and the hub's key: their shape.
    for key in ["hub", "position", "count", "fingerprint"] {
        assert!(!health["receipt"][key].is_null(), "health has the receipt's {key}: {health}");
        health["receipt"][key] = Value::String("[redacted]".into());
    }
    insta::assert_json_snapshot!("clinic_api_health_online", health);

    // An independent FHIR implementation parses and validates every response.
    let output = std::process::Command::new(fhir_python())
        .arg("-c")
        .arg(FHIR_CHECK)
        .args(&fhir_files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fhir.resources refused our output:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    insta::assert_json_snapshot!("fhir_as_read_by_fhir_resources", parsed);
    assert_eq!(parsed[0]["outcome"], "complete");
    assert_eq!(parsed[0]["inforce"], true);
    assert_eq!(parsed[0]["insurer"], insurer.to_string());
    assert_eq!(parsed[1]["inforce"], false);
    assert_eq!(parsed[2]["error"], "no-match");
    assert_eq!(parsed[3]["error"], "not-replicated");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_finds_the_offline_answer_a_late_retirement_contradicts() {
    let mut running = Running::start("reconcile", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let (card, member, _) = cast(&running.d, date);
    let q = CheckQuery::Card(card);
    let online = running.clinic.with_node(|n, now| n.check(now, &q, date).unwrap());
    assert_eq!(online.code, AnswerCode::Valid);
    let clinic = running.clinic.clone();
    wait_for("the record acknowledged", || clinic.with_node(|n, _| n.unacked_own() == 0)).await;
    running.stop_hub().await;
    // While the clinic is cut off, the insurer reports that this member retired before the
    // service date; the clinic keeps answering VALID from what it has.
    let signer = shikaku_gen::insurer_signer(21, member.insurer);
    let hub_id = running.hub.with_node(|n, _| n.node_id());
    let retired = running.hub.with_node(|n, now| {
        let event = signer
            .sign(shikaku_core::Event {
                namespace: shikaku_core::Namespace::Insurer(member.insurer),
                origin: hub_id,
                origin_seq: 1 << 40,
                hlc: Hlc::end_of_ms(now),
                author: signer.public(),
                body: EventBody::CoverageEnded {
                    member: member.clone(),
                    loss_date: date.add_days(-20),
                    reason: shikaku_core::EndReason::Retirement,
                },
            })
            .unwrap();
        n.import(now, std::slice::from_ref(&event)).unwrap();
        event
    });
    // Ten minutes pass (on both nodes' clocks).
    running.clinic.clock().advance(600_000);
    running.hub.clock().advance(600_000);
    let offline = running.clinic.with_node(|n, now| n.check(now, &q, date).unwrap());
    assert_eq!(offline.code, AnswerCode::Valid, "the clinic has not heard of the retirement");
    let metrics = http(&running.url, "GET /metrics", "").await;
    assert!(metrics.contains("shikaku_sync_unacked_records 1"), "{metrics}");
    running.restart_hub().await;

    let report = shikaku_api::hub::hub_report(&running.hub).await.unwrap();
    let t = &report.totals;
    assert_eq!((t.checks, t.offline_checks, t.rederived), (2, 1, 2), "{t:?}");
    // Both VALID answers are contradicted now; the offline one is listed first.
    assert_eq!((t.contradicted, t.contradicted_offline), (2, 1), "{t:?}");
    let c = &report.contradicted[0];
    assert_eq!(c.check.mode, shikaku_core::CheckMode::Offline);
    assert_eq!(c.check.clinic, "front-desk", "named from its certificate");
    assert_eq!((c.check.answered, c.truth), (AnswerCode::Valid, AnswerCode::Invalid));
    assert_eq!(c.refund_tenths, Some(-7), "the patient owes the insurer's 7 tenths");
    assert!(c.action.contains("withdraw the claim"), "{}", c.action);
    assert_eq!(c.decided_later_by, vec![retired.id()]);
    assert_eq!(report.retroactive.len(), 1);
    assert_eq!(report.retroactive[0].checks.len(), 2);
    assert_eq!(report.clinics.len(), 1);
    assert!(report.clinics[0].max_staleness_s >= 600, "{:?}", report.clinics[0]);
    assert!(report.not_rederivable.is_empty());

    // The same report from the hub's insurer API, in the three formats.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let api = tokio::spawn(shikaku_api::hub::serve_hub_api(listener, running.hub.clone()));
    let (code, table, err) = crate::net::cli(&["reconcile", "--hub", &api_url]).await;
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("Checks the converged truth contradicts"), "{table}");
    assert!(table.contains("front-desk") && table.contains("withdraw the claim"), "{table}");
    let (code, json, _) =
        crate::net::cli(&["reconcile", "--hub", &api_url, "--format", "json"]).await;
    assert_eq!(code, 0);
    let value: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["totals"]["contradicted_offline"], 1);
    let html = http(&api_url, "GET /v1/reconcile?format=html", "").await;
    assert!(
        html.starts_with("HTTP/1.1 200")
            && html.contains("<h2>Checks the converged truth contradicts</h2>")
    );
    let bad = http(&api_url, "GET /v1/reconcile?format=pdf", "").await;
    assert!(bad.starts_with("HTTP/1.1 400") && bad.contains("format must be"), "{bad}");
    api.abort();
    running.shutdown().await;
}

#[test]
fn hub_import_shows_progress_refuses_bad_lines_and_reconcile_reads_the_ledger() {
    let dir = crate::scratch::Scratch::new("hub-import");
    let stream = dir.join("roster.jsonl");
    let keys = dir.join("keys.txt");
    let data = dir.join("hub");
    let run = |args: &[&str]| {
        let args: Vec<String> =
            std::iter::once("shikaku").chain(args.iter().copied()).map(String::from).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = shikaku_cli::run(args, &mut out, &mut err);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    };
    let (code, _, err) = run(&[
        "gen",
        "--members",
        "3000",
        "--seed",
        "5",
        "--malformed",
        "0.001",
        "--out",
        stream.to_str().unwrap(),
        "--keys-out",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let lines = std::fs::read_to_string(&stream).unwrap().lines().count() as u64;
    let d = data.to_str().unwrap();
    let (code, out, err) = run(&[
        "--data-dir",
        d,
        "hub",
        "import",
        stream.to_str().unwrap(),
        "--insurer-keys",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "bad lines make the exit status 1: {err}");
    // Progress (not a terminal here: a line per 10%), ending at 100%.
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    assert!(progress.len() >= 2, "{err}");
    assert!(progress.last().unwrap().contains("100%"), "{err}");
    let refused: Vec<&str> = err.lines().filter(|l| l.starts_with("line ")).collect();
    assert!(!refused.is_empty(), "{err}");
    let imported: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(imported + refused.len() as u64, lines, "{out}");
    // Importing again stores nothing twice.
    let (_, out, _) = run(&["--data-dir", d, "hub", "import", stream.to_str().unwrap()]);
    assert!(out.starts_with("imported 0 new events"), "{out}");
    // An event signed by the wrong key for its insurer is refused when keys are registered.
    let other_keys = dir.join("other-keys.txt");
    let text = std::fs::read_to_string(&keys).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    let (insurer, _) = first.split_once('=').unwrap();
    let (_, second_key) = rest.lines().next().unwrap().split_once('=').unwrap();
    std::fs::write(&other_keys, format!("{insurer}={second_key}\n")).unwrap();
    let (code, _, err) = run(&[
        "--data-dir",
        d,
        "hub",
        "import",
        stream.to_str().unwrap(),
        "--insurer-keys",
        other_keys.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not one registered for that insurer"), "{err}");
    // The report reads the hub's ledger directly (no clinic records yet: nothing to refund).
    let (code, out, err) = run(&["--data-dir", d, "reconcile", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["totals"]["checks"], 0);
    assert_eq!(report["hub_events"], imported);
    // Clinic names the hub saw in certificates are remembered next to its ledger.
    let id = shikaku_core::NodeId([7; 32]);
    let names = [(id, "clinic-7".to_owned())].into_iter().collect();
    shikaku_cli::serve::save_clinic_names(&data, &names).unwrap();
    assert_eq!(shikaku_cli::serve::load_clinic_names(&data).unwrap(), names);
    std::fs::write(data.join("clinic-names"), "nonsense\n").unwrap();
    // Derived data: a damaged names file costs the names (with a warning), not the report.
    let (code, _, err) = run(&["--data-dir", d, "reconcile"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("clinic-names line 1: expected NODE-ID-HEX NAME"), "{err}");
    assert!(err.starts_with("warning: "), "{err}");
    let (code, _, err) = run(&["--data-dir", dir.join("none").to_str().unwrap(), "reconcile"]);
    assert_eq!(code, 2);
    assert!(err.contains("no ledger"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_api_measures_every_way_on_a_small_world() {
    let args =
        ["shikaku", "bench", "api", "--members", "400", "--requests", "40", "--clients", "2"];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = shikaku_cli::run(args, &mut out, &mut err);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    for needle in [
        "baseline: projection check",
        "node check (answer + durable record)",
        "GET /v1/check, JSON",
        "format=fhir",
        "2 concurrent HTTP clients",
        "checks/s",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_hub_imports_over_its_api_and_pushes_live() {
    let running = Running::start("remote-import", 300).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let api = tokio::spawn(shikaku_api::hub::serve_hub_api(listener, running.hub.clone()));
    // Without a key registry the hub refuses imports over the network.
    let refused = http(&api_url, "POST /v1/import", "{}").await;
    assert!(refused.starts_with("HTTP/1.1 403") && refused.contains("--insurer-keys"), "{refused}");
    let insurer = running.d.insurers[0];
    let keys = running
        .d
        .insurers
        .iter()
        .map(|i| (*i, [shikaku_gen::insurer_signer(21, *i).public()].into_iter().collect()))
        .collect();
    running.hub.with_node(|n, _| n.set_insurer_keys(keys));
    // A stream: one good new event, a garbage line, one signed by an unregistered key.
    let member = crate::net::member_of(&running.d.events, insurer);
    let hub_id = running.hub.with_node(|n, _| n.node_id());
    let event = |signer: &shikaku_core::Signer, seq: u64| {
        let now = running.hub.clock().now_ms();
        signer
            .sign(shikaku_core::Event {
                namespace: shikaku_core::Namespace::Insurer(insurer),
                origin: hub_id,
                origin_seq: seq,
                hlc: Hlc::end_of_ms(now),
                author: signer.public(),
                body: EventBody::CopayRatioSet {
                    member: member.clone(),
                    effective: Date::from_ymd(2026, 11, 1).unwrap(),
                    copay_tenths: 2,
                },
            })
            .unwrap()
    };
    let good = event(&shikaku_gen::insurer_signer(21, insurer), 1 << 41);
    let forged = event(&shikaku_gen::insurer_signer(99, insurer), (1 << 41) + 1);
    let file = running.d.root.join("changes.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\nthis is not an event\n{}\n",
            shikaku_cli::jsonl::encode(&good),
            shikaku_cli::jsonl::encode(&forged)
        ),
    )
    .unwrap();
    let (code, out, err) =
        crate::net::cli(&["hub", "import", file.to_str().unwrap(), "--hub", &api_url]).await;
    assert_eq!(code, 1, "refused lines make the exit status 1: {out}{err}");
    assert!(
        out.starts_with("imported 1 new events from 3 lines (0 already present, 2 rejected)"),
        "{out}"
    );
    assert!(err.contains("line 2: "), "{err}");
    assert!(
        err.contains("line 3: ") && err.contains("not one registered for that insurer"),
        "{err}"
    );
    // The clinic subscribed to that insurer receives it live.
    let clinic = running.clinic.clone();
    let id = good.id();
    wait_for("live push of the imported event", || {
        clinic.with_node(|n, _| n.ledger().position_of(&id).is_some())
    })
    .await;
    let forged_id = forged.id();
    assert!(running.hub.with_node(|n, _| n.ledger().position_of(&forged_id).is_none()));
    // Importing the same file again stores nothing twice.
    let (_, out, _) =
        crate::net::cli(&["hub", "import", file.to_str().unwrap(), "--hub", &api_url]).await;
    assert!(out.starts_with("imported 0 new events from 3 lines (1 already present"), "{out}");
    api.abort();
    running.shutdown().await;
}

/// Parses (path, model) pairs with fhir.resources: each file must validate as its resource.
const FHIR_MODELS: &str = r#"
import importlib, json, sys
args = sys.argv[1:]
for path, model in zip(args[0::2], args[1::2]):
    module = importlib.import_module("fhir.resources." + model.lower())
    r = getattr(module, model).parse_file(path)
    print(json.dumps({"model": model, "type": r.resource_type}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_coverage_eligibility_request_is_answered_and_every_resource_validates() {
    // Issue 18, item 2: the request side of FHIR. A CoverageEligibilityRequest by card is
    // answered with the CoverageEligibilityResponse /v1/check?format=fhir renders (and recorded
    // like any check); errors are OperationOutcomes; /fhir/metadata is a CapabilityStatement.
    // fhir.resources validates the request we accept and everything we answer.
    let running = Running::start("fhir-request", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let (card, member, _) = cast(&running.d, date);
    let request = serde_json::json!({
        "resourceType": "CoverageEligibilityRequest",
        "status": "active",
        "purpose": ["validation"],
        "patient": { "identifier": { "system": "urn:shikaku:card-token", "value": card.to_string() } },
        "servicedDate": date.to_string(),
        "created": "2026-10-15T09:00:00+09:00",
        "insurer": { "display": "any" }
    });
    let post = |body: String| {
        let url = running.url.clone();
        async move {
            let text = crate::net::http_with(
                &url,
                "POST /fhir/CoverageEligibilityRequest",
                &[("X-Shikaku-Client", "test"), ("Content-Type", "application/fhir+json")],
                &body,
            )
            .await;
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            (status, head.to_owned(), body.to_owned())
        }
    };
    let before = running.clinic.with_node(|n, _| n.ledger().len());
    let (status, head, answer) = post(request.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(head.contains("application/fhir+json"), "{head}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["resourceType"], "CoverageEligibilityResponse");
    assert_eq!(answer["patient"]["identifier"]["value"], member.to_string());
    assert_eq!(answer["insurance"][0]["inforce"], true);
    assert_eq!(running.clinic.with_node(|n, _| n.ledger().len()), before + 1, "recorded");

    // Errors name the element at fault.
    let mut wrong = request.clone();
    wrong["patient"]["identifier"]["system"] = "urn:oid:1.2.392.200119.6.102".into();
    let (status, _, outcome) = post(wrong.to_string()).await;
    assert_eq!(status, 400, "{outcome}");
    let outcome: Value = serde_json::from_str(&outcome).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "not-supported");
    assert_eq!(outcome["issue"][0]["expression"][0], "patient.identifier.system");
    let (status, _, not_json) = post("{".into()).await;
    assert_eq!(status, 400);
    assert!(not_json.contains("\"structure\""), "{not_json}");
    let metadata = crate::net::http(&running.url, "GET /fhir/metadata", "").await;
    let metadata = metadata.split_once("\r\n\r\n").unwrap().1.to_owned();

    let dir = running.d.root.join("fhir-request");
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = Vec::new();
    for (name, text, model) in [
        ("request", request.to_string(), "CoverageEligibilityRequest"),
        ("response", answer.to_string(), "CoverageEligibilityResponse"),
        ("outcome", outcome.to_string(), "OperationOutcome"),
        ("metadata", metadata, "CapabilityStatement"),
    ] {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, text).unwrap();
        args.push(path.to_str().unwrap().to_owned());
        args.push(model.to_owned());
    }
    let output = std::process::Command::new(fhir_python())
        .arg("-c")
        .arg(FHIR_MODELS)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "fhir.resources refused a resource:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 4);
    running.shutdown().await;
}
