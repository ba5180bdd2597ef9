//! Who may ask, and who looked (issue 17), over a real clinic synced from a real hub (QUIC on
//! loopback): staff log in (Argon2id), sessions expire when idle, wrong passwords are
//! throttled, a disabled account is refused at once with its open sessions, a reception
//! account cannot manage staff, cross-site requests record nothing, and the operator is in the
//! check record at the hub; insurer tokens see only their insurers' members and every use of
//! the insurer API is recorded.

use std::sync::Arc;

use serde_json::Value;
use shikaku_api::auth::ClinicAuth;
use shikaku_api::insurer_auth::{AccountsFile, HubAuth};
use shikaku_api::staff::{StaffFile, StaffRole};
use shikaku_core::{Date, EventBody, Namespace};

use crate::api::{cast, Running};
use crate::net::wait_for;

/// An HTTP/1.1 exchange with extra headers: (status, response headers, body).
async fn call(
    url: &str,
    request: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let text = crate::net::http_with(url, request, headers, body).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

const PAGE: (&str, &str) = ("X-Shikaku-Client", "test");

fn cookie_of(head: &str) -> String {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie in {head}"));
    let value = line.split_once(':').unwrap().1.trim();
    value.split(';').next().unwrap().to_owned()
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .map(|v| v["error"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

async fn login(url: &str, name: &str, password: &str) -> (u16, String, String) {
    let body = serde_json::json!({ "name": name, "password": password }).to_string();
    call(url, "POST /v1/login", &[PAGE], &body).await
}

/// Serves the clinic API with staff accounts on a second loopback port.
async fn serve_with_staff(running: &Running, auth: Arc<ClinicAuth>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let rt = running.clinic.clone();
    tokio::spawn(async move {
        let options = shikaku_api::serve::ApiOptions::default();
        let _ = shikaku_api::clinic::serve_api_auth(listener, rt, auth, &options).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_log_in_expire_are_throttled_disabled_at_once_and_the_hub_sees_the_operator() {
    let running = Running::start("staff", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let (card, _, _) = cast(&running.d, date);
    let staff_dir = running.d.root.join("front-desk-staff");
    // No accounts yet: the loopback no-login mode, until the first account is added.
    let auth = Arc::new(
        ClinicAuth::open(&staff_dir, true, 15 * 60_000, running.clinic.clock().clone()).unwrap(),
    );
    let url = serve_with_staff(&running, auth.clone()).await;
    let check = format!("GET /v1/check?card={card}&date={date}");
    assert_eq!(call(&url, &check, &[PAGE], "").await.0, 200, "no login needed yet");
    let mut file = StaffFile::load(&staff_dir).unwrap();
    let now = running.clinic.clock().now_ms();
    file.add("aiko", &[StaffRole::Reception], "aiko-password-1", now).unwrap();
    file.add("boss", &[StaffRole::Admin], "boss-password-1", now).unwrap();
    file.add("chie", &[StaffRole::Reception], "chie-password-1", now).unwrap();
    file.save(&staff_dir).unwrap();
    let aiko_id = file.find("aiko").unwrap().id;
    let mode = std::fs::metadata(staff_dir.join("staff.json")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);

    // No session: nothing but the page, the login and the session probe.
    let (status, _, body) = call(&url, &check, &[PAGE], "").await;
    assert_eq!((status, error_code(&body).as_str()), (401, "login_required"), "{body}");
    let (status, _, page) = call(&url, "GET /", &[], "").await;
    assert!(status == 200 && page.contains("id=\"login-form\""), "the page offers the log-in");
    let (_, _, session) = call(&url, "GET /v1/session", &[], "").await;
    assert!(session.contains("\"mode\":\"login\""), "{session}");

    // Wrong passwords: five answered, then throttled — even the right password must wait.
    for _ in 0..5 {
        let (status, _, body) = login(&url, "aiko", "not-her-password").await;
        assert_eq!((status, error_code(&body).as_str()), (401, "wrong_login"), "{body}");
    }
    let (status, head, body) = login(&url, "aiko", "aiko-password-1").await;
    assert_eq!((status, error_code(&body).as_str()), (429, "login_throttled"), "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 30"), "{head}");
    // An unknown name answers exactly like a wrong password.
    let (status, _, body) = login(&url, "nobody", "whatever-password").await;
    assert_eq!((status, error_code(&body).as_str()), (401, "wrong_login"));
    running.clinic.clock().advance(31_000);

    // The right password after the wait: a session cookie with every attribute asked for.
    let (status, head, body) = login(&url, "aiko", "aiko-password-1").await;
    assert_eq!(status, 200, "{body}");
    let set_cookie =
        head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie")).unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let aiko = cookie_of(&head);
    let with_aiko = [PAGE, ("Cookie", aiko.as_str())];

    // Reception checks; the record names aiko's pseudonymous id, never her name.
    let (status, _, body) = call(&url, &check, &with_aiko, "").await;
    assert_eq!(status, 200, "{body}");
    let own = Namespace::Clinic(running.d.signer("front-desk").node_id());
    let (records, _) = running.clinic.with_node(|n, _| n.own_records());
    let last = records.last().unwrap();
    assert!(matches!(last.event().body, EventBody::CheckPerformed { .. }));
    assert_eq!((last.schema_version(), last.operator()), (3, Some(aiko_id)));

    // Reception cannot manage staff or read metrics.
    let (status, _, body) = call(&url, "GET /v1/staff", &with_aiko, "").await;
    assert_eq!((status, error_code(&body).as_str()), (403, "role_required"), "{body}");
    let (status, _, _) =
        call(&url, "POST /v1/staff/disable", &with_aiko, r#"{"name":"chie"}"#).await;
    assert_eq!(status, 403);
    let (status, _, _) = call(&url, "GET /metrics", &with_aiko, "").await;
    assert_eq!(status, 403);
    assert!(!StaffFile::load(&staff_dir).unwrap().find("chie").unwrap().disabled);

    // A cross-site request through aiko's browser records nothing, session or not.
    let before = running.clinic.with_node(|n, _| n.ledger().len());
    let (status, _, body) = call(
        &url,
        &check,
        &[PAGE, ("Cookie", aiko.as_str()), ("Sec-Fetch-Site", "cross-site")],
        "",
    )
    .await;
    assert_eq!((status, error_code(&body).as_str()), (403, "cross_site"), "{body}");
    let (status, _, _) = call(
        &url,
        &check,
        &[PAGE, ("Cookie", aiko.as_str()), ("Origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(running.clinic.with_node(|n, _| n.ledger().len()), before, "nothing recorded");

    // The admin sees the audit view per staff member and the anomaly metrics.
    let (_, head, _) = login(&url, "boss", "boss-password-1").await;
    let boss = cookie_of(&head);
    let with_boss = [PAGE, ("Cookie", boss.as_str())];
    let (status, _, audit) = call(&url, "GET /v1/audit", &with_boss, "").await;
    assert_eq!(status, 200, "{audit}");
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let row = audit["staff"].as_array().unwrap().iter().find(|r| r["name"] == "aiko").unwrap();
    assert_eq!((row["checks"].as_u64(), row["flagged"].as_bool()), (Some(1), Some(false)));
    let (status, _, metrics) = call(&url, "GET /metrics", &with_boss, "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("shikaku_staff_checks_last_hour{{staff=\"{aiko_id}\"}} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("shikaku_staff_login_failures_total 6"), "{metrics}");
    assert!(!metrics.contains("aiko"), "names stay out of metrics");

    // The admin disables chie while she is logged in: her session ends at its next request.
    let (_, head, _) = login(&url, "chie", "chie-password-1").await;
    let chie = cookie_of(&head);
    let with_chie = [PAGE, ("Cookie", chie.as_str())];
    assert_eq!(call(&url, &check, &with_chie, "").await.0, 200);
    let (status, _, _) =
        call(&url, "POST /v1/staff/disable", &with_boss, r#"{"name":"chie"}"#).await;
    assert_eq!(status, 200);
    let (status, _, body) = call(&url, &check, &with_chie, "").await;
    assert_eq!((status, error_code(&body).as_str()), (401, "session_ended"), "{body}");
    let (status, _, body) = login(&url, "chie", "chie-password-1").await;
    assert_eq!((status, error_code(&body).as_str()), (403, "account_disabled"), "{body}");
    // … and so does one disabled by the command line, editing the file under a running API.
    let mut file = StaffFile::load(&staff_dir).unwrap();
    file.disable("boss").unwrap();
    file.save(&staff_dir).unwrap();
    let (status, _, _) = call(&url, "GET /v1/audit", &with_boss, "").await;
    assert_eq!(status, 401, "the admin's own session ended with the account");

    // Idle expiry: aiko's session ends after 15 minutes without a request of hers. The
    // page's own health and session polling (every 5 s while it is open) is not her working:
    // it must not keep the session alive while she is away from the desk.
    for _ in 0..2 {
        running.clinic.clock().advance(5 * 60_000 + 1_000);
        assert_eq!(call(&url, "GET /v1/health", &with_aiko, "").await.0, 200);
        assert_eq!(call(&url, "GET /v1/session", &with_aiko, "").await.0, 200);
    }
    running.clinic.clock().advance(5 * 60_000 + 1_000);
    let (status, head, body) = call(&url, &check, &with_aiko, "").await;
    assert_eq!((status, error_code(&body).as_str()), (401, "session_expired"), "{body}");
    assert!(head.contains("Max-Age=0"), "the cookie is cleared: {head}");
    // Logging in again and out again: the cookie no longer works.
    let (_, head, _) = login(&url, "aiko", "aiko-password-1").await;
    let again = cookie_of(&head);
    let (status, head, _) =
        call(&url, "POST /v1/logout", &[PAGE, ("Cookie", again.as_str())], "").await;
    assert!(status == 200 && head.contains("Max-Age=0"), "{head}");
    let (status, _, _) = call(&url, &check, &[PAGE, ("Cookie", again.as_str())], "").await;
    assert_eq!(status, 401);

    // The hub holds aiko's check with her pseudonymous id, and not her name.
    let hub = running.hub.clone();
    let id = last.id();
    wait_for("the check reaches the hub", || {
        hub.with_node(|n, _| n.ledger().position_of(&id).is_some())
    })
    .await;
    let at_hub =
        hub.with_node(|n, _| n.ledger().read(n.ledger().position_of(&id).unwrap()).unwrap());
    assert_eq!(at_hub.operator(), Some(aiko_id));
    assert_eq!(at_hub.event().namespace, own);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insurer_token_sees_only_its_insurers_members_and_every_use_is_recorded() {
    let running = Running::start("insurer-tokens", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let (card, member_a, _) = cast(&running.d, date);
    let (insurer_a, insurer_b) = (running.d.insurers[0], running.d.insurers[1]);
    let member_b = crate::net::member_of(&running.d.events, insurer_b);
    // A check at the clinic, so the access report has something to show.
    let answer = running.clinic.check(shikaku_core::CheckQuery::Card(card), date).await.unwrap();
    assert_eq!(answer.0.member.as_ref(), Some(&member_a));
    let own = Namespace::Clinic(running.d.signer("front-desk").node_id());
    let (hub, clinic) = (running.hub.clone(), running.clinic.clone());
    wait_for("the check reaches the hub", || {
        crate::net::state(&hub, own) == crate::net::state(&clinic, own)
    })
    .await;

    let hub_dir = running.d.root.join("hub-api");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let auth = Arc::new(HubAuth::open(&hub_dir, true, running.hub.clock().clone()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = shikaku_api::hub::hub_router_with(running.hub.clone(), auth);
    tokio::spawn(async move {
        let _ = shikaku_api::serve::serve_guarded(listener, router, &Default::default()).await;
    });
    // No accounts yet, on loopback: open to every insurer (and recorded).
    assert_eq!(call(&url, "GET /v1/reconcile?format=json", &[PAGE], "").await.0, 200);
    // Accounts added while the API runs take effect at once.
    let mut accounts = AccountsFile::load(&hub_dir).unwrap();
    let token_a = accounts.add("kenji", &[insurer_a], 1).unwrap();
    let token_b = accounts.add("mari", &[insurer_b], 1).unwrap();
    accounts.save(&hub_dir).unwrap();
    let bearer_a = format!("Bearer {token_a}");
    let bearer_b = format!("Bearer {token_b}");
    let as_a = [PAGE, ("Authorization", bearer_a.as_str())];
    let as_b = [PAGE, ("Authorization", bearer_b.as_str())];
    let path_of = |m: &shikaku_core::MemberKey| {
        let key: String = shikaku_api::client::check_path(&[("k", &m.to_string())])
            .trim_start_matches("/v1/check?k=")
            .to_owned();
        format!("GET /v1/members/{key}/accesses")
    };

    // No token, a wrong token: refused.
    assert_eq!(call(&url, "GET /v1/reconcile?format=json", &[PAGE], "").await.0, 401);
    let wrong = [PAGE, ("Authorization", "Bearer shk_00")];
    assert_eq!(call(&url, "GET /v1/reconcile?format=json", &wrong, "").await.0, 401);

    // A's report names A's checks and none of B's members; B's report has no check at all.
    let (status, _, report_a) = call(&url, "GET /v1/reconcile?format=json", &as_a, "").await;
    assert_eq!(status, 200, "{report_a}");
    let report_a: Value = serde_json::from_str(&report_a).unwrap();
    assert_eq!(report_a["totals"]["checks"], 1);
    let (_, _, report_b) = call(&url, "GET /v1/reconcile?format=json", &as_b, "").await;
    let report_b: Value = serde_json::from_str(&report_b).unwrap();
    assert_eq!(report_b["totals"]["checks"], 0, "{report_b}");
    assert!(!report_b.to_string().contains(&insurer_a.to_string()), "{report_b}");

    // The access report: A sees its member's check; A cannot ask about B's member at all.
    let (status, _, accesses) = call(&url, &path_of(&member_a), &as_a, "").await;
    assert_eq!(status, 200, "{accesses}");
    let accesses: Value = serde_json::from_str(&accesses).unwrap();
    assert_eq!(accesses["accesses"].as_array().unwrap().len(), 1, "{accesses}");
    assert_eq!(accesses["accesses"][0]["institution"], "front-desk");
    assert_eq!(accesses["accesses"][0]["by"], "card");
    let (status, _, body) = call(&url, &path_of(&member_b), &as_a, "").await;
    assert_eq!((status, error_code(&body).as_str()), (404, "unknown_member"), "{body}");
    assert!(!body.contains(&member_b.number), "the refusal does not echo the member");
    let (status, _, _) = call(&url, &path_of(&member_a), &as_b, "").await;
    assert_eq!(status, 404, "and B cannot ask about A's");

    // B may import only B's events: A's lines are refused one by one, B's are taken.
    let mut registry: std::collections::BTreeMap<_, std::collections::BTreeSet<_>> =
        Default::default();
    for e in &running.d.events {
        if let Namespace::Insurer(i) = e.event().namespace {
            registry.entry(i).or_default().insert(e.event().author);
        }
    }
    running.hub.with_node(|n, _| n.set_insurer_keys(registry));
    let of = |insurer| {
        running
            .d
            .events
            .iter()
            .find(|e| e.event().namespace == Namespace::Insurer(insurer))
            .unwrap()
    };
    let body = format!(
        "{}\n{}\n",
        shikaku_cli::jsonl::encode(of(insurer_a)),
        shikaku_cli::jsonl::encode(of(insurer_b))
    );
    let (status, _, reply) = call(&url, "POST /v1/import", &as_b, &body).await;
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["rejected"], 1, "{reply}");
    assert_eq!(reply["refused"][0]["line"], 1, "{reply}");
    assert!(
        reply["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("which account mari may not write"),
        "{reply}"
    );
    assert_eq!(reply["duplicates"], 1, "B's own line is taken (already held): {reply}");

    // Every use is in the log, refused ones too, naming the account and never a member key.
    let log = std::fs::read_to_string(hub_dir.join("insurer-api.log")).unwrap();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 9, "{log}");
    assert_eq!(lines.iter().filter(|l| l["account"] == "(loopback, no accounts)").count(), 1);
    assert_eq!(lines.iter().filter(|l| l["account"] == "(refused)").count(), 2);
    assert_eq!(lines.iter().filter(|l| l["account"] == "kenji").count(), 3);
    let member_use = lines
        .iter()
        .find(|l| l["account"] == "kenji" && l["status"] == 200 && l["member_tag"].is_string())
        .unwrap();
    assert_eq!(member_use["path"], "/v1/members/{member}/accesses");
    assert_eq!(member_use["member_tag"], shikaku_api::insurer_auth::member_tag(&member_a));
    assert!(!log.contains(&member_a.number) && !log.contains(&member_b.number), "{log}");
    running.shutdown().await;
}
