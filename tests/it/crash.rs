//! Real crashes: `shikaku ledger import --acks` runs as a separate process (this test binary
//! re-executed as the `crash::child_import` entry point, which calls the real command) and is
//! killed with SIGKILL at random moments. After each kill: every event acknowledged on its
//! standard output before the kill is in the ledger, the ledger verifies, and the events held
//! are exactly a prefix of the input. 200 kills by default; `SHIKAKU_CRASH_KILLS=N` for more.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "SHIKAKU_CRASH_CHILD_ARGS";

/// Entry point of the child process (ignored unless run by the parent with its arguments).
#[test]
#[ignore = "run only as the child process of real_sigkill_never_loses_acknowledged_events"]
fn child_import() {
    let Ok(args) = std::env::var(CHILD_ENV) else { return };
    let args: Vec<&str> = args.split('\u{1f}').collect();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = shikaku_cli::run(
        std::iter::once("shikaku").chain(args.iter().copied()),
        &mut stdout.lock(),
        &mut stderr.lock(),
    );
    std::process::exit(code);
}

#[test]
fn real_sigkill_never_loses_acknowledged_events() {
    let kills: u64 =
        std::env::var("SHIKAKU_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = crate::scratch::Scratch::new("crash");
    let stream = dir.join("in.jsonl");
    let generated = shikaku_gen::generate(&shikaku_gen::GenConfig::new(3_000, 77)).unwrap();
    let lines: Vec<String> = generated.events.iter().map(shikaku_cli::jsonl::encode).collect();
    std::fs::write(&stream, lines.join("\n") + "\n").unwrap();
    let input_ids: Vec<_> = generated.events.iter().map(|e| e.id()).collect();
    let exe = std::env::current_exe().unwrap();
    let mut rng = shikaku_gen::Rng::new(0x5151);
    let mut killed_mid_import = 0;
    let mut max_held = 0;
    for round in 0..kills {
        // Every 25 rounds start over, so kills land early, mid-way and late in an import.
        let data = dir.join(format!("data-{}", round / 25));
        let args = [
            "--data-dir",
            data.to_str().unwrap(),
            "ledger",
            "import",
            "--acks",
            stream.to_str().unwrap(),
        ]
        .join("\u{1f}");
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::child_import",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acknowledged = 0u64;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("durable ") {
                    acknowledged = n.trim().parse().unwrap();
                }
            }
            acknowledged
        });
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let acknowledged = reader.join().unwrap() as usize;
        if !finished {
            killed_mid_import += 1;
        }
        // The acknowledged count is of input lines in order: they must all be there.
        let store = shikaku_cli::store::Store::open(&data)
            .unwrap_or_else(|e| panic!("round {round}: ledger does not open after SIGKILL: {e:#}"));
        let held: Vec<_> = store.events().unwrap().iter().map(|e| e.id()).collect();
        assert!(
            held.len() >= acknowledged,
            "round {round}: {acknowledged} acknowledged but only {} held",
            held.len()
        );
        assert_eq!(held[..], input_ids[..held.len()], "round {round}: not a prefix of the input");
        assert!(
            store.log().recovery().damaged.is_empty(),
            "round {round}: {:?}",
            store.log().recovery().damaged
        );
        let report = store.log().verify();
        assert!(report.problems.is_empty(), "round {round}: {:?}", report.problems);
        max_held = max_held.max(held.len());
    }
    assert!(
        killed_mid_import > kills / 2,
        "most kills must land mid-import ({killed_mid_import}/{kills})"
    );
    assert!(max_held > 0, "imports made progress between kills");
    std::fs::remove_dir_all(&dir).unwrap();
}
