//! The reception page in a real browser: headless Chromium (Debian package `chromium`), driven
//! over the Chrome DevTools Protocol on a pipe (`--remote-debugging-pipe`: fd 3 in, fd 4 out,
//! NUL-terminated JSON). The page is served by a real clinic node synced from a real hub over
//! QUIC: a check online, the hub stopped, the banner turning amber and then red with "Offline
//! since HH:MM", a check still answering offline with its age, and the self-declaration flow.
//!
//! When no Chromium is installed and this runs as root on Debian, the test installs it with
//! apt-get (as `.ci/run` does); otherwise it fails saying how to install it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use shikaku_core::Date;

use crate::api::{cast, Running};

fn find_chromium() -> Option<String> {
    if let Ok(path) = std::env::var("CHROME") {
        return Some(path);
    }
    ["chromium", "chromium-browser", "google-chrome"].into_iter().map(String::from).find(|name| {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn chromium() -> String {
    if let Some(path) = find_chromium() {
        return path;
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root && std::path::Path::new("/usr/bin/apt-get").exists() {
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "apt-get install chromium failed");
    }
    find_chromium()
        .expect("the reception page test needs headless Chromium: apt-get install chromium")
}

/// A headless Chromium and one page, spoken to over the DevTools pipe.
struct Browser {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next_id: u64,
    session: Option<String>,
    profile: std::path::PathBuf,
}

impl Browser {
    fn launch(profile: std::path::PathBuf) -> Browser {
        // fd 3 ← our stdin pipe, fd 4 → our stdout pipe; the browser's own stdio goes nowhere.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null 2>/dev/null"#)
            .arg(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Browser { child, input, output, next_id: 0, session: None, profile }
    }

    /// Sends one command and waits for its reply (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.input.write_all(&bytes).unwrap();
        self.input.flush().unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.output.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "the browser closed its DevTools pipe");
            buf.pop();
            let reply: Value = serde_json::from_slice(&buf).unwrap();
            if reply["id"] == json!(id) {
                assert!(reply.get("error").is_none(), "{method} failed: {reply}");
                return reply["result"].clone();
            }
        }
    }

    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url }));
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    }

    /// Evaluates JavaScript in the page (awaiting promises) and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        assert!(result.get("exceptionDetails").is_none(), "{expression}: {result}");
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is true, for at most `seconds` (an exception, e.g. while
    /// the page is still loading, counts as false).
    fn wait(&mut self, what: &str, expression: &str, seconds: u64) {
        let guarded =
            format!("(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()");
        for _ in 0..seconds * 10 {
            if self.eval(&guarded) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let banner = self.eval("document.getElementById('banner')?.textContent");
        let code = self.eval("document.getElementById('code')?.textContent");
        panic!("timed out waiting for {what} (banner {banner}, result {code})");
    }

    fn text(&mut self, id: &str) -> String {
        self.eval(&format!("document.getElementById('{id}').textContent"))
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Types into an input and submits its form the way a user does (the button).
    fn check(&mut self, who: &str, date: Date) {
        self.eval(&format!(
            "document.getElementById('who').value = {who:?}; \
             document.getElementById('date').value = '{date}'; \
             document.getElementById('code').textContent = ''; \
             document.querySelector('#check button').click(); true"
        ));
        self.wait("an answer", "document.getElementById('code').textContent !== ''", 10);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Types `text` into the focused element and presses Enter, as a card reader or barcode
    /// scanner does (keyboard events, not scripted values).
    fn scan(&mut self, text: &str) {
        self.eval("document.getElementById('code').textContent = ''; true");
        self.call("Input.insertText", json!({ "text": text }));
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": if kind == "keyDown" { "\r" } else { "" } }),
            );
        }
        self.wait("an answer", "document.getElementById('code').textContent !== ''", 10);
    }
}

// The browser is driven with blocking calls from the test's own thread: the hub, the clinic
// and its API run on the runtime's worker threads meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reception_page_in_headless_chromium_online_offline_and_self_declaration() {
    let mut running = Running::start("browser", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let (card, member, invalid) = cast(&running.d, date);
    let mut b = Browser::launch(running.d.root.join("chromium-profile"));
    // English, by the page's switch (Japanese is the default: see the test below).
    b.open(&format!("{}/?lang=en", running.url));
    b.wait(
        "the page and its banner",
        "document.getElementById('banner').textContent.startsWith('Online')",
        20,
    );

    // No staff accounts, on loopback: the single-PC mode, and the page says so.
    b.wait("the session bar", "document.getElementById('who-am-i').textContent !== '…'", 10);
    assert!(b.text("who-am-i").starts_with("Loopback no-login mode"), "{}", b.text("who-am-i"));

    // Online: a card check answers VALID with insurer, copay and coverage, and is current.
    b.check(&card.to_string(), date);
    assert_eq!(b.text("code"), "VALID 有効");
    assert_eq!(b.text("insurer"), member.insurer.to_string());
    assert_eq!(b.text("copay"), "30%");
    assert!(b.text("coverage").contains(" – "), "{}", b.text("coverage"));
    assert!(b.text("service").starts_with(&format!("{date}（令和")), "{}", b.text("service"));
    assert_eq!(b.text("end-reason"), "—", "a valid coverage has not ended");
    assert_eq!(b.text("conflicts"), "—");
    assert_eq!(
        b.eval("getComputedStyle(document.getElementById('consent-row')).display"),
        json!("block"),
        "the consent checkbox is offered for an identified member"
    );
    assert_eq!(b.text("knowledge"), "current (in sync with the hub)");
    assert_eq!(b.eval("document.getElementById('banner').className"), json!(""));

    // The hub stops: the page's own health polling turns the banner amber, "Offline since".
    running.stop_hub().await;
    b.wait("the amber banner", "document.getElementById('banner').className === 'amber'", 15);
    let banner = b.text("banner");
    assert!(banner.starts_with("Offline since "), "{banner}");
    // Two hours later it is red; a check still answers, from the local ledger, with its age.
    running.clinic.clock().advance(2 * 3_600_000);
    b.wait("the red banner", "document.getElementById('banner').className === 'red'", 15);
    b.check(&card.to_string(), date);
    assert_eq!(b.text("code"), "VALID 有効", "offline answers still come");
    let knowledge = b.text("knowledge");
    assert!(knowledge.starts_with("as of ") && knowledge.contains(" s ago"), "{knowledge}");
    let staleness: u64 = knowledge
        .split('(')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(staleness >= 7_200, "{knowledge}");
    assert!(b.text("banner").contains("Offline since"), "{}", b.text("banner"));

    // The self-declaration flow: INVALID → the form appears → recorded → PENDING SUCCESSOR.
    b.check(&invalid.to_string(), date);
    assert_eq!(b.text("code"), "INVALID 無効");
    // People read the last covered day, not the (exclusive) loss date, and why it ended.
    let coverage = b.text("coverage");
    assert!(coverage.ends_with("(last covered day)"), "{coverage}");
    assert_ne!(b.text("end-reason"), "—", "the end reason is shown");
    assert_eq!(
        b.eval("getComputedStyle(document.getElementById('declare')).display"),
        json!("block")
    );
    let before = running.clinic.with_node(|n, _| n.ledger().len());
    b.eval(&format!(
        "document.getElementById('decl-start').value = '{}'; \
         document.querySelector('#declaration button').click(); true",
        date.add_days(-3)
    ));
    b.wait(
        "the declaration to be recorded",
        "document.getElementById('declared').textContent.startsWith('Self-declaration recorded')",
        10,
    );
    b.check(&invalid.to_string(), date);
    assert_eq!(b.text("code"), "PENDING SUCCESSOR (self-declared)");
    assert_eq!(running.clinic.with_node(|n, _| n.ledger().len()), before + 2, "declaration, check");

    // The node itself stops answering: the page says so instead of failing silently.
    running.stop_api();
    b.eval(
        "document.getElementById('error').textContent = ''; \
         document.querySelector('#check button').click(); true",
    );
    b.wait(
        "the error",
        "document.getElementById('error').textContent.includes('does not answer')",
        10,
    );
    b.wait(
        "the banner",
        "document.getElementById('banner').textContent === 'This clinic node does not answer'",
        10,
    );
    drop(b);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reception_page_login_and_logout_in_headless_chromium() {
    let running = Running::start("browser-login", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let (card, _, _) = cast(&running.d, date);
    let staff_dir = running.d.root.join("staff");
    let mut file = shikaku_api::staff::StaffFile::load(&staff_dir).unwrap();
    let now = running.clinic.clock().now_ms();
    file.add("aiko", &[shikaku_api::staff::StaffRole::Reception], "aiko-password-1", now).unwrap();
    file.save(&staff_dir).unwrap();
    let aiko = file.find("aiko").unwrap().id;
    let auth = std::sync::Arc::new(
        shikaku_api::auth::ClinicAuth::open(
            &staff_dir,
            true,
            15 * 60_000,
            running.clinic.clock().clone(),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let rt = running.clinic.clone();
    tokio::spawn(async move {
        let options = shikaku_api::serve::ApiOptions::default();
        let _ = shikaku_api::clinic::serve_api_auth(listener, rt, auth, &options).await;
    });
    let mut b = Browser::launch(running.d.root.join("chromium-login-profile"));
    // localhost is a secure context, so the Secure cookie is kept over plain HTTP there.
    b.open(&format!("http://localhost:{port}/?lang=en"));
    b.wait(
        "the log-in form",
        "getComputedStyle(document.getElementById('login')).display === 'block'",
        20,
    );
    assert_eq!(b.eval("getComputedStyle(document.getElementById('work')).display"), json!("none"));
    let login = |b: &mut Browser, password: &str| {
        b.eval(&format!(
            "document.getElementById('login-name').value = 'aiko'; \
             document.getElementById('login-password').value = {password:?}; \
             document.getElementById('login-error').textContent = ''; \
             document.querySelector('#login-form button').click(); true"
        ));
    };
    login(&mut b, "not-her-password");
    b.wait(
        "the refusal",
        "document.getElementById('login-error').textContent.includes('wrong name or password')",
        10,
    );
    login(&mut b, "aiko-password-1");
    b.wait(
        "the session",
        "document.getElementById('who-am-i').textContent.startsWith('Logged in as aiko')",
        10,
    );
    assert_eq!(b.eval("document.cookie.includes('shikaku_session')"), json!(false), "HttpOnly");
    b.check(&card.to_string(), date);
    assert_eq!(b.text("code"), "VALID 有効");
    let (records, _) = running.clinic.with_node(|n, _| n.own_records());
    assert_eq!(records.last().unwrap().operator(), Some(aiko), "the check names aiko's id");

    b.eval("document.getElementById('logout').click(); true");
    b.wait(
        "the log-in form again",
        "getComputedStyle(document.getElementById('login')).display === 'block'",
        10,
    );
    assert_eq!(b.text("login-error"), "Logged out.");
    let status = b.eval(
        "fetch('/v1/check?card=00', { headers: { 'X-Shikaku-Client': 'reception-page' } }).then(r => r.status)",
    );
    assert_eq!(status, json!(401), "the session is gone");
    drop(b);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reception_page_speaks_japanese_by_default_with_era_dates_from_the_keyboard_alone() {
    // Issue 18, item 4: Japanese by default with the real terminal's words, dates in both
    // calendars, a Japanese font stack, a language switch that is remembered, and a card
    // reader's keystrokes (token, Enter) doing the whole check without a mouse.
    let running = Running::start("browser-ja", 800).await;
    let date = Date::from_ymd(2026, 10, 15).unwrap();
    let (card, _, invalid) = cast(&running.d, date);
    let mut b = Browser::launch(running.d.root.join("chromium-ja-profile"));
    b.open(&format!("{}/", running.url));
    b.wait(
        "the banner",
        "document.getElementById('banner').textContent.startsWith('オンライン')",
        20,
    );
    assert_eq!(b.eval("document.documentElement.lang"), json!("ja"));
    b.wait("the session bar", "document.getElementById('who-am-i').textContent !== '…'", 10);
    assert!(
        b.text("who-am-i").starts_with("ループバック・ログインなしモード"),
        "{}",
        b.text("who-am-i")
    );
    assert_eq!(b.eval("document.querySelector('#check button').textContent"), json!("照会"));
    let font = b.eval("getComputedStyle(document.body).fontFamily").as_str().unwrap().to_owned();
    for family in ["Hiragino Kaku Gothic ProN", "Yu Gothic", "Meiryo", "Noto Sans CJK JP"] {
        assert!(font.contains(family), "{font}");
    }
    // The era calendar, at its edges.
    for (western, era) in [
        ("2026-12-01", "令和8年12月1日"),
        ("2019-05-01", "令和元年5月1日"),
        ("2019-04-30", "平成31年4月30日"),
        ("1989-01-08", "平成元年1月8日"),
        ("1989-01-07", "昭和64年1月7日"),
        ("1926-12-25", "昭和元年12月25日"),
    ] {
        assert_eq!(b.eval(&format!("eraDate('{western}')")), json!(era), "{western}");
    }

    // Keyboard only: the field has the focus; the reader types the token and Enter.
    assert_eq!(b.eval("document.activeElement.id"), json!("who"), "focus on load");
    b.eval(&format!("document.getElementById('date').value = '{date}'; true"));
    b.scan(&card.to_string());
    assert_eq!(b.text("code"), "有効");
    assert_eq!(b.text("service"), format!("{date}（令和8年10月15日）"));
    assert!(b.text("copay").ends_with("割（30%）"), "{}", b.text("copay"));
    assert!(b.text("coverage").contains("〜"), "{}", b.text("coverage"));
    assert_eq!(b.text("knowledge"), "最新（ハブと同期中）");
    assert_eq!(b.eval("document.querySelector('dt').textContent"), json!("患者"));
    // Ready for the next card: focus back in the field, its text selected so the next scan
    // replaces it.
    assert_eq!(
        b.eval("(() => { const w = document.getElementById('who'); return document.activeElement === w && w.selectionStart === 0 && w.selectionEnd === w.value.length; })()"),
        json!(true)
    );
    b.scan(&invalid.to_string());
    assert_eq!(b.text("code"), "無効");
    assert!(b.text("coverage").ends_with("（最終有効日）"), "{}", b.text("coverage"));
    let reason = b.text("end-reason");
    assert!(
        ["転職", "退職", "市区町村外への転出", "75歳到達（後期高齢者医療へ）", "死亡", "その他"]
            .contains(&reason.as_str()),
        "{reason}"
    );
    assert_eq!(
        b.eval("getComputedStyle(document.getElementById('declare')).display"),
        json!("block")
    );
    let declare = b.eval("document.querySelector('#declare p').textContent");
    assert!(
        declare.as_str().unwrap().starts_with("この診療日に有効な資格が台帳にありません"),
        "{declare}"
    );

    // The switch: the same answer in English at once, the page's words too; remembered.
    assert_eq!(b.text("lang"), "English");
    b.eval("document.getElementById('lang').click(); true");
    assert_eq!(b.text("code"), "INVALID 無効");
    assert_eq!(b.eval("document.documentElement.lang"), json!("en"));
    assert_eq!(b.eval("document.querySelector('dt').textContent"), json!("Patient"));
    assert!(b.text("coverage").ends_with("(last covered day)"), "{}", b.text("coverage"));
    assert!(b.text("who-am-i").starts_with("Loopback no-login mode"));
    b.wait(
        "the banner in English",
        "document.getElementById('banner').textContent.startsWith('Online')",
        10,
    );
    b.eval("location.reload(); true");
    b.wait(
        "the reloaded page",
        "document.getElementById('banner').textContent.startsWith('Online')",
        20,
    );
    assert_eq!(b.text("lang"), "日本語", "the choice is remembered on this PC");
    b.eval("document.getElementById('lang').click(); true");
    b.wait(
        "Japanese again",
        "document.getElementById('banner').textContent.startsWith('オンライン')",
        10,
    );
    drop(b);
    running.shutdown().await;
}
