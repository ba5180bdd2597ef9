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

use crate::net::{axum_serve, http, wait_for, Deployment};

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
        let clinic_service =
            ClinicService::start(clinic.clone(), &clinic_tls, hub_service.local_addr().unwrap())
                .unwrap();
        wait_for("sync", || clinic.with_node(|n, _| n.in_sync())).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let rt = clinic.clone();
        let api = tokio::spawn(async move { axum_serve(listener, rt).await });
        Running {
            d,
            hub,
            hub_service: Some(hub_service),
            clinic,
            clinic_service: Some(clinic_service),
            url,
            api,
        }
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
            if a.code == AnswerCode::Invalid && a.conflicts.is_empty() {
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

fn body(response: &str) -> (u16, &str) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body)
}

/// `target/fhir-venv/bin/python` with fhir.resources 6.1.0 (FHIR 4.0.1), created on first use.
fn fhir_python() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
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

    // Health and metrics, online.
    let response = http(&running.url, "GET /v1/health", "").await;
    let (status, text) = body(&response);
    assert_eq!(status, 200);
    let mut health: Value = serde_json::from_str(text).unwrap();
    redact(&mut health);
    health["events"] = Value::String("[count]".into());
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
