//! A zip writer for stored (uncompressed) entries appended to an executable, with each entry's
//! data at a chosen alignment from the start of the file, ZIP64 records when a size, offset or
//! count needs them, and the bytes copied by the kernel (`copy_file_range`, reflinks where the
//! filesystem has them) skipping holes of sparse inputs.
//!
//! Why not the `zip` crate's writer (which the runtime uses to *read*): its alignment is a u16
//! (at most 65535, so 64 KiB alignment cannot be asked for), it writes entry data through its
//! own `Write` path (no `copy_file_range`, no holes), and we need offsets that count the
//! executable in front of the zip. The format written here is the plain one: local header,
//! data, central directory, [ZIP64 end record and locator], end record; offsets absolute.

use anyhow::{bail, Context};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Offsets and sizes at or above this go in ZIP64 extra fields.
const ZIP64_LIMIT: u64 = 0xFFFF_FFFF;
/// 1980-01-01 00:00:00 in DOS format: the output does not depend on when it was made.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;
/// "Made by" Unix, spec version 4.5 (ZIP64).
const VERSION_MADE_BY: u16 = (3 << 8) | 45;
/// Regular file, rw-r--r--, in the high half of the external attributes.
const EXTERNAL_ATTR: u32 = 0o100644 << 16;

/// What was written for one entry.
#[derive(Clone, Debug)]
pub struct EntryInfo {
    pub name: String,
    /// Absolute offset of the local header.
    pub header_offset: u64,
    /// Absolute offset of the first data byte.
    pub data_offset: u64,
    pub size: u64,
    pub crc32: u32,
}

/// Called with (bytes done, bytes total) while an entry is checksummed and copied.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Appends stored entries to `file` from its current end, then the central directory.
pub struct ZipWriter {
    file: File,
    pos: u64,
    entries: Vec<EntryInfo>,
}

/// Where a stored entry's bytes come from.
pub enum Source<'a> {
    /// `len` bytes of `file` from `offset` (a whole file, or a GGUF inside a llamafile).
    Range {
        file: &'a File,
        offset: u64,
        len: u64,
    },
    Bytes(&'a [u8]),
}

impl ZipWriter {
    /// Entries will be appended at `file`'s current length.
    pub fn new(file: File) -> anyhow::Result<ZipWriter> {
        let pos = file.metadata().context("cannot stat the output")?.len();
        Ok(ZipWriter { file, pos, entries: Vec::new() })
    }

    /// The entries written so far.
    pub fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }

    /// Add the whole file at `path` as a stored entry whose data starts at a multiple of `align`
    /// (1 = anywhere) from the start of the output.
    pub fn add_stored_entry(&mut self, name: &str, path: &Path, align: u64) -> anyhow::Result<EntryInfo> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = f.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
        self.add_stored(name, Source::Range { file: &f, offset: 0, len }, align, &mut |_, _| {})
    }

    /// The output being written (to read back what is already in it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Add a stored entry from `src`, its data at a multiple of `align` from the start of the file.
    pub fn add_stored(&mut self, name: &str, src: Source, align: u64, progress: Progress) -> anyhow::Result<EntryInfo> {
        self.add(name, src, align, None, progress)
    }

    /// As [`ZipWriter::add_stored`], for bytes whose CRC-32 is already known (an entry copied
    /// from another zip): the bytes are then only copied, never read here, so copying a 5 GB
    /// entry costs what `copy_file_range` costs. A CRC that was wrong stays wrong, and
    /// `llamafile --verify` finds it as it would have in the original.
    pub fn add_stored_with_crc(
        &mut self,
        name: &str,
        src: Source,
        align: u64,
        crc32: u32,
        progress: Progress,
    ) -> anyhow::Result<EntryInfo> {
        self.add(name, src, align, Some(crc32), progress)
    }

    fn add(
        &mut self,
        name: &str,
        src: Source,
        align: u64,
        known_crc: Option<u32>,
        progress: Progress,
    ) -> anyhow::Result<EntryInfo> {
        self.check_new_entry(name, align)?;
        let size = match &src {
            Source::Range { len, .. } => *len,
            Source::Bytes(b) => b.len() as u64,
        };
        let crc32 = match (&src, known_crc) {
            (_, Some(crc)) => crc,
            (Source::Range { file, offset, len }, None) => crc32_of_range(file, *offset, *len, progress)?,
            (Source::Bytes(b), None) => crc32fast::hash(b),
        };
        let (header_offset, data_offset, h) = self.local_header(name, size, crc32, align)?;
        self.file.write_all_at(&h, header_offset).context("cannot write the output")?;
        match src {
            Source::Range { file, offset, len } => copy_range(file, offset, len, &self.file, data_offset, progress)?,
            Source::Bytes(b) => self.file.write_all_at(b, data_offset).context("cannot write the output")?,
        }
        self.pos = data_offset + size;
        let e = EntryInfo { name: name.to_string(), header_offset, data_offset, size, crc32 };
        self.entries.push(e.clone());
        Ok(e)
    }

    /// Where the next entry's local header and data go (data at a multiple of `align`), and the
    /// header's bytes; the zeros of the gap before the header are written here.
    fn local_header(&mut self, name: &str, size: u64, crc32: u32, align: u64) -> anyhow::Result<(u64, u64, Vec<u8>)> {
        let zip64 = size >= ZIP64_LIMIT;
        // Local header: signature, version needed, flags, method, time, date, crc, sizes,
        // name length, extra length; then the name and the ZIP64 extra (both sizes).
        let extra_len = if zip64 { 20 } else { 0 };
        let fixed = 30 + name.len() as u64 + extra_len;
        // Zero bytes before the local header put its data on the boundary. (Readers find entries
        // through the central directory; an extra-field pad cannot always be used, since a pad
        // shorter than its 4-byte field header would need a whole extra alignment unit.)
        let gap = (align - (self.pos + fixed) % align) % align;
        let header_offset = self.pos + gap;
        let data_offset = header_offset + fixed;
        let mut h = Vec::with_capacity(fixed as usize);
        put32(&mut h, 0x0403_4b50);
        put16(&mut h, if zip64 { 45 } else { 20 });
        put16(&mut h, utf8_flag(name));
        put16(&mut h, 0); // stored
        put16(&mut h, DOS_TIME);
        put16(&mut h, DOS_DATE);
        put32(&mut h, crc32);
        let small = if zip64 { ZIP64_LIMIT as u32 } else { size as u32 };
        put32(&mut h, small);
        put32(&mut h, small);
        put16(&mut h, name.len() as u16);
        put16(&mut h, extra_len as u16);
        h.extend_from_slice(name.as_bytes());
        if zip64 {
            put16(&mut h, 0x0001);
            put16(&mut h, 16);
            put64(&mut h, size);
            put64(&mut h, size);
        }
        if gap > 0 {
            // Write the gap's zeros explicitly so the file has no hole there.
            self.file.write_all_at(&vec![0u8; gap as usize], self.pos).context("cannot write the output")?;
        }
        Ok((header_offset, data_offset, h))
    }

    /// Add a stored entry of exactly `size` bytes that `produce` writes in order (a file made
    /// while it is packed, such as a model being quantized); the CRC-32 is taken on the way and
    /// the local header written last. Fails if `produce` writes another number of bytes.
    pub fn add_stored_streamed(
        &mut self,
        name: &str,
        size: u64,
        align: u64,
        produce: &mut dyn FnMut(&mut dyn Write) -> anyhow::Result<()>,
    ) -> anyhow::Result<EntryInfo> {
        self.check_new_entry(name, align)?;
        // The header's length depends only on the name and the size: lay it out now with a
        // placeholder CRC, write the data after it, then the real header.
        let (header_offset, data_offset, _) = self.local_header(name, size, 0, align)?;
        let mut sink = CrcSink { file: &self.file, pos: data_offset, written: 0, crc: crc32fast::Hasher::new() };
        produce(&mut sink)?;
        let (written, crc32) = (sink.written, sink.crc.finalize());
        if written != size {
            bail!("zip entry '{name}': {written} bytes written where {size} were announced");
        }
        let (h_off, d_off, h) = self.local_header(name, size, crc32, align)?;
        debug_assert_eq!((h_off, d_off), (header_offset, data_offset));
        self.file.write_all_at(&h, header_offset).context("cannot write the output")?;
        self.pos = data_offset + size;
        let e = EntryInfo { name: name.to_string(), header_offset, data_offset, size, crc32 };
        self.entries.push(e.clone());
        Ok(e)
    }

    /// A new entry's name and alignment are valid.
    fn check_new_entry(&self, name: &str, align: u64) -> anyhow::Result<()> {
        if name.is_empty() || name.len() > 0xFFFF {
            bail!("zip entry name must be 1 to 65535 bytes, got {}", name.len());
        }
        if self.entries.iter().any(|e| e.name == name) {
            bail!("zip entry '{name}' added twice");
        }
        if align == 0 || !align.is_power_of_two() {
            bail!("alignment must be a power of two, got {align}");
        }
        Ok(())
    }

    /// Write the central directory and end records; returns the file (length = end of the zip).
    pub fn finish(mut self) -> anyhow::Result<File> {
        let cd_offset = self.pos;
        let mut cd = Vec::new();
        for e in &self.entries {
            let mut extra = Vec::new();
            if e.size >= ZIP64_LIMIT {
                put64(&mut extra, e.size);
                put64(&mut extra, e.size);
            }
            if e.header_offset >= ZIP64_LIMIT {
                put64(&mut extra, e.header_offset);
            }
            let zip64 = !extra.is_empty();
            put32(&mut cd, 0x0201_4b50);
            put16(&mut cd, VERSION_MADE_BY);
            put16(&mut cd, if zip64 { 45 } else { 20 });
            put16(&mut cd, utf8_flag(&e.name));
            put16(&mut cd, 0);
            put16(&mut cd, DOS_TIME);
            put16(&mut cd, DOS_DATE);
            put32(&mut cd, e.crc32);
            let small = e.size.min(ZIP64_LIMIT) as u32;
            put32(&mut cd, small);
            put32(&mut cd, small);
            put16(&mut cd, e.name.len() as u16);
            put16(&mut cd, if zip64 { extra.len() as u16 + 4 } else { 0 });
            put16(&mut cd, 0); // comment
            put16(&mut cd, 0); // disk
            put16(&mut cd, 0); // internal attributes
            put32(&mut cd, EXTERNAL_ATTR);
            put32(&mut cd, e.header_offset.min(ZIP64_LIMIT) as u32);
            cd.extend_from_slice(e.name.as_bytes());
            if zip64 {
                put16(&mut cd, 0x0001);
                put16(&mut cd, extra.len() as u16);
                cd.extend_from_slice(&extra);
            }
        }
        let cd_size = cd.len() as u64;
        let n = self.entries.len() as u64;
        let mut end = Vec::new();
        let need64 = n >= 0xFFFF || cd_size >= ZIP64_LIMIT || cd_offset >= ZIP64_LIMIT;
        if need64 {
            let eocd64 = cd_offset + cd_size;
            put32(&mut end, 0x0606_4b50);
            put64(&mut end, 44); // size of the rest of this record
            put16(&mut end, VERSION_MADE_BY);
            put16(&mut end, 45);
            put32(&mut end, 0); // this disk
            put32(&mut end, 0); // disk with the central directory
            put64(&mut end, n);
            put64(&mut end, n);
            put64(&mut end, cd_size);
            put64(&mut end, cd_offset);
            put32(&mut end, 0x0706_4b50); // locator
            put32(&mut end, 0);
            put64(&mut end, eocd64);
            put32(&mut end, 1);
        }
        put32(&mut end, 0x0605_4b50);
        put16(&mut end, 0);
        put16(&mut end, 0);
        put16(&mut end, n.min(0xFFFF) as u16);
        put16(&mut end, n.min(0xFFFF) as u16);
        put32(&mut end, cd_size.min(ZIP64_LIMIT) as u32);
        put32(&mut end, cd_offset.min(ZIP64_LIMIT) as u32);
        put16(&mut end, 0); // comment length
        cd.extend_from_slice(&end);
        self.file.write_all_at(&cd, cd_offset).context("cannot write the output")?;
        let total = cd_offset + cd.len() as u64;
        self.file.set_len(total).context("cannot size the output")?;
        self.file.seek(SeekFrom::Start(total))?;
        self.file.flush()?;
        Ok(self.file)
    }
}

/// Bit 11: the name is UTF-8 (only set when it is not plain ASCII).
fn utf8_flag(name: &str) -> u16 {
    if name.is_ascii() {
        0
    } else {
        1 << 11
    }
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// The data segments of `file` within `[offset, offset + len)`, as (start, end) pairs: holes
/// of a sparse file are left out. Without SEEK_DATA support, the whole range is one segment.
fn data_segments(file: &File, offset: u64, len: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let end = offset + len;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        // SAFETY: lseek on a file descriptor we own (borrowed from a live `File`); it only moves
        // that descriptor's position, which every read/write here overrides with explicit offsets.
        let data = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole up to the end of the file
            }
            return vec![(offset, end)]; // SEEK_DATA unsupported here: copy everything
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return vec![(offset, end)];
        }
        let seg_end = (hole as u64).min(end);
        out.push((data, seg_end));
        pos = seg_end;
    }
    out
}

/// CRC-32 of `len` bytes of `file` from `offset`; holes are folded in arithmetically
/// (`crc32fast::Hasher::combine` with the CRC of a zero block) instead of being read.
fn crc32_of_range(file: &File, offset: u64, len: u64, progress: Progress) -> anyhow::Result<u32> {
    const CHUNK: usize = 4 << 20;
    let mut buf = vec![0u8; CHUNK];
    let zero_crc = |n: u64| -> crc32fast::Hasher {
        // CRC of n zero bytes by doubling: O(log n) combines of hashers.
        let mut result = crc32fast::Hasher::new();
        let mut block = crc32fast::Hasher::new();
        block.update(&[0]);
        let mut n = n;
        while n > 0 {
            if n & 1 == 1 {
                result.combine(&block);
            }
            n >>= 1;
            if n > 0 {
                let copy = block.clone();
                block.combine(&copy);
            }
        }
        result
    };
    let mut h = crc32fast::Hasher::new();
    let mut pos = offset;
    let end = offset + len;
    for (s, e) in data_segments(file, offset, len) {
        if s > pos {
            h.combine(&zero_crc(s - pos));
        }
        let mut p = s;
        while p < e {
            let n = ((e - p) as usize).min(CHUNK);
            file.read_exact_at(&mut buf[..n], p).with_context(|| format!("cannot read {n} bytes at offset {p}"))?;
            h.update(&buf[..n]);
            p += n as u64;
            progress(p - offset, len);
        }
        pos = e;
    }
    if end > pos {
        h.combine(&zero_crc(end - pos));
    }
    progress(len, len);
    Ok(h.finalize())
}

/// Copy `len` bytes of `src` from `src_off` to `dst` at `dst_off` by the kernel
/// (`std::io::copy` between files uses copy_file_range on Linux, which reflinks where the
/// filesystem can, and falls back to read/write across filesystems); holes stay holes.
fn copy_range(
    src: &File,
    src_off: u64,
    len: u64,
    mut dst: &File,
    dst_off: u64,
    progress: Progress,
) -> anyhow::Result<()> {
    const CHUNK: u64 = 256 << 20;
    progress(0, len);
    let mut src_pos = src;
    for (s, e) in data_segments(src, src_off, len) {
        let mut p = s;
        while p < e {
            let n = (e - p).min(CHUNK);
            src_pos.seek(SeekFrom::Start(p))?;
            dst.seek(SeekFrom::Start(dst_off + (p - src_off)))?;
            let copied =
                std::io::copy(&mut std::io::Read::take(src_pos, n), &mut dst).context("cannot copy into the output")?;
            if copied != n {
                bail!("the input shrank while being copied (got {copied} of {n} bytes at offset {p})");
            }
            p += n;
            progress(p - src_off, len);
        }
    }
    // Trailing hole: make the file long enough (the zip records follow anyway).
    let need = dst_off + len;
    if dst.metadata()?.len() < need {
        dst.set_len(need)?;
    }
    progress(len, len);
    Ok(())
}

/// Writes at increasing offsets of the output, counting the bytes and their CRC-32.
struct CrcSink<'a> {
    file: &'a File,
    pos: u64,
    written: u64,
    crc: crc32fast::Hasher,
}

impl Write for CrcSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all_at(buf, self.pos)?;
        self.crc.update(buf);
        self.pos += buf.len() as u64;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_crc_by_combining_matches_direct() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("z");
        let f = File::create(&p).unwrap();
        // 3 data bytes, a hole of 1 MiB + 5, 2 data bytes.
        f.write_all_at(b"abc", 0).unwrap();
        f.write_all_at(b"de", 3 + (1 << 20) + 5).unwrap();
        let f = File::open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        let mut all = vec![0u8; len as usize];
        f.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(crc32_of_range(&f, 0, len, &mut |_, _| {}).unwrap(), crc32fast::hash(&all));
        assert_eq!(crc32_of_range(&f, 1, len - 2, &mut |_, _| {}).unwrap(), crc32fast::hash(&all[1..len as usize - 1]));
    }

    #[test]
    fn entries_are_aligned_and_the_zip_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("data.bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let out = dir.path().join("out.zip");
        let mut f = File::create(&out).unwrap();
        f.write_all(b"#!prefix bytes standing for an executable\n").unwrap();
        let mut w = ZipWriter::new(f).unwrap();
        let e = w.add_stored_entry("model.gguf", &src, 65536).unwrap();
        assert_eq!(e.data_offset % 65536, 0);
        let a = w.add_stored(".args", Source::Bytes(b"-n 5\n"), 1, &mut |_, _| {}).unwrap();
        assert_eq!(a.header_offset, e.data_offset + data.len() as u64);
        assert!(w.add_stored(".args", Source::Bytes(b""), 1, &mut |_, _| {}).is_err(), "duplicate name");
        w.finish().unwrap();
        let entries = llamafile_format::bundle::zip_entries(&out).unwrap().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[0].name.as_str(), entries[0].data_offset, entries[0].size),
            ("model.gguf", e.data_offset, data.len() as u64)
        );
        assert_eq!(entries[0].crc32, crc32fast::hash(&data));
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[e.data_offset as usize..][..data.len()], &data[..]);
        assert_eq!(&bytes[a.data_offset as usize..][..5], b"-n 5\n");
    }
}
