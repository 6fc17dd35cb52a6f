//! Identifiers and secrets. Public ids are time-ordered (milliseconds then
//! random bits) so they sort by creation and append to B-tree indexes; they
//! stay unique across databases, which matters because a delivery id is the
//! mail provider's Idempotency-Key. Secrets are random and stored only hashed.

use sha2::{Digest, Sha256};

/// A new id like `evt_0193a1b2c3d4e5f60718293a`: 12 hex digits of
/// milliseconds followed by 16 random hex digits.
pub fn new_id(prefix: &str) -> String {
    let ms = crate::time::system_now_ms() as u64 & 0xffff_ffff_ffff;
    // By hand rather than `format!`: the dispatcher makes one per email
    // while it holds the write lock, and formatting cost three times as much.
    let mut id = String::with_capacity(prefix.len() + 29);
    id.push_str(prefix);
    id.push('_');
    push_hex(&mut id, ms, 12);
    push_hex(&mut id, id_bits(), 16);
    id
}

/// Appends the low `digits` hex digits of `value`, most significant first.
fn push_hex(out: &mut String, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[(value >> (4 * i)) as usize & 0xf]));
    }
}

/// The random part of an id: splitmix64 on a per-thread state seeded from
/// the operating system. Ids must be unique, not secret (secrets use
/// `fill_random` directly), and a system call per id showed up in the
/// dispatcher's profile.
fn id_bits() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(random_u64());
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new bearer token: `hrld_` and 32 random bytes in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes);
    format!("hrld_{}", hex(&bytes))
}

/// SHA-256 of a secret, hex encoded: what the database stores for tokens.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares two secrets in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    fill_random(&mut bytes);
    u64::from_le_bytes(bytes)
}

pub fn fill_random(buf: &mut [u8]) {
    // The OS generator only fails on platforms herald does not run on; a
    // missing entropy source must stop the process, never yield weak tokens.
    getrandom::fill(buf).expect("operating system random number generator unavailable");
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_spell_milliseconds_then_random_bits_in_hex() {
        let mut id = String::new();
        push_hex(&mut id, 0x0193_a1b2_c3d4, 12);
        push_hex(&mut id, 0xe5f6_0718_293a_4b5c, 16);
        assert_eq!(id, "0193a1b2c3d4e5f60718293a4b5c");
        let id = new_id("dlv");
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn ids_are_unique_prefixed_and_time_ordered() {
        let a = new_id("evt");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("evt");
        assert!(a.starts_with("evt_") && a.len() == 4 + 28);
        assert!(a < b, "{a} should sort before {b}");
    }

    #[test]
    fn ids_from_many_threads_within_one_millisecond_never_collide() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..20_000).map(|_| new_id("dlv")).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn secrets_compare_and_hash() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert_eq!(hash_secret("x").len(), 64);
        assert_ne!(new_token(), new_token());
    }
}
