//! The memory store's bucket: one cache line per limit of a key.

use crate::algorithm::{BucketState, Shape};
use crate::{Algorithm, Limit};

/// One bucket: one limit (its name, algorithm and time unit) of the requests named
/// `key`. One cache line, nothing beside it: the key is known by its [`Id`], and the table's
/// hash of the bucket is spread from the 32 bits kept here, so the table never rehashes a key.
#[repr(align(64))]
pub(super) struct Bucket {
    /// The key and the limit's name, as [`Id::fingerprint`].
    pub(super) fingerprint: u128,
    /// The name's length (names are at most 64 bytes).
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

/// Which bucket a key's limit has: the 32 bits of its table hash, and a 128-bit fingerprint of
/// the key and the limit's name, from two hashes of the key under seeds drawn at random for
/// each store (so no client can aim at another's fingerprint).
///
/// A bucket is known by its fingerprint, not by its key's text: the text would be a second
/// allocation and a second cache miss on every decision (`BENCHMARKS.md`, issue 26). Two keys
/// share a bucket only when both 64-bit halves collide, about once in 2^128 pairs; and a shared
/// bucket can only refuse its clients early, never admit more than its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Id {
    pub(super) hash: u32,
    pub(super) fingerprint: u128,
}

impl Id {
    /// The id of `limit`'s bucket for a key of hashes `first` and `second`.
    pub(super) fn new(first: u64, second: u64, limit: &Limit) -> Self {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        const L: u64 = 0xC2B2_AE3D_27D4_EB4F;
        let name = limit.name_hash();
        // For one name, each half is a bijection of its hash of the key.
        let high = (first ^ name).wrapping_mul(K);
        let low = (second ^ name.rotate_left(32)).wrapping_mul(L);
        Self {
            hash: (high >> 32) as u32,
            fingerprint: (u128::from(high) << 64) | u128::from(low),
        }
    }
}

/// Whether a bucket is the one of `limit` whose id is `id`.
pub(super) fn matches(limit: &Limit, id: Id) -> impl Fn(&Bucket) -> bool + '_ {
    move |b| {
        b.hash == id.hash
            && b.fingerprint == id.fingerprint
            && b.algorithm == limit.algorithm()
            && usize::from(b.name_len) == limit.name().len()
    }
}
