//! Compressed request bodies: `Content-Encoding: gzip`, `deflate` or `zstd`.
//!
//! Agents compress what they send to some providers (Codex sends zstd), and
//! a gateway in front of them must read it. A compressed body is a way to
//! send a small request that becomes a huge one, so the limit that holds for
//! a plain body (`--max-body-bytes`) holds for the decompressed bytes: the
//! decoder stops at one byte past it, and a zstd frame may not ask for a
//! window larger than that limit needs. Decoding is plain blocking code on
//! the worker, as parsing the JSON after it is; it reads a body that already
//! arrived, so it waits for nothing.

use std::io::Read;

/// A request body's content coding, from its `Content-Encoding` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coding {
    /// No header, or `identity`.
    #[default]
    Identity,
    Gzip,
    Deflate,
    Zstd,
    /// Anything else, or more than one coding: 415 before the body is read.
    Unsupported,
}

impl Coding {
    /// The coding a `Content-Encoding` value names.
    pub fn parse(value: &[u8]) -> Self {
        let v = value.trim_ascii();
        if v.is_empty() || v.eq_ignore_ascii_case(b"identity") {
            Self::Identity
        } else if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") {
            Self::Gzip
        } else if v.eq_ignore_ascii_case(b"deflate") {
            Self::Deflate
        } else if v.eq_ignore_ascii_case(b"zstd") {
            Self::Zstd
        } else {
            Self::Unsupported
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
            Self::Zstd => "zstd",
            Self::Unsupported => "unsupported",
        }
    }
}

/// Why a body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// It decompresses to more than the limit.
    TooLarge,
    /// It is not valid data of its coding.
    Invalid(String),
}

/// `body` decompressed, at most `limit` bytes of it.
pub fn decode(coding: Coding, body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let invalid = |e: std::io::Error| DecodeError::Invalid(e.to_string());
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Identity | Coding::Unsupported => return Ok(body.to_vec()),
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(body)),
        Coding::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(body).map_err(invalid)?;
            d.window_log_max(window_log(limit)).map_err(invalid)?;
            Box::new(d)
        }
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    reader.take(limit as u64 + 1).read_to_end(&mut out).map_err(invalid)?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

/// The largest zstd window (as a power of two) a decoder allocates for a
/// body within `limit` bytes: the limit's size, but at least the 8 MiB every
/// standard compression level may use, and at most zstd's own default
/// bound of 128 MiB.
fn window_log(limit: usize) -> u32 {
    (usize::BITS - (limit.max(1) - 1).leading_zeros()).clamp(23, 27)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn each_coding_round_trips() {
        let data = br#"{"model":"m","input":"hello"}"#.repeat(100);
        assert_eq!(decode(Coding::Gzip, &gzip(&data), 1 << 20).unwrap(), data);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        assert_eq!(decode(Coding::Deflate, &z.finish().unwrap(), 1 << 20).unwrap(), data);
        let zs = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert_eq!(decode(Coding::Zstd, &zs, 1 << 20).unwrap(), data);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 64 << 20];
        let g = gzip(&zeros);
        assert!(g.len() < 1 << 20, "64 MiB of zeros compress to {} bytes", g.len());
        assert_eq!(decode(Coding::Gzip, &g, 1 << 20), Err(DecodeError::TooLarge));
        let z = zstd::stream::encode_all(&zeros[..], 3).unwrap();
        assert_eq!(decode(Coding::Zstd, &z, 1 << 20), Err(DecodeError::TooLarge));
        // Exactly at the limit is fine.
        assert_eq!(decode(Coding::Gzip, &gzip(&zeros[..1 << 20]), 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn a_frame_asking_for_a_larger_window_than_the_limit_needs_is_refused() {
        let data = fastrand_bytes(3 << 20);
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.window_log(25).unwrap();
        e.long_distance_matching(true).unwrap();
        e.write_all(&data).unwrap();
        let z = e.finish().unwrap();
        assert!(matches!(decode(Coding::Zstd, &z, 4 << 20), Err(DecodeError::Invalid(_))));
        assert_eq!(decode(Coding::Zstd, &z, 32 << 20).unwrap(), data);
    }

    fn fastrand_bytes(n: usize) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(7);
        (0..n).map(|_| rng.u8(b'a'..=b'h')).collect()
    }

    #[test]
    fn garbage_and_names() {
        assert!(matches!(decode(Coding::Gzip, b"not gzip", 1024), Err(DecodeError::Invalid(_))));
        assert!(matches!(decode(Coding::Zstd, b"not zstd", 1024), Err(DecodeError::Invalid(_))));
        assert_eq!(Coding::parse(b" GZIP "), Coding::Gzip);
        assert_eq!(Coding::parse(b"identity"), Coding::Identity);
        assert_eq!(Coding::parse(b"gzip, zstd"), Coding::Unsupported);
        assert_eq!(Coding::parse(b"br"), Coding::Unsupported);
        assert_eq!(window_log(16 << 20), 24);
        assert_eq!(window_log(1), 23);
        assert_eq!(window_log(usize::MAX), 27);
    }
}
