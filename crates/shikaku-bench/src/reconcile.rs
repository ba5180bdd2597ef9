//! `shikaku bench reconcile`: in-memory set reconciliation over `(hlc, id)` — bytes on the
//! wire and round trips for shikaku's reconciler, the `negentropy` crate, and sending every id.
//! (The sync issue adds the same cases over real QUIC.)

use std::io::Write;

use anyhow::{anyhow, Result};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use shikaku_protocol::negentropy::{Item, Reconciler, ID_BYTES};

use shikaku_net::clock::Stopwatch;

/// What one reconciliation cost.
pub(crate) struct Outcome {
    /// Bytes of every message, both ways.
    pub(crate) bytes: usize,
    /// Answers the responder gave.
    pub(crate) round_trips: usize,
    /// Ids found on one side only.
    pub(crate) differences: usize,
    /// Ids the initiator lacks (to fetch afterwards).
    pub(crate) missing: usize,
    /// Wall time.
    pub(crate) seconds: f64,
}

/// Runs initiator/responder rounds until the initiator is done, counting bytes both ways.
fn drive(
    first: Vec<u8>,
    mut respond: impl FnMut(&[u8]) -> Result<Vec<u8>>,
    mut reconcile: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
) -> Result<(usize, usize)> {
    let (mut bytes, mut round_trips) = (first.len(), 0);
    let mut message = first;
    loop {
        let answer = respond(&message)?;
        bytes += answer.len();
        round_trips += 1;
        match reconcile(&answer)? {
            Some(next) => {
                bytes += next.len();
                message = next;
            }
            None => return Ok((bytes, round_trips)),
        }
    }
}

fn ours(client: &[Item], hub: &[Item], frame: usize) -> Result<Outcome> {
    let watch = Stopwatch::start();
    let mut initiator = Reconciler::new(client, frame)?;
    let mut responder = Reconciler::new(hub, frame)?;
    let first = initiator.initiate()?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let (bytes, round_trips) = drive(
        first,
        |m| Ok(responder.respond(m)?),
        |a| Ok(initiator.reconcile(a, &mut have, &mut need)?),
    )?;
    Ok(Outcome {
        bytes,
        round_trips,
        differences: have.len() + need.len(),
        missing: need.len(),
        seconds: watch.seconds(),
    })
}

/// The `negentropy` crate's sealed storage of `items`.
fn storage(items: &[Item]) -> Result<NegentropyStorageVector> {
    let mut s = NegentropyStorageVector::with_capacity(items.len());
    for item in items {
        s.insert(item.timestamp, Id::from_byte_array(item.id)).map_err(|e| anyhow!("{e}"))?;
    }
    s.seal().map_err(|e| anyhow!("{e}"))?;
    Ok(s)
}

/// The `negentropy` crate reconciling `client` (initiator) against `hub`.
pub(crate) fn reference(client: &[Item], hub: &[Item], frame: usize) -> Result<Outcome> {
    let (a, b) = (storage(client)?, storage(hub)?);
    let watch = Stopwatch::start();
    let err = |e: negentropy::Error| anyhow!("negentropy: {e}");
    let mut initiator = Negentropy::borrowed(&a, frame as u64).map_err(err)?;
    let mut responder = Negentropy::borrowed(&b, frame as u64).map_err(err)?;
    let first = initiator.initiate().map_err(err)?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let (bytes, round_trips) = drive(
        first,
        |m| responder.reconcile(m).map_err(err),
        |a| initiator.reconcile_with_ids(a, &mut have, &mut need).map_err(err),
    )?;
    Ok(Outcome {
        bytes,
        round_trips,
        differences: have.len() + need.len(),
        missing: need.len(),
        seconds: watch.seconds(),
    })
}

/// Runs the benchmark.
pub fn run(items: usize, frame: usize, out: &mut dyn Write) -> Result<()> {
    let mut rng = shikaku_gen::Rng::new(0x7265_636f);
    let mut hub: Vec<Item> = (0..items)
        .map(|i| {
            let mut id = [0u8; ID_BYTES];
            for chunk in id.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            // About ten events per millisecond of record time.
            Item { timestamp: (1_700_000_000_000u64 + i as u64 / 10) << 16, id }
        })
        .collect();
    hub.sort();
    let newest_missing = (items / 10).min(100_000);
    let random_missing: Vec<usize> = {
        let mut picks: Vec<usize> =
            (0..10_000.min(items)).map(|_| rng.below(items as u64) as usize).collect();
        picks.sort_unstable();
        picks.dedup();
        picks
    };
    let cases: Vec<(&str, Vec<Item>)> = vec![
        ("in sync", hub.clone()),
        ("one new event", hub[..items - 1].to_vec()),
        ("week offline (newest missing)", hub[..items - newest_missing].to_vec()),
        ("random differences after a restore", {
            let mut client = hub.clone();
            for &i in random_missing.iter().rev() {
                client.remove(i);
            }
            client
        }),
    ];
    writeln!(
        out,
        "bench reconcile: hub holds {items} items, frame limit {frame} bytes (0 = none)"
    )?;
    writeln!(
        out,
        "\n{:<36} {:>8} {:>13} {:>6} {:>13} {:>6} {:>11} {:>14}",
        "case", "missing", "shikaku B", "RTs", "negentropy B", "RTs", "B/missing", "send-all B"
    )?;
    for (name, client) in &cases {
        let missing = items - client.len();
        let a = ours(client, &hub, frame)?;
        let b = reference(client, &hub, frame)?;
        if a.differences != missing || b.differences != missing {
            return Err(anyhow!(
                "{name}: found {} / {} differences, expected {missing}",
                a.differences,
                b.differences
            ));
        }
        let per_missing = if missing == 0 {
            "—".to_owned()
        } else {
            format!("{:.1}", a.bytes as f64 / missing as f64)
        };
        writeln!(
            out,
            "{name:<36} {missing:>8} {:>13} {:>6} {:>13} {:>6} {per_missing:>11} {:>14}",
            a.bytes,
            a.round_trips,
            b.bytes,
            b.round_trips,
            client.len() * (ID_BYTES + 8)
        )?;
        let _ = (a.seconds, b.seconds);
    }
    writeln!(out, "\nB = bytes in both directions to learn the differences (ids only; the events themselves are extra); RTs = round trips.")?;
    Ok(())
}
