//! A tar reader and writer with hard limits, for layers that may be hostile.
//!
//! The reader understands ustar, GNU (`L`/`K` long names, base-256 numbers)
//! and pax (`x` records: path, linkpath, size, uid, gid, mtime, xattrs). It
//! never holds more than one header's metadata in memory: long names are
//! capped at [`MAX_NAME`] and pax records at [`MAX_PAX`]. A stream that ends
//! inside a header or inside an entry's data is an error naming the entry.
//!
//! The writer produces deterministic ustar with pax records only where ustar
//! cannot say it (long names, big sizes), as `utter image build` needs.

use std::io::{self, Read, Write};

/// The longest path or link target accepted (GNU long names and pax).
pub const MAX_NAME: usize = 64 * 1024;
/// The largest pax extended header accepted.
pub const MAX_PAX: u64 = 1 << 20;

const BLOCK: usize = 512;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file with data.
    File,
    /// A directory.
    Dir,
    /// A symbolic link; [`Entry::link`] is its target.
    Symlink,
    /// A hard link to an earlier entry; [`Entry::link`] names it.
    Hardlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
}

/// One entry's header, everything resolved (pax and GNU names applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The member name as stored (bytes; not yet checked for safety).
    pub path: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Data bytes that follow (0 for everything but files).
    pub size: u64,
    /// Symlink target or hard link source.
    pub link: Vec<u8>,
    /// Device major and minor numbers.
    pub device: (u32, u32),
    /// Extended attributes from pax `SCHILY.xattr.` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Offset of the entry's header in the stream.
    pub offset: u64,
}

impl Entry {
    /// The path for messages: lossy UTF-8, control characters escaped.
    pub fn display_path(&self) -> String {
        display(&self.path)
    }
}

/// Bytes as text for error messages.
pub fn display(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

/// Why a tar stream cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The stream ended early.
    #[error(
        "{what} at byte {offset}: the archive ends {missing} bytes early (truncated or a header claims more data than there is)"
    )]
    Truncated {
        /// The entry (or "header") being read.
        what: String,
        /// Where the entry starts.
        offset: u64,
        /// Bytes that were promised and not delivered.
        missing: u64,
    },
    /// A header is damaged or not a tar header.
    #[error("header at byte {offset}: {reason}")]
    BadHeader {
        /// Where the header starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry uses a feature that utter refuses.
    #[error("entry `{path}` at byte {offset}: {reason}")]
    Unsupported {
        /// The entry.
        path: String,
        /// Where it starts.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// Reading failed.
    #[error("reading the archive at byte {offset}: {source}")]
    Io {
        /// Where reading failed.
        offset: u64,
        /// The cause.
        source: io::Error,
    },
}

/// Reads entries one after another from a stream.
pub struct Reader<R> {
    inner: R,
    /// Bytes consumed from `inner`.
    pos: u64,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    /// The current entry, for messages.
    current: Option<(String, u64)>,
    done: bool,
    skip: fn(&mut R, u64) -> io::Result<()>,
}

fn skip_by_reading<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn skip_by_seeking<R: Read + io::Seek>(r: &mut R, n: u64) -> io::Result<()> {
    let n = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    r.seek(io::SeekFrom::Current(n))?;
    Ok(())
}

impl<R: Read> Reader<R> {
    /// Reads `inner` from its current position.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            pos: 0,
            remaining: 0,
            padding: 0,
            current: None,
            done: false,
            skip: skip_by_reading::<R>,
        }
    }

    /// Bytes consumed from the stream so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Gives back the stream.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn io(&self, source: io::Error) -> TarError {
        TarError::Io {
            offset: self.pos,
            source,
        }
    }

    fn truncated(&self, missing: u64) -> TarError {
        let (what, offset) = match &self.current {
            Some((path, offset)) => (format!("entry `{path}`"), *offset),
            None => ("header".to_string(), self.pos),
        };
        TarError::Truncated {
            what,
            offset,
            missing,
        }
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before
    /// the first byte.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, TarError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(self.truncated((buf.len() - got) as u64)),
                Ok(n) => {
                    got += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(true)
    }

    fn skip_rest(&mut self) -> Result<(), TarError> {
        let n = self.remaining + self.padding;
        if n > 0 {
            let start = self.pos;
            match (self.skip)(&mut self.inner, n) {
                Ok(()) => {
                    self.pos += n;
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(self.truncated(n));
                }
                Err(e) => {
                    return Err(TarError::Io {
                        offset: start,
                        source: e,
                    });
                }
            }
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    /// Reads a metadata entry's data (long name or pax), capped at `limit`.
    fn read_meta(&mut self, size: u64, limit: u64, what: &str) -> Result<Vec<u8>, TarError> {
        if size > limit {
            return Err(TarError::BadHeader {
                offset: self.pos - BLOCK as u64,
                reason: format!("{what} of {size} bytes (at most {limit} accepted)"),
            });
        }
        let mut data = vec![0u8; size as usize];
        if !self.fill(&mut data)? && size > 0 {
            return Err(self.truncated(size));
        }
        self.remaining = 0;
        self.padding = pad(size);
        self.skip_rest()?;
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive. Data of the
    /// previous entry that was not read is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        self.current = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            let offset = self.pos;
            let mut h = [0u8; BLOCK];
            if !self.fill(&mut h)? {
                // EOF without end-of-archive blocks: accepted, as GNU tar does.
                self.done = true;
                return Ok(None);
            }
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            check_checksum(&h).map_err(|reason| TarError::BadHeader { offset, reason })?;
            let size = number(&h[124..136]).map_err(|reason| TarError::BadHeader {
                offset,
                reason: format!("size field: {reason}"),
            })?;
            let flag = h[156];
            match flag {
                b'L' => {
                    long_name = Some(trim_nul(&self.read_meta(
                        size,
                        MAX_NAME as u64,
                        "long name",
                    )?));
                    continue;
                }
                b'K' => {
                    long_link = Some(trim_nul(&self.read_meta(
                        size,
                        MAX_NAME as u64,
                        "long link",
                    )?));
                    continue;
                }
                b'x' => {
                    let data = self.read_meta(size, MAX_PAX, "pax header")?;
                    pax = parse_pax(&data)
                        .map_err(|reason| TarError::BadHeader { offset, reason })?;
                    continue;
                }
                b'g' => {
                    // Global pax headers carry defaults no layer tool relies on.
                    self.read_meta(size, MAX_PAX, "global pax header")?;
                    continue;
                }
                _ => {}
            }
            let mut entry = parse_header(&h, offset)?;
            if let Some(name) = long_name.take() {
                entry.path = name;
            }
            if let Some(link) = long_link.take() {
                entry.link = link;
            }
            let mut size = size;
            for (key, value) in pax.drain(..) {
                let text = || String::from_utf8_lossy(&value).into_owned();
                let num = |what: &str| -> Result<u64, TarError> {
                    text().parse::<u64>().map_err(|_| TarError::BadHeader {
                        offset,
                        reason: format!("pax {what} `{}` is not a number", text()),
                    })
                };
                match key.as_str() {
                    "path" => entry.path = value,
                    "linkpath" => entry.link = value,
                    "size" => size = num("size")?,
                    "uid" => entry.uid = num("uid")?,
                    "gid" => entry.gid = num("gid")?,
                    "mtime" => {
                        let t = text();
                        let whole = t.split('.').next().unwrap_or("");
                        entry.mtime = whole.parse().map_err(|_| TarError::BadHeader {
                            offset,
                            reason: format!("pax mtime `{t}` is not a time"),
                        })?;
                    }
                    k if k.starts_with("SCHILY.xattr.") => {
                        entry
                            .xattrs
                            .push((k["SCHILY.xattr.".len()..].to_string(), value));
                    }
                    k if k.starts_with("GNU.sparse.") => {
                        return Err(TarError::Unsupported {
                            path: entry.display_path(),
                            offset,
                            reason: "sparse files are not supported".into(),
                        });
                    }
                    _ => {}
                }
            }
            if entry.path.len() > MAX_NAME || entry.link.len() > MAX_NAME {
                return Err(TarError::BadHeader {
                    offset,
                    reason: format!("a name longer than {MAX_NAME} bytes"),
                });
            }
            if flag == b'S' {
                return Err(TarError::Unsupported {
                    path: entry.display_path(),
                    offset,
                    reason: "GNU sparse files are not supported".into(),
                });
            }
            entry.size = if entry.kind == Kind::File { size } else { 0 };
            // Only files carry data; a size on anything else is skipped.
            self.remaining = size;
            self.padding = pad(size);
            if entry.kind != Kind::File {
                self.skip_rest()?;
            }
            self.current = Some((entry.display_path(), offset));
            return Ok(Some(entry));
        }
    }

    /// Reads the current entry's data.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }
}

impl<R: Read + io::Seek> Reader<R> {
    /// Like [`Reader::new`], skipping unread data by seeking.
    pub fn new_seekable(inner: R) -> Self {
        let mut r = Self::new(inner);
        r.skip = skip_by_seeking::<R>;
        r
    }
}

/// The data of the current entry.
pub struct EntryData<'a, R> {
    reader: &'a mut Reader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.reader;
        if r.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(r.remaining).unwrap_or(usize::MAX));
        let n = r.inner.read(&mut buf[..want])?;
        if n == 0 {
            let e = r.truncated(r.remaining);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e.to_string()));
        }
        r.remaining -= n as u64;
        r.pos += n as u64;
        Ok(n)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn trim_nul(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

fn check_checksum(h: &[u8; BLOCK]) -> Result<(), String> {
    let stored = number(&h[148..156]).map_err(|e| format!("checksum field: {e}"))?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).ok() == Some(signed) {
        Ok(())
    } else {
        Err(format!(
            "checksum {stored} does not match the header ({unsigned}): not a tar header, or damaged"
        ))
    }
}

/// An octal (NUL/space padded) or base-256 number field.
fn number(field: &[u8]) -> Result<u64, String> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        if first == 0xff {
            return Err("negative base-256 number".into());
        }
        let mut n: u64 = u64::from(first & 0x7f);
        for &b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(b)))
                .ok_or("base-256 number too large")?;
        }
        return Ok(n);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let mut n: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!("`{}` is not an octal number", display(field)));
        }
        n = n
            .checked_mul(8)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or("octal number too large")?;
    }
    Ok(n)
}

fn parse_header(h: &[u8; BLOCK], offset: u64) -> Result<Entry, TarError> {
    let bad = |reason: String| TarError::BadHeader { offset, reason };
    let field = |range: std::ops::Range<usize>, what: &str| {
        number(&h[range]).map_err(|e| bad(format!("{what} field: {e}")))
    };
    let name = trim_nul(&h[0..100]);
    let ustar = &h[257..263] == b"ustar\0";
    let path = if ustar && h[345] != 0 {
        let mut p = trim_nul(&h[345..500]);
        p.push(b'/');
        p.extend_from_slice(&name);
        p
    } else {
        name
    };
    let flag = h[156];
    let kind = match flag {
        b'0' | 0 | b'7' => {
            if path.ends_with(b"/") {
                Kind::Dir // old tars mark directories only by the slash
            } else {
                Kind::File
            }
        }
        b'1' => Kind::Hardlink,
        b'2' => Kind::Symlink,
        b'3' => Kind::Char,
        b'4' => Kind::Block,
        b'5' => Kind::Dir,
        b'6' => Kind::Fifo,
        b'S' => Kind::File, // refused by the caller with the entry's name
        other => {
            return Err(TarError::Unsupported {
                path: display(&path),
                offset,
                reason: format!("unknown entry type `{}`", display(&[other])),
            });
        }
    };
    let mode = u32::try_from(field(100..108, "mode")? & 0o7777).unwrap_or(0);
    let mtime = i64::try_from(field(136..148, "mtime")?).unwrap_or(i64::MAX);
    let (major, minor) = if matches!(kind, Kind::Char | Kind::Block) {
        (field(329..337, "devmajor")?, field(337..345, "devminor")?)
    } else {
        (0, 0)
    };
    Ok(Entry {
        path,
        kind,
        mode,
        uid: field(108..116, "uid")?,
        gid: field(116..124, "gid")?,
        mtime,
        size: 0,
        link: trim_nul(&h[157..257]),
        device: (
            u32::try_from(major).unwrap_or(u32::MAX),
            u32::try_from(minor).unwrap_or(u32::MAX),
        ),
        xattrs: Vec::new(),
        offset,
    })
}

/// Parses pax records `"<len> <key>=<value>\n"`.
fn parse_pax(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("pax record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("pax record length is not a number")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("pax record length does not fit its record".into());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("pax record without `=`")?;
        let key = String::from_utf8(record[..eq].to_vec()).map_err(|_| "pax key is not UTF-8")?;
        out.push((key, record[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// One entry to write.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    /// Member name; directories should end with `/`.
    pub path: &'a [u8],
    /// What it is ([`Kind::File`], [`Kind::Dir`], [`Kind::Symlink`],
    /// [`Kind::Hardlink`], [`Kind::Fifo`]).
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time.
    pub mtime: u64,
    /// Data length for files.
    pub size: u64,
    /// Symlink target or hard link source.
    pub link: &'a [u8],
}

impl<'a> Header<'a> {
    /// A regular file entry: mode 0644, owner 0:0, time 0, no data. Set the
    /// other fields with struct update syntax.
    pub fn file(path: &'a [u8]) -> Self {
        Self {
            path,
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            link: b"",
        }
    }
}

/// Writes a deterministic tar stream.
pub struct Writer<W> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Writes one entry; for files, exactly `header.size` bytes of `data`.
    pub fn append(&mut self, header: &Header<'_>, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut pax = Vec::new();
        let (prefix, name) = match split_ustar_name(header.path) {
            Some(split) => split,
            None => {
                pax_record(&mut pax, "path", header.path);
                (&b""[..], &header.path[..header.path.len().min(100)])
            }
        };
        if header.link.len() > 100 {
            pax_record(&mut pax, "linkpath", header.link);
        }
        if header.size >= 0o77777777777 {
            pax_record(&mut pax, "size", header.size.to_string().as_bytes());
        }
        if !pax.is_empty() {
            let h = ustar_header(
                b"",
                b"././@PaxHeader",
                b'x',
                0o644,
                0,
                0,
                0,
                pax.len() as u64,
                b"",
            );
            self.out.write_all(&h)?;
            self.out.write_all(&pax)?;
            self.out
                .write_all(&[0u8; BLOCK][..pad(pax.len() as u64) as usize])?;
        }
        let flag = match header.kind {
            Kind::File => b'0',
            Kind::Hardlink => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        };
        let size = if header.kind == Kind::File {
            header.size
        } else {
            0
        };
        let link = &header.link[..header.link.len().min(100)];
        let h = ustar_header(
            prefix,
            name,
            flag,
            header.mode,
            header.uid,
            header.gid,
            header.mtime,
            size,
            link,
        );
        self.out.write_all(&h)?;
        if size > 0 {
            let data = data.ok_or_else(|| io::Error::other("a file entry needs its data"))?;
            let copied = io::copy(&mut data.take(size), &mut self.out)?;
            if copied != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "`{}` changed while it was read ({copied} of {size} bytes)",
                        display(header.path)
                    ),
                ));
            }
            self.out.write_all(&[0u8; BLOCK][..pad(size) as usize])?;
        }
        Ok(())
    }

    /// Writes the end-of-archive blocks and returns the stream.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

/// Splits a name into ustar prefix (≤155) and name (≤100) at a slash.
fn split_ustar_name(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if !path.is_ascii() {
        return None; // pax carries UTF-8 names unambiguously
    }
    if path.len() <= 100 {
        return Some((b"", path));
    }
    let body = path.strip_suffix(b"/").unwrap_or(path);
    (0..body.len())
        .rev()
        .filter(|&i| body[i] == b'/')
        .map(|i| (&path[..i], &path[i + 1..]))
        .find(|(p, n)| p.len() <= 155 && n.len() <= 100 && !n.is_empty())
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // The length counts itself; find the fixed point.
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let text = text.as_bytes();
    let start = text.len().saturating_sub(digits);
    field[..digits].copy_from_slice(&text[start..]);
    field[digits] = 0;
}

#[allow(clippy::too_many_arguments)]
fn ustar_header(
    prefix: &[u8],
    name: &[u8],
    flag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: &[u8],
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], uid.min(0o7777777));
    octal(&mut h[116..124], gid.min(0o7777777));
    octal(&mut h[124..136], size.min(0o77777777777));
    octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, TarError> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut data = Vec::new();
            r.data()
                .read_to_end(&mut data)
                .map_err(|source| TarError::Io { offset: 0, source })?;
            out.push((e, data));
        }
        Ok(out)
    }

    fn file(path: &[u8], size: u64) -> Header<'_> {
        Header {
            size,
            ..Header::file(path)
        }
    }

    #[test]
    fn round_trips_long_names_and_links() {
        let long = "d/".repeat(120) + "file";
        let target = "t".repeat(300);
        let mut w = Writer::new(Vec::new());
        w.append(&file(long.as_bytes(), 5), Some(&mut &b"hello"[..]))
            .expect("append");
        w.append(
            &Header {
                kind: Kind::Symlink,
                link: target.as_bytes(),
                ..file(b"link", 0)
            },
            None,
        )
        .expect("append");
        w.append(&file("ünïcode".as_bytes(), 0), None)
            .expect("append");
        let bytes = w.finish().expect("finish");
        let got = entries(&bytes).expect("read back");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.path, long.as_bytes());
        assert_eq!(got[0].1, b"hello");
        assert_eq!(got[1].0.link, target.as_bytes());
        assert_eq!(got[1].0.kind, Kind::Symlink);
        assert_eq!(got[2].0.path, "ünïcode".as_bytes());
    }

    #[test]
    fn gnu_tar_reads_what_we_write() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let long = "x/".repeat(90) + "f";
        let mut w = Writer::new(Vec::new());
        w.append(&file(long.as_bytes(), 3), Some(&mut &b"abc"[..]))?;
        let archive = dir.path().join("a.tar");
        std::fs::write(&archive, w.finish()?)?;
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&archive)
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&long));
        Ok(())
    }

    #[test]
    fn truncated_data_names_the_entry() {
        let mut w = Writer::new(Vec::new());
        w.append(&file(b"big", 4096), Some(&mut &[7u8; 4096][..]))
            .expect("append");
        let bytes = w.finish().expect("finish");
        let cut = &bytes[..512 + 1000];
        let err = entries(cut).expect_err("must fail");
        assert!(err.to_string().contains("big"), "{err}");
        // Cut inside a header.
        let err = entries(&bytes[..300]).expect_err("must fail");
        assert!(matches!(err, TarError::Truncated { .. }), "{err}");
    }

    #[test]
    fn huge_long_name_is_refused_without_reading_it() {
        let mut h = ustar_header(b"", b"././@LongLink", b'L', 0, 0, 0, 0, 1 << 40, b"");
        // Re-checksum after changing nothing: the header is valid as built.
        let mut stream = h.to_vec();
        stream.extend_from_slice(&[b'a'; 1024]);
        let err = entries(&stream).expect_err("must fail");
        assert!(err.to_string().contains("long name"), "{err}");
        h[0] = b'z'; // damage: checksum no longer matches
        let err = entries(&h).expect_err("must fail");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn pax_lengths_are_self_consistent() {
        for n in [0, 1, 5, 90, 95, 96, 97, 98, 990, 995, 996] {
            let mut out = Vec::new();
            let value = vec![b'v'; n];
            pax_record(&mut out, "path", &value);
            let parsed = parse_pax(&out).expect("parses");
            assert_eq!(parsed, vec![("path".to_string(), value)]);
        }
    }
}
