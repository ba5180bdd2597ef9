//! Negentropy protocol v1 interoperability: shikaku's sans-IO reconciler produces the same
//! bytes as the `negentropy` crate for the same sets (initial message and answers), converges
//! with it in both directions, with and without frame limits, and never panics on garbage.

use negentropy::{Id, Negentropy, NegentropyStorageVector};
use proptest::prelude::*;
use shikaku_protocol::negentropy::{Item, ReconcileError, Reconciler, ID_BYTES};

fn random_sets(seed: u64, size: usize) -> (Vec<Item>, Vec<Item>) {
    let mut rng = shikaku_gen::Rng::new(seed);
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..size {
        let mut id = [0u8; ID_BYTES];
        for chunk in id.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        // Many shared timestamps, so bounds need id prefixes too.
        let item = Item { timestamp: 1_000 + (i as u64) / 3, id };
        match rng.below(10) {
            0 => a.push(item),
            1 => b.push(item),
            _ => {
                a.push(item);
                b.push(item);
            }
        }
    }
    a.sort();
    b.sort();
    (a, b)
}

fn theirs(items: &[Item]) -> NegentropyStorageVector {
    let mut storage = NegentropyStorageVector::new();
    for item in items {
        storage.insert(item.timestamp, Id::from_byte_array(item.id)).unwrap();
    }
    storage.seal().unwrap();
    storage
}

fn expected(a: &[Item], b: &[Item]) -> (Vec<[u8; 32]>, Vec<[u8; 32]>) {
    let have: Vec<[u8; 32]> =
        a.iter().filter(|x| b.binary_search(x).is_err()).map(|x| x.id).collect();
    let need: Vec<[u8; 32]> =
        b.iter().filter(|x| a.binary_search(x).is_err()).map(|x| x.id).collect();
    (sorted(have), sorted(need))
}

fn sorted(mut ids: Vec<[u8; 32]>) -> Vec<[u8; 32]> {
    ids.sort_unstable();
    ids
}

#[test]
fn messages_are_byte_identical_to_the_negentropy_crate() {
    // Proves byte compatibility: for the same sets and frame limit, every message we send is
    // exactly the message the reference implementation sends.
    for (seed, size, frame) in
        [(1, 10, 0), (2, 500, 0), (3, 5_000, 0), (4, 5_000, 4_096), (5, 20_000, 8_192)]
    {
        let (a, b) = random_sets(seed, size);
        let (storage_a, storage_b) = (theirs(&a), theirs(&b));
        let mut ours_a = Reconciler::new(&a, frame).unwrap();
        let mut ours_b = Reconciler::new(&b, frame).unwrap();
        let mut ref_a = Negentropy::borrowed(&storage_a, frame as u64).unwrap();
        let mut ref_b = Negentropy::borrowed(&storage_b, frame as u64).unwrap();
        let mut message = ours_a.initiate().unwrap();
        assert_eq!(message, ref_a.initiate().unwrap(), "initial message, seed {seed}");
        let (mut have, mut need) = (Vec::new(), Vec::new());
        let (mut ref_have, mut ref_need) = (Vec::new(), Vec::new());
        let mut rounds = 0;
        loop {
            rounds += 1;
            let answer = ours_b.respond(&message).unwrap();
            assert_eq!(
                answer,
                ref_b.reconcile(&message).unwrap(),
                "answer, seed {seed} round {rounds}"
            );
            let next = ours_a.reconcile(&answer, &mut have, &mut need).unwrap();
            let ref_next = ref_a.reconcile_with_ids(&answer, &mut ref_have, &mut ref_need).unwrap();
            assert_eq!(next, ref_next, "follow-up, seed {seed} round {rounds}");
            match next {
                Some(m) => message = m,
                None => break,
            }
            assert!(rounds < 100);
        }
        assert_eq!((sorted(have), sorted(need)), expected(&a, &b), "seed {seed}");
    }
}

#[test]
fn converges_with_the_reference_in_both_directions() {
    // Proves interop across roles: reference initiator ↔ shikaku responder, and shikaku
    // initiator ↔ reference responder, both find exactly the set differences.
    for seed in 10..16 {
        let (a, b) = random_sets(seed, 3_000);
        // Reference initiates, we respond.
        let storage_a = theirs(&a);
        let mut ref_a = Negentropy::borrowed(&storage_a, 0).unwrap();
        let mut ours_b = Reconciler::new(&b, 0).unwrap();
        let mut message = ref_a.initiate().unwrap();
        let (mut have, mut need) = (Vec::new(), Vec::new());
        loop {
            let answer = ours_b.respond(&message).unwrap();
            match ref_a.reconcile_with_ids(&answer, &mut have, &mut need).unwrap() {
                Some(m) => message = m,
                None => break,
            }
        }
        let have = sorted(have.into_iter().map(|id| id.to_bytes()).collect());
        let need = sorted(need.into_iter().map(|id| id.to_bytes()).collect());
        assert_eq!((have, need), expected(&a, &b));
        // We initiate, the reference responds.
        let storage_b = theirs(&b);
        let mut ref_b = Negentropy::borrowed(&storage_b, 0).unwrap();
        let mut ours_a = Reconciler::new(&a, 0).unwrap();
        let mut message = ours_a.initiate().unwrap();
        let (mut have, mut need) = (Vec::new(), Vec::new());
        loop {
            let answer = ref_b.reconcile(&message).unwrap();
            match ours_a.reconcile(&answer, &mut have, &mut need).unwrap() {
                Some(m) => message = m,
                None => break,
            }
        }
        assert_eq!((sorted(have), sorted(need)), expected(&a, &b));
    }
}

#[test]
fn limits_and_roles_are_enforced() {
    let (a, _) = random_sets(20, 50);
    assert_eq!(Reconciler::new(&a, 1_000).unwrap_err(), ReconcileError::FrameLimitTooSmall(1_000));
    let mut unsorted = a.clone();
    unsorted.reverse();
    assert_eq!(Reconciler::new(&unsorted, 0).unwrap_err(), ReconcileError::Unsorted);
    let mut r = Reconciler::new(&a, 0).unwrap();
    let message = r.initiate().unwrap();
    assert!(matches!(r.respond(&message), Err(ReconcileError::WrongRole(_))));
    assert!(matches!(r.initiate(), Err(ReconcileError::WrongRole(_))));
    let mut responder = Reconciler::new(&a, 0).unwrap();
    assert_eq!(responder.respond(&[0x42]).unwrap_err(), ReconcileError::NotNegentropy(0x42));
    assert_eq!(responder.respond(&[0x62, 1, 2]).unwrap(), vec![0x61], "newer version: answer ours");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics_either_role(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (a, _) = random_sets(30, 200);
        let mut responder = Reconciler::new(&a, 0).unwrap();
        let _ = responder.respond(&bytes);
        let mut initiator = Reconciler::new(&a, 4_096).unwrap();
        let _ = initiator.initiate();
        let _ = initiator.reconcile(&bytes, &mut Vec::new(), &mut Vec::new());
        let mut prefixed = vec![0x61];
        prefixed.extend_from_slice(&bytes);
        let _ = responder.respond(&prefixed);
    }
}
