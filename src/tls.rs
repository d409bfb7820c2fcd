//! TLS for the gateway's outgoing clients (JWKS fetches in `auth`, the publish hook, the
//! `roomcast api` CLI, and the Redis bus): rustls with the ring provider and the
//! platform's certificate roots (or, for Redis, a configured CA file), in one place so
//! every client trusts the same roots.

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

/// The certificates of a PEM file (`redis.tls_ca_file`); an error names what is wrong.
pub(crate) fn read_ca_file(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The rustls configuration of the Redis bus: the CA file's certificates when given,
/// else the platform's roots.
pub(crate) fn redis_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    let Some(path) = ca_file else {
        return client_config();
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_ca_file(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
