//! A provided buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): buffers the kernel picks
//! from for reads armed with a buffer group, so no read names its buffer up front and one
//! multishot read can fill many.
//!
//! Ownership, the rule everything in `uring.rs` keeps: a buffer is either *in the ring* (its
//! slot holds it; the kernel may write it at any moment while a read on the group is armed,
//! so nothing here reads or moves its memory) or *lent* (a completion named its id and
//! `lend` moved it out; the kernel is done with it). A lent buffer comes back through
//! `give_back`, which may put it under another id: the ring names memory by address, and
//! the slot keeps the allocation alive. Buffers are boxed slices, so moving a `Buf` value
//! never moves the memory the kernel writes.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::batch::Buf;

pub struct ProvidedBufs {
    /// The ring of `io_uring_buf` entries the kernel reads (page aligned, mmap'd).
    entries: NonNull<BufRingEntry>,
    mapped_len: usize,
    mask: u16,
    /// The tail this side has published: the kernel consumes from its head up to here.
    tail: u16,
    group: u16,
    buf_size: usize,
    /// Slot `id`: the buffer under that id while in the ring, None while lent.
    slots: Vec<Option<Buf>>,
    /// Ids whose buffers are lent, to put a returned buffer under.
    lent: Vec<u16>,
}

// SAFETY: the ring memory is owned by this value alone (the kernel's side aside) and only
// touched through `&mut self`.
unsafe impl Send for ProvidedBufs {}

impl ProvidedBufs {
    /// Registers a ring of `count` (a power of two, at most 32768) buffers of `buf_size`
    /// bytes as buffer group `group` of `ring`, every buffer in it.
    pub fn register(ring: &IoUring, group: u16, count: u16, buf_size: usize) -> io::Result<ProvidedBufs> {
        if !count.is_power_of_two() || count > 1 << 15 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a buffer ring holds a power of two up to 32768"));
        }
        let mapped_len = (usize::from(count) * size_of::<BufRingEntry>()).next_multiple_of(4096);
        // SAFETY: an anonymous private mapping: no fd, no address hint; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let Some(entries) = NonNull::new(addr.cast::<BufRingEntry>()) else {
            return Err(io::Error::other("mmap returned null"));
        };
        let mut bufs = ProvidedBufs {
            entries,
            mapped_len,
            mask: count - 1,
            tail: 0,
            group,
            buf_size,
            slots: (0..count).map(|_| None).collect(),
            lent: (0..count).rev().collect(),
        };
        // SAFETY: `entries` is a fresh page-aligned mapping of `count` entries that stays
        // mapped until this value drops (after the ring that reads it: see `Drop`).
        unsafe { ring.submitter().register_buf_ring_with_flags(entries.as_ptr() as u64, count, group, 0) }?;
        let mut fresh: Vec<Buf> = (0..count).map(|_| Buf::new(buf_size)).collect();
        bufs.give_back(&mut fresh);
        Ok(bufs)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Buffers in all, in the ring or lent.
    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// Buffers in the ring now, for the kernel to fill.
    pub fn in_ring(&self) -> usize {
        self.slots.len() - self.lent.len()
    }

    /// Puts fresh buffers under every lent id: for when the worker dropped what it held (a
    /// worker restarted after a panic) and will never give those back.
    pub fn replace_lent(&mut self) {
        let mut fresh: Vec<Buf> = (0..self.lent.len()).map(|_| Buf::new(self.buf_size)).collect();
        self.give_back(&mut fresh);
    }

    /// Moves the buffer a completion named out of the ring, `len` bytes filled. None for an
    /// id the ring does not hold (a kernel that broke the contract; nothing is lent).
    pub fn lend(&mut self, id: u16, len: usize) -> Option<Buf> {
        let mut buf = self.slots.get_mut(usize::from(id))?.take()?;
        self.lent.push(id);
        buf.len = len.min(buf.data.len());
        buf.start = 0;
        buf.stride = buf.len;
        buf.src = None;
        buf.cut = 0;
        Some(buf)
    }

    /// Puts buffers back in the ring, one tail store for all of them. A buffer of another
    /// size (a placeholder the worker left) is replaced by a fresh one, an empty one skipped;
    /// buffers beyond the lent count are dropped.
    pub fn give_back(&mut self, bufs: &mut Vec<Buf>) {
        let mut tail = self.tail;
        for buf in bufs.drain(..) {
            if buf.data.is_empty() {
                continue; // an empty datagram's stand-in, never the ring's
            }
            let Some(id) = self.lent.pop() else { break };
            let mut buf = if buf.data.len() == self.buf_size { buf } else { Buf::new(self.buf_size) };
            let slot = usize::from(tail & self.mask);
            // SAFETY: `slot` is below `count`, inside the mapping. The kernel reads entries
            // only between its head and the published tail, and this one is past the tail.
            let entry = unsafe { &mut *self.entries.as_ptr().add(slot) };
            entry.set_addr(buf.data.as_mut_ptr() as u64);
            entry.set_len(self.buf_size.min(u32::MAX as usize) as u32);
            entry.set_bid(id);
            self.slots[usize::from(id)] = Some(buf);
            tail = tail.wrapping_add(1);
        }
        if tail != self.tail {
            self.tail = tail;
            // SAFETY: the tail is the u16 at offset 14 of the ring's first entry (the
            // kernel's `io_uring_buf_ring` layout), inside the mapping; the kernel reads it
            // with an acquire load, so the release store publishes the entries above.
            let tail_ptr = unsafe { BufRingEntry::tail(self.entries.as_ptr()) } as *const AtomicU16;
            // SAFETY: as above; aligned (offset 14 of a page), and only this side writes it.
            unsafe { &*tail_ptr }.store(tail, Ordering::Release);
        }
    }
}

impl ProvidedBufs {
    /// Forgets the buffers and the ring's memory instead of freeing them: for an owner that
    /// could not make sure the kernel is done with them.
    pub fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.slots));
        self.mapped_len = 0;
    }
}

impl Drop for ProvidedBufs {
    fn drop(&mut self) {
        // The owner drops the ring first and makes sure no read on the group is in flight
        // (or leaks this value). The kernel pins the ring's pages while it is registered.
        if self.mapped_len > 0 {
            // SAFETY: unmaps exactly the mapping `register` made.
            unsafe { libc::munmap(self.entries.as_ptr().cast(), self.mapped_len) };
        }
    }
}
