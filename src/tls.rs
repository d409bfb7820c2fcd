//! TLS for the gateway's outgoing HTTP clients (JWKS fetches in `auth`, the publish hook,
//! the `roomcast api` CLI): rustls with the ring provider and the platform's certificate
//! roots, in one place so every client trusts the same roots.

use std::sync::Arc;

/// A rustls client configuration with the ring provider and the platform's roots.
pub(crate) fn client_config() -> Result<rustls::ClientConfig, String> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth())
}

/// A rustls client configuration that trusts nothing: for clients that only speak plain
/// `http://` on a platform without usable roots.
pub(crate) fn no_roots_config() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}
