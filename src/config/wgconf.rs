//! The wg(8) configuration file (`wg setconf`, `wg showconf`), with wg-quick's extra keys
//! recognised so that a wg-quick file parses.

use std::net::SocketAddr;

use super::{ConfigError, DeviceChange, PeerChange};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::routing::IpNet;

/// wg-quick's own keys: the core records them and otherwise ignores them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WgQuickExtras {
    pub address: Vec<String>,
    pub dns: Vec<String>,
    pub mtu: Option<u32>,
    pub table: Option<String>,
    pub hooks: Vec<(String, String)>,
    pub save_config: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WgConfig {
    /// Everything wg(8) would send; `replace_peers` is set as `wg setconf` does.
    pub change: DeviceChange,
    pub extras: WgQuickExtras,
}

#[derive(PartialEq)]
enum Section {
    None,
    Interface,
    Peer,
}

fn parse_port(n: usize, v: &str) -> Result<u16, ConfigError> {
    v.parse().map_err(|_| ConfigError::new(n, "ListenPort is not a port number"))
}

fn parse_fwmark(n: usize, v: &str) -> Result<u32, ConfigError> {
    if v.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| ConfigError::new(n, "FwMark is not a number or 'off'"))
}

fn parse_keepalive(n: usize, v: &str) -> Result<u16, ConfigError> {
    if v.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    v.parse().map_err(|_| ConfigError::new(n, "PersistentKeepalive is not 0-65535 or 'off'"))
}

fn parse_endpoint(n: usize, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        ConfigError::new(n, "Endpoint is not ip:port or [ip6]:port (host names are resolved by wg(8), not here)")
    })
}

/// Parses a whole configuration file.
pub fn parse(text: &str) -> Result<WgConfig, ConfigError> {
    let mut cfg = WgConfig::default();
    cfg.change.replace_peers = true;
    let mut section = Section::None;
    let mut peer: Option<PeerChange> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            if let Some(p) = peer.take() {
                cfg.change.peers.push(p);
            }
            section = match line.to_ascii_lowercase().as_str() {
                "[interface]" => Section::Interface,
                "[peer]" => Section::Peer,
                _ => return Err(ConfigError::new(n, "unknown section")),
            };
            if section == Section::Peer {
                peer = None;
            }
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| ConfigError::new(n, "the line is not Key = Value"))?;
        let lower = key.to_ascii_lowercase();
        match section {
            Section::None => return Err(ConfigError::new(n, "a key appears before any section")),
            Section::Interface => match lower.as_str() {
                "privatekey" => {
                    let k =
                        PrivateKey::from_base64(value).map_err(|e| ConfigError::new(n, format!("PrivateKey: {e}")))?;
                    cfg.change.private_key = Some(Some(k));
                }
                "listenport" => cfg.change.listen_port = Some(parse_port(n, value)?),
                "fwmark" => cfg.change.fwmark = Some(parse_fwmark(n, value)?),
                "address" => cfg.extras.address.extend(value.split(',').map(|s| s.trim().to_string())),
                "dns" => cfg.extras.dns.extend(value.split(',').map(|s| s.trim().to_string())),
                "mtu" => cfg.extras.mtu = Some(value.parse().map_err(|_| ConfigError::new(n, "MTU is not a number"))?),
                "table" => cfg.extras.table = Some(value.to_string()),
                "preup" | "postup" | "predown" | "postdown" => {
                    cfg.extras.hooks.push((key.to_string(), value.to_string()))
                }
                "saveconfig" => cfg.extras.save_config = value.eq_ignore_ascii_case("true"),
                _ => return Err(ConfigError::new(n, "unknown key in [Interface]")),
            },
            Section::Peer => {
                if lower == "publickey" {
                    if peer.as_ref().is_some() {
                        return Err(ConfigError::new(n, "a [Peer] has two PublicKey lines"));
                    }
                    let k =
                        PublicKey::from_base64(value).map_err(|e| ConfigError::new(n, format!("PublicKey: {e}")))?;
                    let mut p = PeerChange::new(k);
                    p.replace_allowed_ips = true;
                    peer = Some(p);
                    continue;
                }
                let p = peer.as_mut().ok_or_else(|| ConfigError::new(n, "a key comes before the peer's PublicKey"))?;
                match lower.as_str() {
                    "presharedkey" => {
                        p.preshared_key = Some(
                            PresharedKey::from_base64(value)
                                .map_err(|e| ConfigError::new(n, format!("PresharedKey: {e}")))?,
                        )
                    }
                    "allowedips" => {
                        for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                            let net: IpNet =
                                part.parse().map_err(|e| ConfigError::new(n, format!("AllowedIPs: {e}")))?;
                            p.allowed_ips.push(net);
                        }
                    }
                    "endpoint" => p.endpoint = Some(parse_endpoint(n, value)?),
                    "persistentkeepalive" => p.persistent_keepalive = Some(parse_keepalive(n, value)?),
                    _ => return Err(ConfigError::new(n, "unknown key in [Peer]")),
                }
            }
        }
    }
    if let Some(p) = peer.take() {
        cfg.change.peers.push(p);
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIV: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PUB: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn wg_quick_file_parses() {
        let text = format!(
            "# comment\n[Interface]\nPrivateKey = {PRIV}\nListenPort = 51820\nFwMark = 0x10\nAddress = 10.0.0.1/24, fd00::1/64\n\
             DNS = 1.1.1.1\nMTU = 1420\nTable = off\nPostUp = echo up # trailing comment\nSaveConfig = false\n\n\
             [Peer]\nPublicKey = {PUB}\nPresharedKey = {PRIV}\nAllowedIPs = 10.0.0.2/32, fd00::2/128\n\
             Endpoint = 192.0.2.1:51820\nPersistentKeepalive = 25\n\n[peer]\npublickey = {PRIV}\nEndpoint = [fd00::9]:1\n"
        );
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.change.listen_port, Some(51820));
        assert_eq!(cfg.change.fwmark, Some(16));
        assert!(cfg.change.replace_peers);
        assert_eq!(cfg.extras.address, vec!["10.0.0.1/24", "fd00::1/64"]);
        assert_eq!(cfg.extras.mtu, Some(1420));
        assert_eq!(cfg.extras.hooks.len(), 1);
        assert_eq!(cfg.change.peers.len(), 2);
        let p = &cfg.change.peers[0];
        assert_eq!(p.public_key.to_base64(), PUB);
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(cfg.change.peers[1].endpoint, Some("[fd00::9]:1".parse().unwrap()));
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            ("ListenPort = 1\n", 1, "before any section"),
            ("[Interface]\nListenPort = x\n", 2, "ListenPort"),
            ("[Interface]\nPrivateKey = abc\n", 2, "PrivateKey"),
            ("[Interface]\nFrob = 1\n", 2, "unknown key"),
            ("[Interface]\nno equals\n", 2, "Key = Value"),
            ("[Bogus]\n", 1, "unknown section"),
            ("[Peer]\nAllowedIPs = 10.0.0.0/8\n", 2, "before the peer's PublicKey"),
            (&format!("[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.0.0.0/40\n"), 3, "AllowedIPs"),
            (&format!("[Peer]\nPublicKey = {PUB}\nEndpoint = example.com:1\n"), 3, "Endpoint"),
            (&format!("[Peer]\nPublicKey = {PUB}\nPersistentKeepalive = never\n"), 3, "PersistentKeepalive"),
            (&format!("[Peer]\nPublicKey = {PUB}\nPublicKey = {PUB}\n"), 3, "two PublicKey"),
            ("[Interface]\nMTU = big\n", 2, "MTU"),
        ];
        for (text, line, what) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}");
            assert!(e.reason.contains(what), "{text}: {}", e.reason);
        }
    }
}
