//! The memory store's bucket: one cache line per limit of a key.

use crate::algorithm::{BucketState, Shape};
use crate::{Algorithm, Limit};

/// One bucket: one limit (its name, algorithm and time unit) of the requests named
/// `key`. One cache line: the key and the name share one allocation, and the table's hash of
/// the bucket is spread from the 32 bits kept here, so the table never rehashes a key.
#[repr(align(64))]
pub(super) struct Bucket {
    /// The key, then the limit's name.
    pub(super) text: Box<str>,
    /// The name's length, at the end of `text` (names are at most 64 bytes).
    pub(super) name_len: u8,
    pub(super) algorithm: Algorithm,
    /// Decided on since the last sweep: kept by it even when idle, so a key in use is not
    /// dropped and made again over and over (a second chance, as a CLOCK cache gives).
    pub(super) touched: bool,
    pub(super) hash: u32,
    pub(super) unit_us: u64,
    pub(super) state: BucketState,
}

impl Bucket {
    fn shape(&self) -> Shape {
        Shape {
            algorithm: self.algorithm,
            unit_us: self.unit_us,
        }
    }

    pub(super) fn idle(&self, now: u64) -> bool {
        self.state.idle(self.shape(), now)
    }

    pub(super) fn used(&self, now: u64) -> u64 {
        self.state.used_by(self.shape(), now)
    }

    /// The table's hash of the bucket.
    pub(super) fn table_hash(&self) -> u64 {
        spread(self.hash)
    }
}

// A bucket is one cache line.
const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

/// The table's hash of a bucket from its 32 bits: a multiply spreads them over the 64 bits
/// the table reads (the low ones for the slot, the top seven for the tag).
pub(super) fn spread(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Whether a bucket is the one of `limit` for `key`, whose hash is `hash`: what the bucket
/// holds is compared first, its text only when all that agrees.
pub(super) fn matches<'a>(
    key: &'a str,
    limit: &'a Limit,
    hash: u32,
) -> impl Fn(&Bucket) -> bool + 'a {
    move |b| {
        let name = limit.name();
        b.hash == hash
            && usize::from(b.name_len) == name.len()
            && b.algorithm == limit.algorithm()
            && b.text.len() == key.len() + name.len()
            && b.text.as_bytes()[..key.len()] == *key.as_bytes()
            && b.text.as_bytes()[key.len()..] == *name.as_bytes()
    }
}
