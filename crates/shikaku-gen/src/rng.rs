//! A small seeded random number generator (xoshiro256**, seeded by SplitMix64), so generated
//! streams are reproducible across platforms and releases without an RNG dependency.

/// xoshiro256** seeded from a u64.
#[derive(Debug, Clone)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng { state: [next(), next(), next(), next()] }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform integer in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An age in years drawn from a rough Japanese age pyramid (0–99).
    pub fn age(&mut self) -> i32 {
        // Buckets of ten years with weights from the 2020 census, in percent.
        const WEIGHTS: [u64; 10] = [8, 9, 10, 11, 14, 15, 13, 14, 10, 6];
        let total: u64 = WEIGHTS.iter().sum();
        let mut roll = self.below(total);
        for (bucket, weight) in WEIGHTS.iter().enumerate() {
            if roll < *weight {
                return bucket as i32 * 10 + self.below(10) as i32;
            }
            roll -= weight;
        }
        50
    }
}
