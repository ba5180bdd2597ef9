//! `shikaku bench api`: how fast reception gets an answer from a clinic node.
//!
//! A hub and one clinic run in this process on loopback QUIC (a generated world, every insurer
//! replicated), and the same random card and member-key checks are answered four ways in the
//! same run: the projection alone (the baseline: no recording, no HTTP), the node's `check`
//! (answer + the durable `check_performed` record), `GET /v1/check` over HTTP (a new TCP
//! connection per request, as `shikaku check --node` does), and the same with `format=fhir`;
//! the same checks by a logged-in receptionist (a second API of the same node in the login
//! mode: session cookie, staff file, operator in each record, schema 3) and what a login costs
//! (Argon2id); the folder interface (a request file renamed into `req` until its answer is
//! renamed into `res`, one at a time, then all at once for requests/s); then N concurrent HTTP
//! clients for throughput.

use std::io::Write;

use anyhow::{Context, Result};
use shikaku_core::{CheckQuery, Date, EventBody, Hlc};

use shikaku_api::cluster;
use shikaku_net::clock::Stopwatch;

fn summary(label: &str, mut micros: Vec<u64>, out: &mut dyn Write) -> Result<()> {
    micros.sort_unstable();
    let p = |q: f64| crate::percentile(&micros, q) as f64 / 1000.0;
    writeln!(
        out,
        "  {label:<44} p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms",
        p(0.5),
        p(0.99),
        p(1.0)
    )?;
    Ok(())
}

fn path(q: &CheckQuery, fhir: bool) -> String {
    shikaku_api::client::check_path_for(q, None, fhir.then_some("fhir"))
}

/// Runs the benchmark.
pub fn run(members: usize, requests: usize, clients: usize, out: &mut dyn Write) -> Result<()> {
    let root = std::env::temp_dir().join(format!("shikaku-bench-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = measure(&root, members, requests.max(1), clients.max(1), out);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn measure(
    root: &std::path::Path,
    members: usize,
    requests: usize,
    clients: usize,
    out: &mut dyn Write,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let _enter = rt.enter();
    let generated = shikaku_gen::generate(&shikaku_gen::GenConfig::new(members, 11))?;
    cluster::certify(root, &root.join("ca"), &["bench-clinic"])?;
    let clock = shikaku_net::Clock::wall();
    let local = cluster::Local { root, clock: &clock, level: shikaku_node::Level::Warn };
    let mut hub = cluster::start_hub(&local, &generated)?;
    let insurers = generated.insurers.iter().map(|(i, _)| *i).collect();
    let mut clinic = cluster::start_clinic(
        &rt,
        &local,
        "bench-clinic",
        insurers,
        cluster::keys_of(&generated),
        hub.addr,
    )?;
    cluster::wait_until("the clinic is in sync", 300.0, || {
        clinic.runtime.with_node(|n, _| n.in_sync())
    })?;
    let events = clinic.runtime.with_node(|n, _| n.ledger().len());
    writeln!(
        out,
        "bench api: {members} members, {events} events at the clinic (every insurer replicated), {requests} checks per way, half by card, half by member key"
    )?;
    // The questions: random cards and member keys of the world.
    let mut cards = Vec::new();
    let mut keys = std::collections::BTreeSet::new();
    for e in &generated.events {
        match &e.event().body {
            EventBody::CardLinked { card, .. } => cards.push(*card),
            body => {
                if let Some(m) = body.membership_subject() {
                    keys.insert(m.clone());
                }
            }
        }
    }
    let keys: Vec<_> = keys.into_iter().collect();
    let mut rng = shikaku_gen::Rng::new(5);
    let queries: Vec<CheckQuery> = (0..requests)
        .map(|i| {
            if i % 2 == 0 && !cards.is_empty() {
                CheckQuery::Card(cards[rng.below(cards.len() as u64) as usize])
            } else {
                CheckQuery::Member(keys[rng.below(keys.len() as u64) as usize].clone())
            }
        })
        .collect();
    let today = Date::from_unix_ms_jst(clock.now_ms());

    let mut times = Vec::with_capacity(requests);
    for q in &queries {
        let watch = Stopwatch::start();
        clinic.runtime.with_node(|n, now| {
            n.projection().check(q, today, Hlc::end_of_ms(now), n.freshness(now))
        });
        times.push((watch.seconds() * 1e6) as u64);
    }
    summary("baseline: projection check (no record, no HTTP)", times, out)?;
    let mut times = Vec::with_capacity(requests);
    for q in &queries {
        let watch = Stopwatch::start();
        clinic.runtime.with_node(|n, now| n.check(now, q, today))?;
        times.push((watch.seconds() * 1e6) as u64);
    }
    summary("node check (answer + durable record)", times, out)?;
    for (label, fhir) in
        [("GET /v1/check, JSON (HTTP, new connection)", false), ("GET /v1/check?format=fhir", true)]
    {
        let mut times = Vec::with_capacity(requests);
        for q in &queries {
            let watch = Stopwatch::start();
            shikaku_api::client::http_get(&clinic.url, &path(q, fhir))?;
            times.push((watch.seconds() * 1e6) as u64);
        }
        summary(label, times, out)?;
    }
    staff_session(&rt, root, &clinic, &queries, out)?;
    folder_interface(&rt, root, &clinic, &queries, &generated, today, out)?;
    let watch = Stopwatch::start();
    let per_client = queries.len().div_ceil(clients);
    let results: Vec<Result<Vec<u64>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = queries
            .chunks(per_client)
            .map(|chunk| {
                let url = clinic.url.clone();
                scope.spawn(move || -> Result<Vec<u64>> {
                    let mut times = Vec::with_capacity(chunk.len());
                    for q in chunk {
                        let watch = Stopwatch::start();
                        shikaku_api::client::http_get(&url, &path(q, false))?;
                        times.push((watch.seconds() * 1e6) as u64);
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked"))))
            .collect()
    });
    let seconds = watch.seconds();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    let total = all.len();
    summary(&format!("{clients} concurrent HTTP clients"), all, out)?;
    writeln!(
        out,
        "  throughput with {clients} clients: {:.0} checks/s (each recorded durably)",
        total as f64 / seconds
    )?;
    clinic.shutdown(&rt);
    hub.stop(&rt);
    Ok(())
}

/// Staff logins: the Argon2id cost of a login, and checks in a session against the same
/// checks without login (the first API), on a second API of the same node.
fn staff_session(
    rt: &tokio::runtime::Runtime,
    root: &std::path::Path,
    clinic: &cluster::Clinic,
    queries: &[CheckQuery],
    out: &mut dyn Write,
) -> Result<()> {
    let staff_dir = root.join("bench-staff");
    let mut file = shikaku_api::staff::StaffFile::load(&staff_dir)?;
    let password = "bench-password-1";
    file.add(
        "bench",
        &[shikaku_api::staff::StaffRole::Reception],
        password,
        clinic.runtime.clock().now_ms(),
    )?;
    file.save(&staff_dir)?;
    let auth = std::sync::Arc::new(shikaku_api::auth::ClinicAuth::open(
        &staff_dir,
        true,
        shikaku_api::auth::IDLE_DEFAULT_MS,
        clinic.runtime.clock().clone(),
    )?);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let served = clinic.runtime.clone();
    let server = rt.spawn(async move {
        let options = shikaku_api::serve::ApiOptions::default();
        shikaku_api::clinic::serve_api_auth(listener, served, auth, &options).await
    });
    let mut times = Vec::new();
    let mut cookie = String::new();
    for _ in 0..20 {
        let watch = Stopwatch::start();
        cookie = shikaku_api::client::login(&url, "bench", password)?;
        times.push((watch.seconds() * 1e6) as u64);
    }
    summary("POST /v1/login (Argon2id 19 MiB, t=2)", times, out)?;
    let mut times = Vec::with_capacity(queries.len());
    for q in queries {
        let watch = Stopwatch::start();
        let (status, body) =
            shikaku_api::client::request_in_session(&url, "GET", &path(q, false), None, &cookie)?;
        if status != 200 {
            anyhow::bail!("a check in the session answered {status}: {body}");
        }
        times.push((watch.seconds() * 1e6) as u64);
    }
    summary("GET /v1/check in a staff session (schema 3)", times, out)?;
    server.abort();
    Ok(())
}

/// The folder interface on the same node: the time from a request file's rename into `req` to
/// its answer's appearance in `res` (one request at a time; the answer's rename is the moment
/// it appears), then every request dropped at once for requests/s.
fn folder_interface(
    rt: &tokio::runtime::Runtime,
    root: &std::path::Path,
    clinic: &cluster::Clinic,
    queries: &[CheckQuery],
    generated: &shikaku_gen::Generated,
    today: Date,
    out: &mut dyn Write,
) -> Result<()> {
    let births: std::collections::HashMap<_, _> = generated
        .events
        .iter()
        .filter_map(|e| match &e.event().body {
            EventBody::MemberRegistered { member, person, .. } => {
                Some((member.clone(), person.birth_date))
            }
            _ => None,
        })
        .collect();
    let request = |q: &CheckQuery, id: usize| -> Result<String> {
        use shikaku_api::ovs::RequestKind;
        let kind = match q {
            CheckQuery::Card(card) => RequestKind::Card(*card),
            CheckQuery::Member(key) => {
                let birth =
                    *births.get(key).context("a member of the world without a birth date")?;
                RequestKind::CardData { key: key.clone(), birth }
            }
        };
        Ok(shikaku_api::ovs::xml::request_xml(&kind, today, &id.to_string(), None))
    };
    let dir = root.join("bench-ovs");
    std::fs::create_dir_all(root.join("bench-ovs-data"))?;
    let folder = shikaku_api::ovs::OvsFolder::start(
        clinic.runtime.clone(),
        shikaku_api::ovs::OvsOptions::new(&dir, &root.join("bench-ovs-data")),
    )?;
    let drop_file = |name: &str, text: &str| -> Result<()> {
        let staging = dir.join(format!(".{name}"));
        std::fs::write(&staging, text)?;
        std::fs::rename(&staging, dir.join("req").join(name))?;
        Ok(())
    };
    let mut times = Vec::with_capacity(queries.len());
    for (i, q) in queries.iter().enumerate() {
        let answer = dir.join("res").join(format!("OQSsiimm01res_{i:06}.xml"));
        let text = request(q, i)?;
        let watch = Stopwatch::start();
        drop_file(&format!("OQSsiimm01req_{i:06}.xml"), &text)?;
        while !answer.exists() {
            if watch.seconds() > 30.0 {
                anyhow::bail!("the folder interface gave no answer in 30 s");
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        times.push((watch.seconds() * 1e6) as u64);
        std::fs::remove_file(&answer)?;
    }
    summary("folder: request into req → answer in res", times, out)?;
    let texts: Vec<String> =
        queries.iter().enumerate().map(|(i, q)| request(q, i)).collect::<Result<_>>()?;
    let watch = Stopwatch::start();
    for (i, text) in texts.iter().enumerate() {
        drop_file(&format!("OQSbatchreq_{i:06}.xml"), text)?;
    }
    let answered = || {
        std::fs::read_dir(dir.join("res")).map_or(0, |d| {
            d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count()
        })
    };
    while answered() < texts.len() {
        if watch.seconds() > 300.0 {
            anyhow::bail!(
                "the folder interface answered {} of {} in 300 s",
                answered(),
                texts.len()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let seconds = watch.seconds();
    writeln!(
        out,
        "  folder interface, {} requests dropped at once: {:.0} requests/s (each check recorded, each answer fsynced and journalled)",
        texts.len(),
        texts.len() as f64 / seconds
    )?;
    let refused = folder.stats.refused.load(std::sync::atomic::Ordering::Relaxed);
    if refused > 0 {
        anyhow::bail!("the folder interface refused {refused} of the benchmark's requests");
    }
    rt.block_on(folder.shutdown());
    Ok(())
}
