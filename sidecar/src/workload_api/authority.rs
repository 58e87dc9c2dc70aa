//! Lets gRPC clients that name a Unix socket by its path reach the Workload API.
//!
//! gRPC's C core (the Python `grpcio` that py-spiffe uses, C++, Ruby, PHP) sends the socket
//! path, percent-encoded, as the `:authority` of every request on a `unix:` target
//! (`%2Frun%2Fagent.sock`); grpc-java sends the bare path. Neither is a `host[:port]`, and
//! h2 (under tonic and hyper) resets such a stream with PROTOCOL_ERROR before any handler
//! runs; no h2, hyper or tonic option relaxes that check. SPIRE's agent (grpc-go) accepts
//! these clients, so the sidecar must too.
//!
//! [`AuthorityFix`] sits between the socket and h2 and rewrites what the client sends:
//! every HTTP/2 frame passes unchanged except header blocks (HEADERS and its CONTINUATIONs),
//! which are decoded with the client's HPACK state (RFC 7541) and encoded again, each header
//! a literal without indexing, with an `:authority` that is not a valid authority replaced
//! by `localhost`. Because no header is indexed on the way to h2, h2's own HPACK table stays
//! empty and cannot disagree with the client's. What the server sends passes untouched.
//! The Workload API never reads the authority; the security header is checked as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::Decoder;
use loona_hpack::encoder::encode_integer_into;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types and flags (RFC 9113, sections 6.2 and 6.10).
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Largest frame payload h2 accepts: SETTINGS_MAX_FRAME_SIZE's initial value, which the
/// server keeps (tonic does not raise it). Re-encoded blocks are split to fit.
const MAX_FRAME: usize = 16_384;

/// The HPACK dynamic table size the client may use: the initial 4,096 bytes, because the
/// server never sends SETTINGS_HEADER_TABLE_SIZE (tonic does not set it).
const HPACK_TABLE: usize = 4_096;

/// The most header-block bytes held while waiting for its last CONTINUATION. Workload API
/// requests carry a handful of short headers; this bounds what a client can make us hold.
const MAX_BLOCK: usize = 64 * 1024;

/// What replaces an `:authority` h2 would refuse: what gRPC clients used to send on a
/// Unix socket, and what grpc-go still sends.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// A server-side stream whose incoming HTTP/2 header blocks are rewritten as described in
/// the module documentation.
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    /// Bytes from the client not yet handled (an incomplete frame, at most).
    raw: Vec<u8>,
    /// Bytes ready for h2, from `ready_at` on.
    ready: Vec<u8>,
    ready_at: usize,
    phase: Phase,
    /// Payload bytes of the current frame still to pass through unchanged.
    copying: usize,
    block: Option<Block>,
    decoder: HpackDecoder,
    eof: bool,
}

#[derive(Debug, PartialEq)]
enum Phase {
    Preface,
    Frames,
    /// Not HTTP/2 with prior knowledge: everything goes to h2, which refuses it.
    Opaque,
}

/// A header block waiting for its END_HEADERS.
#[derive(Debug)]
struct Block {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client's HPACK state (without `Debug` of its own; it holds header values).
struct HpackDecoder(Decoder<'static>);

impl std::fmt::Debug for HpackDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HpackDecoder")
    }
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE);
        Self {
            inner,
            raw: Vec::new(),
            ready: Vec::new(),
            ready_at: 0,
            phase: Phase::Preface,
            copying: 0,
            block: None,
            decoder: HpackDecoder(decoder),
            eof: false,
        }
    }

    /// Moves every complete unit of `raw` to `ready`, rewriting header blocks.
    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.copying > 0 {
                let n = self.copying.min(self.raw.len());
                self.ready.extend(self.raw.drain(..n));
                self.copying -= n;
                if self.copying > 0 {
                    return Ok(());
                }
            }
            match self.phase {
                Phase::Opaque => {
                    self.ready.append(&mut self.raw);
                    return Ok(());
                }
                Phase::Preface => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        self.phase = Phase::Opaque;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.ready.extend(self.raw.drain(..n));
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    if !self.frame()? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handles the frame at the start of `raw`; false if more bytes are needed first.
    fn frame(&mut self) -> io::Result<bool> {
        let Some(head) = self.raw.get(..9) else {
            return Ok(false);
        };
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = [head[5], head[6], head[7], head[8]];
        if kind != HEADERS && kind != CONTINUATION {
            if self.block.is_some() {
                return Err(invalid("a header block was interrupted by another frame"));
            }
            self.ready.extend(self.raw.drain(..9));
            self.copying = len;
            return Ok(true);
        }
        if len > MAX_BLOCK {
            return Err(invalid("header block too large"));
        }
        if self.raw.len() < 9 + len {
            return Ok(false);
        }
        let payload: Vec<u8> = self.raw.drain(..9 + len).skip(9).collect();
        if kind == HEADERS {
            self.headers(flags, stream, &payload)?;
        } else {
            let block = self
                .block
                .as_mut()
                .filter(|b| b.stream == stream)
                .ok_or_else(|| invalid("CONTINUATION without its HEADERS"))?;
            if block.fragment.len() + payload.len() > MAX_BLOCK {
                return Err(invalid("header block too large"));
            }
            block.fragment.extend_from_slice(&payload);
        }
        if flags & END_HEADERS != 0 {
            self.finish()?;
        }
        Ok(true)
    }

    /// Starts a header block from a HEADERS frame's payload (RFC 9113, section 6.2).
    fn headers(&mut self, flags: u8, stream: [u8; 4], payload: &[u8]) -> io::Result<()> {
        if self.block.is_some() {
            return Err(invalid("a header block was interrupted by HEADERS"));
        }
        let mut rest = payload;
        let mut padding = 0;
        if flags & PADDED != 0 {
            let (&pad, tail) = rest.split_first().ok_or_else(|| invalid("short HEADERS"))?;
            padding = usize::from(pad);
            rest = tail;
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            let (fields, tail) = rest
                .split_first_chunk::<5>()
                .ok_or_else(|| invalid("short HEADERS"))?;
            priority = Some(*fields);
            rest = tail;
        }
        let fragment = rest
            .get(
                ..rest
                    .len()
                    .checked_sub(padding)
                    .ok_or_else(|| invalid("bad padding"))?,
            )
            .unwrap_or_default();
        self.block = Some(Block {
            stream,
            end_stream: flags & END_STREAM != 0,
            priority,
            fragment: fragment.to_vec(),
        });
        Ok(())
    }

    /// Decodes the finished block and queues it again, re-encoded, as HEADERS (and
    /// CONTINUATION frames if it no longer fits one frame).
    fn finish(&mut self) -> io::Result<()> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        let mut rewrote = false;
        self.decoder
            .0
            .decode_with_cb(&block.fragment, |name, value| {
                let value: &[u8] = if name.as_ref() == b":authority"
                    && http::uri::Authority::try_from(value.as_ref()).is_err()
                {
                    rewrote = true;
                    LOCAL_AUTHORITY
                } else {
                    value.as_ref()
                };
                literal(&name, value, &mut encoded);
            })
            .map_err(|e| invalid(&format!("HPACK: {e}")))?;
        if rewrote {
            tracing::trace!("Workload API: a path-like :authority read as localhost");
        }

        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        let mut first_room = MAX_FRAME;
        if block.priority.is_some() {
            flags |= PRIORITY;
            first_room -= 5;
        }
        let (first, mut rest) = encoded.split_at(first_room.min(encoded.len()));
        let last = rest.is_empty();
        let mut payload = block.priority.map(Vec::from).unwrap_or_default();
        payload.extend_from_slice(first);
        self.emit(
            HEADERS,
            flags | if last { END_HEADERS } else { 0 },
            block.stream,
            &payload,
        );
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(MAX_FRAME.min(rest.len()));
            rest = tail;
            let end = if rest.is_empty() { END_HEADERS } else { 0 };
            self.emit(CONTINUATION, end, block.stream, chunk);
        }
        Ok(())
    }

    fn emit(&mut self, kind: u8, flags: u8, stream: [u8; 4], payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("frames are split below 16 KiB");
        self.ready.extend_from_slice(&len.to_be_bytes()[1..]);
        self.ready.extend_from_slice(&[kind, flags]);
        self.ready.extend_from_slice(&stream);
        self.ready.extend_from_slice(payload);
    }
}

/// One header as a literal without indexing, new name (RFC 7541, section 6.2.2), no
/// Huffman coding.
fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    for s in [name, value] {
        // Writing into a Vec cannot fail.
        let _ = encode_integer_into(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("Workload API connection: malformed HTTP/2 from the client: {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // An unfinished frame at the end is h2's to report, not ours.
                this.eof = true;
                this.ready.append(&mut this.raw);
                continue;
            }
            this.raw.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(payload.len()).expect("len").to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Splits `bytes` into frames: (type, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn request(authority: &[u8], extra: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
            (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
            (b"x-padding".to_vec(), vec![b'a'; extra]),
        ]
    }

    /// An HPACK string literal, not Huffman coded.
    fn string(s: &[u8], out: &mut Vec<u8>) {
        encode_integer_into(s.len(), 7, 0, out).expect("vec");
        out.extend_from_slice(s);
    }

    /// `request(authority, extra)` as a client with an HPACK table would send it: the
    /// authority and the security header added to the dynamic table when `first`, and
    /// referred to by index (62, 63) otherwise.
    fn encoded(authority: &[u8], extra: usize, first: bool) -> Vec<u8> {
        let mut out = vec![0x80 | 3, 0x80 | 6, 0x04]; // POST, http, :path by static name
        string(b"/SpiffeWorkloadAPI/FetchX509SVID", &mut out);
        if first {
            out.push(0x40 | 1); // :authority, incremental indexing
            string(authority, &mut out);
            out.push(0x40); // new name, incremental indexing
            string(b"workload.spiffe.io", &mut out);
            string(b"true", &mut out);
        } else {
            out.extend_from_slice(&[0x80 | 63, 0x80 | 62]);
        }
        out.push(0x10); // never indexed, new name
        string(b"x-padding", &mut out);
        string(&vec![b'a'; extra], &mut out);
        out
    }

    /// What a C-core client sends, through the filter, as h2 would decode it: three
    /// requests sharing one HPACK table (the second refers to the first's entries), one
    /// padded with a priority and split over a CONTINUATION, one too big for one frame
    /// once re-encoded, a DATA frame between them passed through byte for byte.
    #[tokio::test]
    async fn authorities_are_rewritten_and_everything_else_kept() {
        let path_authority: &[u8] = b"%2Frun%2Ftrellis%2Fagent.sock";
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS

        let first = request(path_authority, 0);
        let block = encoded(path_authority, 0, true);
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 15]); // priority
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0; 3]);
        wire.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\0");
        wire.extend(&data);

        let second = request(path_authority, 0);
        let block = encoded(path_authority, 0, false);
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block));

        let third = request(b"localhost:1234", MAX_FRAME);
        let mut block = vec![0x80 | 3, 0x80 | 6, 0x04];
        string(b"/SpiffeWorkloadAPI/FetchX509SVID", &mut block);
        block.push(0x01); // :authority, without indexing
        string(b"localhost:1234", &mut block);
        block.extend_from_slice(&[0x80 | 62]);
        block.push(0x00);
        string(b"x-padding", &mut block);
        string(&vec![b'a'; MAX_FRAME], &mut block);
        wire.extend(frame(HEADERS, END_HEADERS, 5, &block));

        let (mut client, server) = tokio::io::duplex(1024);
        let mut fix = AuthorityFix::new(server);
        let writer = tokio::spawn(async move {
            client.write_all(&wire).await.expect("write");
            client.shutdown().await.expect("shutdown");
            client
        });
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.expect("read");
        writer.await.expect("writer");

        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let got = frames(&out[PREFACE.len()..]);
        let mut h2 = Decoder::new();
        let mut decode = |block: &[u8]| h2.decode(block).expect("h2 decodes it");
        let kinds: Vec<(u8, u8, u32)> = got.iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(
            kinds,
            vec![
                (0x4, 0, 0),
                (HEADERS, PRIORITY | END_HEADERS, 1),
                (0x0, END_STREAM, 1),
                (HEADERS, END_STREAM | END_HEADERS, 3),
                (HEADERS, 0, 5),
                (CONTINUATION, END_HEADERS, 5),
            ]
        );
        assert_eq!(&got[1].3[..5], &[0, 0, 0, 0, 15], "priority kept");
        let expect_local = |mut headers: Vec<(Vec<u8>, Vec<u8>)>| {
            headers[3].1 = LOCAL_AUTHORITY.to_vec();
            headers
        };
        assert_eq!(decode(&got[1].3[5..]), expect_local(first));
        assert_eq!(frame(got[2].0, got[2].1, got[2].2, &got[2].3), data);
        assert_eq!(decode(&got[3].3), expect_local(second));
        let mut big = got[4].3.clone();
        big.extend_from_slice(&got[5].3);
        assert!(got[4].3.len() == MAX_FRAME, "split at the frame size");
        assert_eq!(decode(&big), third, "a valid authority is kept");
    }

    #[tokio::test]
    async fn not_http2_passes_through_for_h2_to_refuse() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut fix = AuthorityFix::new(server);
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        drop(client);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_broken_header_block_is_an_error() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut fix = AuthorityFix::new(server);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0x0f],
        ));
        client.write_all(&wire).await.expect("write");
        drop(client);
        let mut out = Vec::new();
        let err = fix.read_to_end(&mut out).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
