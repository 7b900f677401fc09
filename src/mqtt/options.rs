//! rumqttc's options from a listener's config: the persistent session
//! (stable client id, `clean_session = false`), manual acks, credentials,
//! keep-alive, packet size limits and TLS through moltgate's own rustls
//! provider. Kept apart so the session code reads as the protocol only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use super::{MqttError, MAX_REPLY};
use crate::config::mqtt::{read_ca, MqttListenerConfig};

/// Room for a topic (at most 65,535 bytes), its length and a packet id
/// beside the payload in one PUBLISH.
const PUBLISH_OVERHEAD: usize = 65_536 + 8;

/// Packets up to this size are read whatever `max_payload` is, so a payload
/// a little over the limit is refused and acknowledged rather than failing
/// the connection (which would have the broker send it again, forever).
const READ_FLOOR: usize = 16 * 1024 * 1024;

/// The largest packet rumqttc reads for a listener whose payloads may be
/// `max_payload` bytes: four times that, at least 16 MiB, at most MQTT's own
/// limit.
pub fn read_limit(max_payload: usize) -> usize {
    max_payload
        .saturating_mul(4)
        .max(READ_FLOOR)
        .saturating_add(PUBLISH_OVERHEAD)
        .min(crate::config::mqtt::MQTT_MAX_PAYLOAD)
}

/// The options of one listener.
pub fn build(
    config: &MqttListenerConfig,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<MqttOptions, MqttError> {
    let name = config.name.0.clone();
    let setting = |message: String| MqttError::Setting {
        listener: name.clone(),
        message,
    };
    let client_id = config.client_id();
    if client_id.is_empty() {
        // rumqttc panics on a persistent session without a client id.
        return Err(setting("broker.client_id is empty".into()));
    }
    let b = &config.broker;
    if b.host.trim().is_empty() {
        return Err(setting("broker.host is empty".into()));
    }
    let mut options = MqttOptions::new(client_id, b.host.trim(), b.port());
    // rumqttc asserts a keep-alive of whole seconds; the config check
    // refuses others, this keeps a bad value from ever panicking.
    let keep_alive = b.keep_alive.0.as_secs().clamp(1, u64::from(u16::MAX));
    options
        .set_keep_alive(Duration::from_secs(keep_alive))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(read_limit(config.max_payload), MAX_REPLY + PUBLISH_OVERHEAD)
        .set_inflight(32);
    if let Some(user) = b.username.as_ref().filter(|u| !u.is_empty()) {
        let password = b.password.as_ref().map_or("", |p| p.expose());
        options.set_credentials(user.0.clone(), password);
    }
    if b.tls {
        let tls = tls_config(config, resolve)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(options)
}

/// A rustls client config with moltgate's full ring provider (TLS 1.2 and
/// 1.3, as brokers vary), trusting `broker.ca` or else the Mozilla roots.
fn tls_config(
    config: &MqttListenerConfig,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<rustls::ClientConfig, MqttError> {
    let listener = config.name.0.clone();
    let mut roots = rustls::RootCertStore::empty();
    match &config.broker.ca {
        Some(ca) => {
            let certs = read_ca(&resolve(ca)).map_err(|message| MqttError::Ca {
                listener: listener.clone(),
                message,
            })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(MqttError::Ca {
                    listener,
                    message: format!("{ca}: no usable CA certificate"),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::client_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls {
            listener,
            message: e.to_string(),
        })?;
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limit_bounds() {
        assert_eq!(read_limit(1024), READ_FLOOR + PUBLISH_OVERHEAD);
        assert_eq!(
            read_limit(10 * 1024 * 1024),
            40 * 1024 * 1024 + PUBLISH_OVERHEAD
        );
        assert_eq!(
            read_limit(usize::MAX),
            crate::config::mqtt::MQTT_MAX_PAYLOAD
        );
    }
}
