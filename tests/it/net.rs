//! Sync over real QUIC on loopback with mutual TLS: initial and incremental sync, live push,
//! the hub stopped (the clinic keeps answering with growing staleness) and back (both
//! converge), a clinic restored from an old backup, refusals of unauthorized writes and reads,
//! and malformed/oversized frames closing only their own session.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shikaku_core::{CheckQuery, Date, InsurerNumber, MemberKey, Namespace, SignedEvent, Signer};
use shikaku_log::fs::FileDirectory;
use shikaku_net::tls;
use shikaku_net::{ClinicService, Clock, HubService, Runtime};
use shikaku_node::{Level, Node, NodeConfig, Role};
use shikaku_protocol::wire::{Ack, Hello, Welcome};
use shikaku_protocol::wire::{FrameSplitter, Message, Subscription};

fn temp_dir(name: &str) -> crate::scratch::Scratch {
    crate::scratch::Scratch::new(&format!("net-{name}"))
}

pub(crate) struct Deployment {
    pub(crate) root: crate::scratch::Scratch,
    pub(crate) events: Vec<SignedEvent>,
    pub(crate) insurers: Vec<InsurerNumber>,
}

impl Deployment {
    pub(crate) fn new(name: &str, members: usize) -> Deployment {
        let root = temp_dir(name);
        tls::ca_init(&root.join("ca")).unwrap();
        let (events, insurers, _) = crate::node::generated(members, 21);
        Deployment { root, events, insurers }
    }

    pub(crate) fn signer(&self, name: &str) -> Signer {
        Signer::derived("shikaku net test", name.as_bytes())
    }

    pub(crate) fn issue(&self, role: Role, name: &str) -> tls::TlsFiles {
        let out = self.root.join(name).join("tls");
        tls::ca_issue(&self.root.join("ca"), role, name, self.signer(name).node_id(), &out)
            .unwrap();
        tls::load(&out).unwrap()
    }

    pub(crate) fn runtime(
        &self,
        role: Role,
        name: &str,
        insurers: &[InsurerNumber],
    ) -> Arc<Runtime> {
        let mut config = NodeConfig::new(role, name);
        config.insurers = insurers.iter().copied().collect();
        let dir = FileDirectory::new(self.root.join(name).join("log")).unwrap();
        let node = Node::open(dir, self.signer(name), config).unwrap();
        let rt = Runtime::new(node, Clock::wall(), Level::Info);
        rt.keep_log();
        rt
    }
}

pub(crate) async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub(crate) fn state(rt: &Runtime, ns: Namespace) -> (u64, [u8; 16]) {
    rt.with_node(|n, _| {
        let acc = n.namespace_state(&ns);
        (acc.count(), acc.fingerprint())
    })
}

pub(crate) fn member_of(events: &[SignedEvent], insurer: InsurerNumber) -> MemberKey {
    events
        .iter()
        .find_map(|e| e.event().body.membership_subject().filter(|m| m.insurer == insurer).cloned())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinic_syncs_keeps_answering_offline_and_converges_after_the_hub_returns() {
    let d = Deployment::new("story", 400);
    let insurer = d.insurers[0];
    let hub_tls = d.issue(Role::Hub, "hub");
    let clinic_tls = d.issue(Role::Clinic, "clinic-a");
    let hub = d.runtime(Role::Hub, "hub", &d.insurers);
    // Hold back the last tenth of the insurer's history to publish while the clinic is online.
    let split = d.events.len() * 9 / 10;
    hub.with_node(|n, now| n.import(now, &d.events[..split]).unwrap());
    let service = HubService::start(hub.clone(), &hub_tls, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = service.local_addr().unwrap();

    let clinic = d.runtime(Role::Clinic, "clinic-a", &[insurer]);
    let clinic_service = ClinicService::start(clinic.clone(), &clinic_tls, &[addr]).unwrap();
    let ns = Namespace::Insurer(insurer);
    // Initial sync.
    wait_for("initial sync", || clinic.with_node(|n, _| n.in_sync())).await;
    assert_eq!(state(&clinic, ns), state(&hub, ns));
    assert!(state(&clinic, ns).0 > 100);
    // Other insurers were not replicated here: "unknown", never "no match".
    let other = member_of(&d.events, d.insurers[1]);
    let date = Date::from_ymd(2026, 1, 5).unwrap();
    let answer = clinic.with_node(|n, now| n.check(now, &CheckQuery::Member(other), date).unwrap());
    assert_eq!(answer.code, shikaku_core::AnswerCode::Unknown);

    // Incremental sync by live push.
    hub.with_node(|n, now| n.import(now, &d.events[split..]).unwrap());
    wait_for("live push", || state(&clinic, ns) == state(&hub, ns)).await;
    let member = member_of(&d.events, insurer);
    let online =
        clinic.with_node(|n, now| n.check(now, &CheckQuery::Member(member.clone()), date).unwrap());
    assert_eq!(online.knowledge.staleness_s, Some(0), "online answers are current");

    // The hub stops: checks still answer, and say how stale they are.
    service.shutdown().await;
    wait_for("clinic notices", || !clinic.with_node(|n, _| n.in_sync())).await;
    clinic.clock().advance(90_000);
    let offline =
        clinic.with_node(|n, now| n.check(now, &CheckQuery::Member(member.clone()), date).unwrap());
    assert_eq!(offline.code, online.code, "the same answer offline");
    assert!(offline.knowledge.staleness_s.unwrap() >= 90, "{:?}", offline.knowledge);
    clinic.clock().advance(60_000);
    let later =
        clinic.with_node(|n, now| n.check(now, &CheckQuery::Member(member.clone()), date).unwrap());
    assert!(later.knowledge.staleness_s.unwrap() >= offline.knowledge.staleness_s.unwrap() + 60);

    // The hub comes back on the same address: both converge to the same sets and digest.
    hub.resume();
    let service = HubService::start(hub.clone(), &hub_tls, addr).unwrap();
    let own = Namespace::Clinic(d.signer("clinic-a").node_id());
    wait_for("convergence", || {
        clinic.with_node(|n, _| n.in_sync()) && state(&clinic, own) == state(&hub, own)
    })
    .await;
    assert_eq!(state(&clinic, ns), state(&hub, ns));
    assert_eq!(state(&hub, own).0, 4, "all four check records reached the hub");
    // The same projection digest: the clinic's state equals a fold of the hub's events of the
    // clinic's namespaces.
    let replication = shikaku_core::Replication::Insurers([insurer].into_iter().collect());
    let from_hub = hub.with_node(|n, _| {
        let mut p = shikaku_core::Projection::new(replication);
        for (_, e) in n.ledger().read_from(1, usize::MAX).unwrap() {
            if e.event().namespace == ns || e.event().namespace == own {
                p.apply(&e);
            }
        }
        p.digest()
    });
    assert_eq!(
        clinic.with_node(|n, _| n.projection().digest()),
        from_hub,
        "same projection digest"
    );
    let covered = clinic.with_node(|n, _| n.receipt().map(|(r, ns)| (r.complete, ns.len())));
    assert_eq!(
        covered,
        Some((true, 2)),
        "a signed complete receipt covering both namespaces is kept"
    );

    clinic_service.shutdown().await;
    service.shutdown().await;
    assert!(
        !hub.log_lines().iter().any(|l| l.contains(&member.to_string())),
        "no member data in logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_clinic_is_repaired_without_reset() {
    let d = Deployment::new("restore", 150);
    let insurer = d.insurers[0];
    let hub_tls = d.issue(Role::Hub, "hub");
    let clinic_tls = d.issue(Role::Clinic, "clinic-b");
    let hub = d.runtime(Role::Hub, "hub", &d.insurers);
    hub.with_node(|n, now| n.import(now, &d.events).unwrap());
    let service = HubService::start(hub.clone(), &hub_tls, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = service.local_addr().unwrap();
    let own = Namespace::Clinic(d.signer("clinic-b").node_id());
    let member = member_of(&d.events, insurer);
    let date = Date::from_ymd(2026, 1, 5).unwrap();

    let clinic = d.runtime(Role::Clinic, "clinic-b", &[insurer]);
    let cs = ClinicService::start(clinic.clone(), &clinic_tls, &[addr]).unwrap();
    wait_for("sync", || clinic.with_node(|n, _| n.in_sync())).await;
    clinic.with_node(|n, now| n.check(now, &CheckQuery::Member(member.clone()), date).unwrap());
    wait_for("check record at hub", || state(&hub, own).0 == 1).await;
    cs.shutdown().await;
    // Back up the data directory now.
    let data = d.root.join("clinic-b");
    let backup = d.root.join("clinic-b.backup");
    copy_dir(&data, &backup);
    // More checks after the backup, synced to the hub.
    let clinic = reopen(&d, clinic, "clinic-b", insurer);
    let cs = ClinicService::start(clinic.clone(), &clinic_tls, &[addr]).unwrap();
    for _ in 0..3 {
        clinic.with_node(|n, now| n.check(now, &CheckQuery::Member(member.clone()), date).unwrap());
    }
    wait_for("checks at hub", || state(&hub, own).0 == 4).await;
    cs.shutdown().await;
    let clinic_node = clinic;
    // Disaster: restore the old backup.
    drop(clinic_node);
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);
    let clinic = d.runtime(Role::Clinic, "clinic-b", &[insurer]);
    assert_eq!(state(&clinic, own).0, 1, "the backup holds one check record");
    let cs = ClinicService::start(clinic.clone(), &clinic_tls, &[addr]).unwrap();
    wait_for("repair", || {
        clinic.with_node(|n, _| n.in_sync()) && state(&clinic, own) == state(&hub, own)
    })
    .await;
    assert_eq!(state(&clinic, own).0, 4, "lost records came back from the hub");
    cs.shutdown().await;
    service.shutdown().await;
}

fn reopen(d: &Deployment, rt: Arc<Runtime>, name: &str, insurer: InsurerNumber) -> Arc<Runtime> {
    // Wait until every task let go of the old node, then open the directory again.
    for _ in 0..200 {
        if Arc::strong_count(&rt) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(rt);
    d.runtime(Role::Clinic, name, &[insurer])
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A raw client speaking the protocol by hand over QUIC.
async fn raw_session(
    tls_files: &tls::TlsFiles,
    addr: std::net::SocketAddr,
) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let config = tls::client_config(tls_files, shikaku_net::runtime::transport()).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(addr, "shikaku-hub").unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    (endpoint, conn, send, recv)
}

async fn read_message(
    recv: &mut quinn::RecvStream,
    splitter: &mut FrameSplitter,
) -> Option<Message> {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some(body) = splitter.next_frame().unwrap() {
            return Some(Message::decode(&body).unwrap());
        }
        match tokio::time::timeout(Duration::from_secs(10), recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => splitter.push(&buf[..n]),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_bad_frames_close_only_their_session() {
    let d = Deployment::new("refusals", 100);
    let insurer = d.insurers[0];
    let hub_tls = d.issue(Role::Hub, "hub");
    let rogue_tls = d.issue(Role::Clinic, "rogue");
    let good_tls = d.issue(Role::Clinic, "good");
    let hub = d.runtime(Role::Hub, "hub", &d.insurers);
    hub.with_node(|n, now| n.import(now, &d.events).unwrap());
    let service = HubService::start(hub.clone(), &hub_tls, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = service.local_addr().unwrap();
    let good = d.runtime(Role::Clinic, "good", &[insurer]);
    let good_service = ClinicService::start(good.clone(), &good_tls, &[addr]).unwrap();
    wait_for("good clinic in sync", || good.with_node(|n, _| n.in_sync())).await;

    // A clinic that asks for another clinic's namespace and writes an insurer's events.
    let (_ep, conn, mut send, mut recv) = raw_session(&rogue_tls, addr).await;
    let mut splitter = FrameSplitter::new(4 << 20);
    let hello = Message::Hello(Hello {
        version: 1,
        role: Role::Clinic,
        frame_max: 1 << 20,
        cursor: 0,
        subscriptions: vec![Subscription {
            namespace: Namespace::Clinic(d.signer("good").node_id()),
            cursor: None,
        }],
        prefetch: vec![],
    });
    send.write_all(&hello.to_frame()).await.unwrap();
    match read_message(&mut recv, &mut splitter).await {
        Some(Message::Welcome(Welcome { verdicts, .. })) => {
            assert_eq!(verdicts, vec![Some(shikaku_protocol::wire::RefusalReason::OtherClinic)]);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    let insurer_event =
        d.events.iter().find(|e| e.event().namespace == Namespace::Insurer(insurer)).unwrap();
    let mut forged = shikaku_protocol::wire::event_to_wire(
        insurer_event.schema_version(),
        insurer_event.canonical_bytes(),
        &insurer_event.signature(),
    );
    let events = Message::Events { events: vec![forged.clone()] };
    send.write_all(&events.to_frame()).await.unwrap();
    let n = forged.len();
    forged[n - 1] ^= 0x40; // a bad signature
    send.write_all(&Message::Events { events: vec![forged] }.to_frame()).await.unwrap();
    let mut refusals = Vec::new();
    while refusals.len() < 2 {
        match read_message(&mut recv, &mut splitter).await {
            Some(Message::Ack(Ack { refused, .. })) => {
                refusals.extend(refused.into_iter().map(|r| r.reason))
            }
            Some(_) => {}
            None => panic!("no Ack"),
        }
    }
    use shikaku_protocol::wire::RefusalReason as R;
    assert_eq!(refusals, vec![R::NotWritable, R::Invalid]);
    // Now an oversized frame: the session gets a typed error and the stream ends.
    send.write_all(&(8u32 << 20).to_le_bytes()).await.unwrap();
    let mut saw_error = None;
    while let Some(m) = read_message(&mut recv, &mut splitter).await {
        if let Message::Error { code, message } = m {
            saw_error = Some((code, message));
            break;
        }
    }
    let (code, message) = saw_error.expect("an Error frame");
    assert_eq!(code, shikaku_protocol::wire::ErrorCode::TooLarge.code());
    assert!(message.contains("exceeds the limit"), "{message}");
    conn.close(0u32.into(), b"");
    // Another session with garbage: Malformed.
    let (_ep2, conn2, mut send2, mut recv2) = raw_session(&rogue_tls, addr).await;
    send2.write_all(&[3, 0, 0, 0, 0x55, 1, 2]).await.unwrap();
    let mut splitter2 = FrameSplitter::new(4 << 20);
    match read_message(&mut recv2, &mut splitter2).await {
        Some(Message::Error { code, .. }) => {
            assert_eq!(code, shikaku_protocol::wire::ErrorCode::Malformed.code())
        }
        other => panic!("expected Error, got {other:?}"),
    }
    conn2.close(0u32.into(), b"");

    // The good clinic is still served: a new check record reaches the hub.
    let member = member_of(&d.events, insurer);
    good.with_node(|n, now| {
        n.check(now, &CheckQuery::Member(member), Date::from_ymd(2026, 2, 1).unwrap()).unwrap()
    });
    let own = Namespace::Clinic(d.signer("good").node_id());
    wait_for("good clinic's record", || state(&hub, own).0 == 1).await;
    let counters = hub.with_node(|n, _| n.counters().clone());
    assert_eq!(counters.refusals.get("other_clinic"), Some(&1));
    assert_eq!(counters.refusals.get("not_writable"), Some(&1));
    assert_eq!(counters.refusals.get("invalid"), Some(&1));
    assert!(hub.log_lines().iter().any(|l| l.contains("refused (not_writable)")));

    // A hub certificate presented by a client is refused before any session.
    let imposter_tls = d.issue(Role::Hub, "imposter");
    let config = tls::client_config(&imposter_tls, shikaku_net::runtime::transport()).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(addr, "shikaku-hub").unwrap().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
    assert!(
        closed.to_string().contains("wrong role")
            || matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed}"
    );
    wait_for("connection refusal counted", || {
        hub.with_node(|n, _| n.counters().refusals.get("connection").copied()) == Some(1)
    })
    .await;

    good_service.shutdown().await;
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shikaku_check_asks_a_running_clinic_node() {
    let running = crate::api::Running::start("ask", 100).await;
    let (d, hub, url) = (&running.d, running.hub.clone(), running.url.clone());
    let insurer = d.insurers[0];
    let member = member_of(&d.events, insurer).to_string();
    let (code, out, err) =
        cli(&["check", "--node", &url, "--member", &member, "--date", "2026-01-05"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&member) && out.contains("0 s ago"), "{out}");
    // A bad request is a 400 naming the problem.
    let (code, _, err) = cli(&["check", "--node", &url, "--member", "nonsense"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("400") && err.contains("INSURER:SYMBOL:NUMBER:BRANCH"), "{err}");
    // Prometheus metrics: the check above is counted by result and mode; no member data.
    let metrics = http(&url, "GET /metrics", "").await;
    assert!(
        metrics.contains("shikaku_checks_total{result=") && metrics.contains("mode=\"online\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shikaku_in_sync 1") && metrics.contains("shikaku_staleness_seconds 0"),
        "{metrics}"
    );
    assert!(!metrics.contains(&member), "no member data in metrics");
    // A self-declaration is recorded (201) and reaches the hub; a bad date is a 400 naming it.
    let own = Namespace::Clinic(d.signer("front-desk").node_id());
    let before = state(&hub, own).0;
    let body = format!(r#"{{"member":"{member}","declared_start":"2026-01-04"}}"#);
    let created = http(&url, "POST /v1/declarations", &body).await;
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    wait_for("declaration at the hub", || state(&hub, own).0 == before + 1).await;
    let body = format!(r#"{{"member":"{member}","declared_start":"2026-13-40"}}"#);
    let refused = http(&url, "POST /v1/declarations", &body).await;
    assert!(refused.starts_with("HTTP/1.1 400") && refused.contains("declared_start"), "{refused}");
    // The reception page is served from the binary.
    let page = http(&url, "GET /", "").await;
    assert!(
        page.starts_with("HTTP/1.1 200")
            && page.contains("/v1/check")
            && page.contains("Offline since"),
        "{}",
        &page[..200.min(page.len())]
    );
    running.shutdown().await;
}

/// Runs the `shikaku` command line with `args` off the async runtime: (status, stdout, stderr).
pub(crate) async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> =
        std::iter::once("shikaku").chain(args.iter().copied()).map(String::from).collect();
    tokio::task::spawn_blocking(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = shikaku_cli::run(args, &mut out, &mut err);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    })
    .await
    .unwrap()
}

/// Sends one HTTP/1.1 request (`"METHOD /path"`, a JSON body when not empty) to `url` and
/// returns the whole response.
pub(crate) async fn http(url: &str, request: &str, body: &str) -> String {
    http_with(url, request, &[("X-Shikaku-Client", "test")], body).await
}

/// [`http`] with the headers given (and no others but Host, the body's and `Connection`).
pub(crate) async fn http_with(
    url: &str,
    request: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let host = url.trim_start_matches("http://").to_owned();
    let mut extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    if !body.is_empty() {
        extra.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    let message =
        format!("{request} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n{body}");
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        stream.write_all(message.as_bytes()).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_that_arrive_together_are_recorded_with_one_durable_write() {
    let d = Deployment::new("group-commit", 200);
    let insurer = d.insurers[0];
    let clinic = d.runtime(Role::Clinic, "clinic-g", &[insurer]);
    let member = member_of(&d.events, insurer);
    let date = Date::from_ymd(2026, 1, 5).unwrap();
    let before = clinic.with_node(|n, _| (n.counters().record_commits, n.ledger().len()));
    // Hold the node thread busy while 64 checks queue up behind it.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel::<()>();
    let busy = {
        let clinic = clinic.clone();
        tokio::spawn(async move {
            clinic
                .call(move |_, _| {
                    let _ = started.send(());
                    let _ = held.recv_timeout(Duration::from_secs(10));
                })
                .await
        })
    };
    running.await.unwrap();
    let checks: Vec<_> = (0..64)
        .map(|_| {
            let (clinic, member) = (clinic.clone(), member.clone());
            tokio::spawn(async move { clinic.check(CheckQuery::Member(member), date).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    release.send(()).unwrap();
    busy.await.unwrap();
    let mut codes = std::collections::BTreeSet::new();
    for check in checks {
        let (answer, _) = check.await.unwrap().unwrap();
        codes.insert(format!("{:?}", answer.code));
    }
    assert_eq!(codes.len(), 1, "the same question gets the same answer: {codes:?}");
    let after = clinic.with_node(|n, _| (n.counters().record_commits, n.ledger().len()));
    assert_eq!(after.1, before.1 + 64, "every check is recorded");
    assert_eq!(after.0, before.0 + 1, "in one durable write");
    drop(clinic);
    std::fs::remove_dir_all(&d.root).unwrap();
}
