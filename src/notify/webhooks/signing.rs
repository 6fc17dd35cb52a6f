//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): an
//! endpoint's secret is `whsec_` and the base64 of random bytes; a message
//! is signed `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed
//! with the decoded bytes, so the specification's libraries verify it. Pure.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids;

const PREFIX: &str = "whsec_";
/// 32 random bytes: the specification asks for 24 to 64.
const SECRET_BYTES: usize = 32;

/// A new endpoint secret, `whsec_<base64 of 32 random bytes>`.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    ids::fill_random(&mut bytes);
    format!("{PREFIX}{}", STANDARD.encode(bytes))
}

/// The `webhook-signature` header of message `id` sent at `timestamp` (unix
/// seconds) with `body`, under `secret`. None if the secret is not one
/// `new_secret` made (a damaged row): such a message is never sent.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix(PREFIX)?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the specification's reference libraries (their test
    /// suites sign this message with this secret).
    #[test]
    fn signs_as_the_reference_implementation() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn a_new_secret_decodes_to_32_bytes_and_differs_each_time() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        let bytes = STANDARD.decode(a.strip_prefix(PREFIX).unwrap()).unwrap();
        assert_eq!(bytes.len(), SECRET_BYTES);
        assert!(signature(&a, "msg_1", 1, b"{}").is_some());
        assert_eq!(signature("not-a-secret", "msg_1", 1, b"{}"), None);
    }
}
