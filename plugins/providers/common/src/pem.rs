//! PEM certificates to DER, for comparing certificates byte for byte.

use plugin_api::{Error, Result};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The DER bytes of every `CERTIFICATE` block in `pem`, in order (other blocks and text
/// around them are skipped). A block that does not decode is an error.
pub fn certificates(pem: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = vec![];
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let Some(end) = body.find(END) else {
            return Err(Error::bad_request("a PEM certificate has no END line"));
        };
        let der = base64_decode(&body[..end])
            .ok_or_else(|| Error::bad_request("a PEM certificate is not valid base64"))?;
        if der.is_empty() {
            return Err(Error::bad_request("a PEM certificate is empty"));
        }
        out.push(der);
        rest = &body[end + END.len()..];
    }
    Ok(out)
}

/// Standard base64 with padding; whitespace is ignored. `None` on anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let chars: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !chars.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(chars.len() / 4 * 3);
    for (i, quad) in chars.chunks(4).enumerate() {
        let last = i == chars.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_vectors() {
        for (text, bytes) in [
            ("", &b""[..]),
            ("Zg==", b"f"),
            ("Zm8=", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYg==", b"foob"),
            ("Zm9v\nYmFy", b"foobar"),
        ] {
            assert_eq!(base64_decode(text).as_deref(), Some(bytes), "{text:?}");
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*"] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_certificate_block_is_decoded() {
        let pem = "subject=x\n-----BEGIN CERTIFICATE-----\nZm9v\n-----END CERTIFICATE-----\n\
                   -----BEGIN PRIVATE KEY-----\nZm9v\n-----END PRIVATE KEY-----\n\
                   -----BEGIN CERTIFICATE-----\nYmFy\n-----END CERTIFICATE-----\n";
        assert_eq!(
            certificates(pem).unwrap(),
            vec![b"foo".to_vec(), b"bar".to_vec()]
        );
        assert!(certificates("nothing here").unwrap().is_empty());
        let err = certificates("-----BEGIN CERTIFICATE-----\nZm9v\n").unwrap_err();
        assert_eq!(err.message, "a PEM certificate has no END line");
        let err =
            certificates("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").unwrap_err();
        assert_eq!(err.message, "a PEM certificate is not valid base64");
    }
}
