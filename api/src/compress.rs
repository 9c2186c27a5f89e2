//! Response compression: zstd or gzip, whichever the client accepts (zstd first: smaller and
//! cheaper to make), for whole bodies and for bodies sent in pieces (each piece flushed, so
//! it can go on the wire at once).

use std::io::Write as _;

use axum::http::{HeaderMap, HeaderValue, header};

/// A content coding this server makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `Content-Encoding: zstd` (level 1).
    Zstd,
    /// `Content-Encoding: gzip` (level 1).
    Gzip,
}

/// zstd's level: its fastest regular one, still smaller than gzip's best here.
const ZSTD_LEVEL: i32 = 1;

impl Coding {
    /// The coding to answer `headers` with: of zstd and gzip, the one `Accept-Encoding`
    /// weighs highest (`q`, default 1; zstd on a tie), `*` standing for one not named; none
    /// when neither is acceptable (`q=0`, or not offered).
    pub fn negotiate(headers: &HeaderMap) -> Option<Coding> {
        let (mut zstd, mut gzip, mut any) = (None::<f32>, None::<f32>, None::<f32>);
        for enc in headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let mut it = enc.split(';').map(str::trim);
            let name = it.next().unwrap_or("");
            let q = it
                .find_map(|p| {
                    let p = p.replace(' ', "");
                    p.strip_prefix("q=")
                        .map(|q| q.parse::<f32>().unwrap_or(0.0))
                })
                .unwrap_or(1.0);
            let slot = if name.eq_ignore_ascii_case("zstd") {
                &mut zstd
            } else if name.eq_ignore_ascii_case("gzip") {
                &mut gzip
            } else if name == "*" {
                &mut any
            } else {
                continue;
            };
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
        // `*` speaks only for gzip here: zstd is made when it is asked for by name.
        let gzip = gzip.or(any).unwrap_or(0.0);
        let zstd = zstd.unwrap_or(0.0);
        if zstd > 0.0 && zstd >= gzip {
            Some(Coding::Zstd)
        } else if gzip > 0.0 {
            Some(Coding::Gzip)
        } else {
            None
        }
    }

    /// Its `Content-Encoding` value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        })
    }
}

/// `body` compressed whole.
///
/// # Errors
/// The encoder's (none in practice: it writes to memory).
pub fn compress(coding: Coding, body: &[u8]) -> std::io::Result<Vec<u8>> {
    ChunkEncoder::new(coding, body.len() / 8)?.finish(body)
}

/// Compresses a body piece by piece.
pub struct ChunkEncoder(Inner);

enum Inner {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl std::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Inner::Zstd(_) => "ChunkEncoder(zstd)",
            Inner::Gzip(_) => "ChunkEncoder(gzip)",
        })
    }
}

impl ChunkEncoder {
    /// A new stream in `coding`, its output buffer sized `capacity` to begin with.
    ///
    /// # Errors
    /// zstd's, when it cannot make a context.
    pub fn new(coding: Coding, capacity: usize) -> std::io::Result<Self> {
        let out = Vec::with_capacity(capacity);
        Ok(Self(match coding {
            Coding::Zstd => Inner::Zstd(zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?),
            Coding::Gzip => Inner::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::fast(),
            )),
        }))
    }

    /// `data` compressed and flushed: a piece the client can decode up to its end now.
    ///
    /// # Errors
    /// The encoder's.
    pub fn chunk(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match &mut self.0 {
            Inner::Zstd(z) => {
                z.write_all(data)?;
                z.flush()?;
                Ok(std::mem::take(z.get_mut()))
            }
            Inner::Gzip(z) => {
                z.write_all(data)?;
                z.flush()?;
                Ok(std::mem::take(z.get_mut()))
            }
        }
    }

    /// `data`, then the end of the stream.
    ///
    /// # Errors
    /// The encoder's.
    pub fn finish(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self.0 {
            Inner::Zstd(mut z) => {
                z.write_all(data)?;
                z.finish()
            }
            Inner::Gzip(mut z) => {
                z.write_all(data)?;
                z.finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn zstd_is_preferred_gzip_is_the_fallback_and_q0_refuses() {
        assert_eq!(
            Coding::negotiate(&accept("gzip, deflate, br, zstd")),
            Some(Coding::Zstd)
        );
        assert_eq!(Coding::negotiate(&accept("gzip")), Some(Coding::Gzip));
        assert_eq!(
            Coding::negotiate(&accept("zstd;q=0, gzip")),
            Some(Coding::Gzip)
        );
        assert_eq!(Coding::negotiate(&accept("zstd;q=0.0, gzip; q=0")), None);
        assert_eq!(Coding::negotiate(&accept("*")), Some(Coding::Gzip));
        assert_eq!(
            Coding::negotiate(&accept("gzip;q=0, *")),
            None,
            "q=0 beats *"
        );
        assert_eq!(
            Coding::negotiate(&accept("zstd;q=0.5, gzip;q=0.9")),
            Some(Coding::Gzip),
            "the higher weight"
        );
        assert_eq!(
            Coding::negotiate(&accept("gzip;q=0.9, zstd;q=0.9")),
            Some(Coding::Zstd)
        );
        assert_eq!(Coding::negotiate(&accept("br, identity")), None);
        assert_eq!(Coding::negotiate(&HeaderMap::new()), None);
    }

    #[test]
    fn pieces_decode_as_they_come_and_whole() {
        use std::io::Read as _;
        let parts: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("{{\"piece\":{i},\"pad\":\"{}\"}}\n", "x".repeat(3000)).into_bytes())
            .collect();
        let all = parts.concat();
        for coding in [Coding::Zstd, Coding::Gzip] {
            let mut enc = ChunkEncoder::new(coding, 0).unwrap();
            let mut wire = Vec::new();
            for p in &parts[..4] {
                wire.extend(enc.chunk(p).unwrap());
            }
            // What was sent so far decodes to the first four pieces already.
            let first = parts[..4].concat();
            let mut d = decoder(coding, &wire);
            let mut so_far = Vec::new();
            let mut buf = [0u8; 1024];
            while so_far.len() < first.len() {
                let n = d.read(&mut buf).unwrap();
                assert!(n > 0);
                so_far.extend_from_slice(&buf[..n]);
            }
            drop(d);
            assert_eq!(so_far, first, "{coding:?}");
            wire.extend(enc.finish(&parts[4]).unwrap());
            assert_eq!(decode_whole(coding, &wire), all, "{coding:?}");
            assert!(wire.len() < all.len() / 10, "{coding:?}: {}", wire.len());
            assert_eq!(decode_whole(coding, &compress(coding, &all).unwrap()), all);
        }
    }

    fn decoder(coding: Coding, data: &[u8]) -> Box<dyn std::io::Read + '_> {
        match coding {
            Coding::Zstd => Box::new(zstd::stream::read::Decoder::new(data).unwrap()),
            Coding::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
        }
    }

    fn decode_whole(coding: Coding, data: &[u8]) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = Vec::new();
        decoder(coding, data).read_to_end(&mut out).unwrap();
        out
    }
}
