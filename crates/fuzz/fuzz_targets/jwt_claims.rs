//! Fuzz target `jwt_claims`: tokens through the gateway's verifier (jwt mode, an HS256
//! secret). The first byte picks how the rest is used:
//! - even: the rest is a token, as a client sends it (shape, base64, header, signature);
//! - odd: the rest is the claims JSON, signed with the configured secret, so the input
//!   gets past the signature and exercises the claim checks; bit 1 picks a verifier that
//!   also requires an issuer and an audience.
//!
//! Checked: nothing panics; a validly signed token is never refused as a bad signature;
//! the same token with a damaged signature is never accepted; accepted claims have a
//! non-blank `sub` and a normalized display name.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use roomcast::fuzzing::{Hs256Verifier, TokenClaims, allows};
use roomcast_protocol::normalize_name;
use sha2::Sha256;

const SECRET: &str = "fuzz-secret-0123456789abcdef";

fn verifiers() -> &'static [Hs256Verifier; 2] {
    static VERIFIERS: OnceLock<[Hs256Verifier; 2]> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        [
            Hs256Verifier::new(SECRET, None, None).expect("a 16+ byte secret is accepted"),
            Hs256Verifier::new(SECRET, Some("https://issuer.example"), Some("roomcast"))
                .expect("a 16+ byte secret is accepted"),
        ]
    })
}

/// An HS256 token with `payload` (any bytes) as its claims, signed with [`SECRET`].
fn sign(payload: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(signing_input.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let verifier = &verifiers()[usize::from(mode >> 1 & 1)];
    if mode & 1 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            let _ = check(verifier, token);
        }
        return;
    }
    let token = sign(rest);
    let verdict = check(verifier, &token);
    assert_ne!(
        verdict,
        Err("bad signature"),
        "a validly signed token: {token}"
    );
    // The same claims under a damaged signature (first character of the signature changed).
    let (signed, sig) = token.rsplit_once('.').expect("three parts");
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed}.{first}{}", &sig[1..]);
    assert!(
        verifier.verify(&forged).is_err(),
        "a forged token was accepted"
    );
    assert!(
        verifier
            .verify_room_token(&forged, "alice", "general")
            .is_err()
    );
});

/// Verifies `token` both ways and checks what is accepted.
fn check(verifier: &Hs256Verifier, token: &str) -> Result<(), &'static str> {
    let verdict = verifier.verify(token);
    if let Ok(TokenClaims {
        sub,
        name,
        rooms,
        publish,
        ..
    }) = &verdict
    {
        assert!(!sub.trim().is_empty());
        assert_eq!(
            normalize_name(name).as_ref(),
            Ok(name),
            "the name is normalized"
        );
        for room in ["general", "team-a", ""] {
            // Patterns are data, never a reason to panic; no patterns allow every room.
            let _ = allows(rooms.as_deref(), room) && allows(publish.as_deref(), room);
            assert!(allows(None, room));
        }
    }
    let _ = verifier.verify_room_token(token, "alice", "general");
    verdict.map(|_| ())
}
