//! The HTTPS listener's certificate: loaded from PEM files, served to every
//! handshake from one swappable slot, so that a reload can rotate it without
//! a restart and without touching open connections.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::settings::TlsListenerSettings;

/// The certificate every new handshake gets.
pub struct Certificate {
    current: ArcSwap<CertifiedKey>,
}

impl Certificate {
    /// Loads the certificate and key of `tls`; `None` when TLS is off.
    pub fn load(tls: &TlsListenerSettings) -> Result<Option<Arc<Self>>, String> {
        let Some((_, cert, key)) = tls.enabled() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(Self {
            current: ArcSwap::from_pointee(read_pair(cert, key)?),
        })))
    }

    /// Re-reads the files; the old certificate stays when they are not a
    /// valid pair.
    pub fn reload(&self, tls: &TlsListenerSettings) -> Result<(), String> {
        if let Some((_, cert, key)) = tls.enabled() {
            self.current.store(Arc::new(read_pair(cert, key)?));
        }
        Ok(())
    }

    /// The listener's TLS settings: this certificate, HTTP/2 and HTTP/1.1.
    pub fn listener_settings(self: &Arc<Self>) -> TlsSettings {
        // No paths: with a resolver, Pingora reads no files.
        let mut settings = TlsSettings::intermediate("", "")
            .unwrap_or_else(|_| unreachable!("intermediate only stores the paths"));
        settings.set_cert_resolver(self.clone());
        settings.enable_h2();
        settings
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Certificate")
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The certificate chain and its key, checked to belong together.
fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider is installed".to_owned())?;
    let cert_name = cert.display().to_string();
    let key_name = key.display().to_string();
    for (setting, path) in [("tls.cert_file", cert), ("tls.key_file", key)] {
        std::fs::metadata(path)
            .map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?;
    }
    let (chain, private_key) = pingora::tls::load_certs_and_key_files(&cert_name, &key_name)
        .map_err(|e| format!("tls: cannot read {cert_name} or {key_name}: {e}"))?
        .ok_or_else(|| {
            format!(
                "tls: {cert_name} holds no PEM certificate or {key_name} no PEM private key \
                 (PKCS#8, PKCS#1 or SEC1)"
            )
        })?;
    CertifiedKey::from_der(chain, private_key, provider)
        .map_err(|e| format!("tls: {cert_name} and {key_name} are not a usable pair: {e}"))
}
