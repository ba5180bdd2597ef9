//! Decoding a frame and batch-verifying its events — pure CPU, no node state, so the runtime
//! runs it on other threads before handing the result to the node.

use super::*;

/// A frame after [`prepare`]: decoded, and for `Events`, decoded and signature-verified.
#[derive(Debug)]
pub enum Inbound {
    /// Any message but `Events`.
    Message(Message),
    /// Events, each verified or refused with its index in the frame.
    Events(Vec<Result<SignedEvent, (u32, EventError)>>),
    /// The frame was not valid.
    Bad(WireError),
}

/// Decodes a frame body and verifies the signatures of any events in it (in ed25519 batches).
/// Pure computation, so the runtime can run it off the node's thread, in parallel.
pub fn prepare(body: &[u8], now_ms: u64) -> Inbound {
    match Message::decode(body) {
        Err(e) => Inbound::Bad(e),
        Ok(Message::Events { events }) => {
            let mut out: Vec<Result<SignedEvent, (u32, EventError)>> =
                Vec::with_capacity(events.len());
            let mut to_verify: Vec<UnverifiedEvent> = Vec::with_capacity(events.len());
            let mut slots = Vec::with_capacity(events.len());
            for (i, bytes) in events.iter().enumerate() {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let decoded = event_from_wire(bytes)
                    .map_err(|e| EventError::Malformed(e.to_string()))
                    .and_then(|(version, canonical, signature)| {
                        SignedEvent::decode_unverified(
                            version,
                            canonical,
                            signature,
                            None,
                            Some(now_ms),
                        )
                    });
                match decoded {
                    Ok(unverified) => {
                        slots.push(out.len());
                        out.push(Err((index, EventError::Malformed(String::new()))));
                        to_verify.push(unverified);
                    }
                    Err(e) => out.push(Err((index, e))),
                }
            }
            for (slot, result) in slots.into_iter().zip(verify_all(to_verify)) {
                let index = match &out[slot] {
                    Err((index, _)) => *index,
                    Ok(_) => 0,
                };
                out[slot] = result.map_err(|e| (index, e));
            }
            Inbound::Events(out)
        }
        Ok(message) => Inbound::Message(message),
    }
}
