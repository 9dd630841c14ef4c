//! LLDP neighbours as systemd-networkd records them.
//!
//! Newer networkd answers `io.systemd.Network.GetLLDPNeighbors` on its varlink socket;
//! systemd 252 (Debian 12) has no such call and keeps, per link, the frames it last heard
//! from each neighbour in `/run/systemd/netif/lldp/<ifindex>`: for each neighbour a
//! little-endian 64-bit length, then the whole Ethernet frame. Both are structured: the
//! frames are decoded here (IEEE 802.1AB TLVs), never `networkctl lldp` text.

use super::netlink::format_mac;
use super::LldpNeighbor;

/// TLV types (IEEE 802.1AB).
const TLV_END: u8 = 0;
const TLV_CHASSIS_ID: u8 = 1;
const TLV_PORT_ID: u8 = 2;
const TLV_PORT_DESCRIPTION: u8 = 4;
const TLV_SYSTEM_NAME: u8 = 5;
/// The MAC-address subtype: 4 for a chassis ID, 3 for a port ID.
const CHASSIS_MAC: u8 = 4;
const PORT_MAC: u8 = 3;
/// The network-address subtype (chassis 5, port 4): an IANA family byte, then the address.
const CHASSIS_NETWORK_ADDRESS: u8 = 5;
const PORT_NETWORK_ADDRESS: u8 = 4;
const ETHER_HEADER: usize = 14;

/// Every neighbour in a networkd LLDP file; records that do not decode are skipped.
pub fn parse_networkd_file(data: &[u8]) -> Vec<LldpNeighbor> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 8 {
        let (len, tail) = rest.split_at(8);
        let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
        let Ok(len) = usize::try_from(len) else { break };
        if len > tail.len() {
            break;
        }
        let (frame, next) = tail.split_at(len);
        if let Some(n) = parse_frame(frame) {
            out.push(n);
        }
        rest = next;
    }
    out
}

/// One LLDP Ethernet frame (header included).
pub fn parse_frame(frame: &[u8]) -> Option<LldpNeighbor> {
    let mut tlvs = frame.get(ETHER_HEADER..)?;
    let mut n = LldpNeighbor::default();
    while tlvs.len() >= 2 {
        let kind = tlvs[0] >> 1;
        let len = (usize::from(tlvs[0] & 1) << 8) | usize::from(tlvs[1]);
        let value = tlvs.get(2..2 + len)?;
        match kind {
            TLV_END => break,
            TLV_CHASSIS_ID => n.chassis_id = id_text(value, CHASSIS_MAC, CHASSIS_NETWORK_ADDRESS)?,
            TLV_PORT_ID => n.port_id = id_text(value, PORT_MAC, PORT_NETWORK_ADDRESS)?,
            TLV_PORT_DESCRIPTION => n.port_description = text(value),
            TLV_SYSTEM_NAME => n.name = text(value),
            _ => {}
        }
        tlvs = &tlvs[2 + len..];
    }
    (!n.chassis_id.is_empty() && !n.port_id.is_empty()).then_some(n)
}

/// A chassis or port ID (a subtype byte, then the ID) as text: a MAC as
/// `aa:bb:cc:dd:ee:ff`, an IPv4/IPv6 network address as an address, printable text as
/// itself, anything else in hex.
fn id_text(value: &[u8], mac_subtype: u8, address_subtype: u8) -> Option<String> {
    let (&subtype, id) = value.split_first()?;
    if id.is_empty() {
        return None;
    }
    if subtype == mac_subtype && id.len() == 6 {
        return format_mac(id);
    }
    if subtype == address_subtype {
        match id {
            [1, a, b, c, d] => return Some(std::net::Ipv4Addr::new(*a, *b, *c, *d).to_string()),
            [2, v6 @ ..] if v6.len() == 16 => {
                let octets: [u8; 16] = v6.try_into().ok()?;
                return Some(std::net::Ipv6Addr::from(octets).to_string());
            }
            _ => {}
        }
    }
    if id.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Some(String::from_utf8_lossy(id).into_owned());
    }
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches('\0')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let len = value.len();
        let mut v = vec![(kind << 1) | u8::from(len > 255), (len & 0xff) as u8];
        v.extend_from_slice(value);
        v
    }

    fn frame(tlvs: &[Vec<u8>]) -> Vec<u8> {
        let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc];
        for t in tlvs {
            f.extend_from_slice(t);
        }
        f.extend_from_slice(&tlv(TLV_END, &[]));
        f
    }

    #[test]
    fn a_switch_port_with_mac_chassis_and_name() {
        let f = frame(&[
            tlv(TLV_CHASSIS_ID, &[4, 0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            tlv(TLV_PORT_ID, &[5, b'g', b'e', b'-', b'0', b'/', b'1']),
            tlv(3, &[0, 120]),
            tlv(TLV_PORT_DESCRIPTION, b"uplink"),
            tlv(TLV_SYSTEM_NAME, b"switch-1"),
        ]);
        let mut file = (f.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&f);
        // A second record cut short is ignored.
        file.extend_from_slice(&100u64.to_le_bytes());
        file.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            parse_networkd_file(&file),
            [LldpNeighbor {
                chassis_id: "52:54:00:12:34:56".into(),
                port_id: "ge-0/1".into(),
                name: "switch-1".into(),
                port_description: "uplink".into(),
            }]
        );
    }

    #[test]
    fn addresses_and_binary_ids_and_frames_without_ids() {
        let f = frame(&[
            tlv(TLV_CHASSIS_ID, &[5, 1, 192, 0, 2, 7]),
            tlv(TLV_PORT_ID, &[7, 0, 1, 0xff]),
        ]);
        let n = parse_frame(&f).unwrap();
        assert_eq!(n.chassis_id, "192.0.2.7");
        assert_eq!(n.port_id, "0001ff");
        assert_eq!(n.name, "");
        assert_eq!(parse_frame(&frame(&[tlv(TLV_SYSTEM_NAME, b"x")])), None);
        assert_eq!(parse_frame(&[0; 10]), None);
    }
}
