//! The `tls:` section: an HTTPS listener (HTTP/1.1 and HTTP/2) beside the
//! plaintext one.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, units};

/// The `tls:` section. All three keys together, or none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsListenerSettings {
    /// Address of the HTTPS listener, which offers HTTP/2 and HTTP/1.1 by
    /// ALPN; no TLS listener when absent. Restart-only.
    #[serde(with = "units::optional_addr")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain, leaf first. Re-read on reload, so a rotated
    /// certificate needs no restart.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    /// Re-read on reload.
    pub key_file: Option<PathBuf>,
}

impl TlsListenerSettings {
    /// The listener's address and its certificate and key files, when on.
    pub fn enabled(&self) -> Option<(SocketAddr, &PathBuf, &PathBuf)> {
        Some((
            self.listen?,
            self.cert_file.as_ref()?,
            self.key_file.as_ref()?,
        ))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match (&self.listen, &self.cert_file, &self.key_file) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => Ok(()),
            (Some(_), None, _) => Err(ConfigError::new(
                "tls.cert_file",
                "required with tls.listen: the PEM certificate chain (or EAI_GATEWAY_TLS_CERT)",
            )),
            (Some(_), Some(_), None) => Err(ConfigError::new(
                "tls.key_file",
                "required with tls.listen: the PEM private key (or EAI_GATEWAY_TLS_KEY)",
            )),
            (None, _, _) => Err(ConfigError::new(
                "tls.listen",
                "required with tls.cert_file and tls.key_file: the HTTPS address \
                 (or EAI_GATEWAY_TLS_LISTEN)",
            )),
        }
    }
}
