//! The process's rustls crypto provider. The reqwest 0.13 under rmcp and the OTLP exporter is
//! built without one (so no second crypto library is compiled in): it takes the process's,
//! which is ring, as for grip's own HTTP client.

/// Installs ring as the process's provider, unless one is installed already.
pub(crate) fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
