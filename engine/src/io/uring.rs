//! The io_uring backend: completions instead of readiness.
//!
//! One ring per worker, created on the worker's thread (`SINGLE_ISSUER`, `DEFER_TASKRUN` where
//! the kernel has them). A multishot accept feeds new sockets; a multishot receive per
//! connection fills buffers the kernel takes from a provided-buffer ring; each buffer is handed
//! to the core in place and goes back to the ring as soon as the core returns (a drop guard, so
//! no path forgets it). Sends are batched: at the end of a loop turn every connection with
//! queued bytes gets one send, and its buffer stays owned here until the completion arrives,
//! also when the connection dies first. One `io_uring_enter` per loop turn submits everything
//! and waits. Where the kernel allows, a connection's socket sits in the ring's registered
//! file table (at its key) and the ring's own descriptor is registered with the worker's
//! thread: no operation, and no `io_uring_enter`, then makes the kernel look a descriptor
//! up and take a reference on it.
//!
//! `unsafe` lives here because the kernel writes into memory we lend it: every block says why
//! the memory outlives the operation.

use std::alloc::{self, Layout};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use crate::server::api::Handler;
use crate::server::config::{
    Config, AUTO_URING_BUFFERS, AUTO_URING_BUFFERS_INC, AUTO_URING_BUFFER_SIZE,
    AUTO_URING_BUFFER_SIZE_INC,
};
use crate::server::core::{After, Core, OutQ, WRITE_SLICES};
use crate::server::handle::{Command, Wake, WorkerStats};
use crate::server::worker::{self, Driver, Worker, ACCEPT_BACKOFF};

// user_data: kind in the top byte, connection key in the low 32 bits.
const ACCEPT: u64 = 1 << 56;
const WAKE: u64 = 2 << 56;
const RECV: u64 = 3 << 56;
const SEND: u64 = 4 << 56;
const CANCEL: u64 = 5 << 56;
const CANCEL_PAUSE: u64 = 6 << 56;
const SEND_ZC: u64 = 7 << 56;
const FILES: u64 = 8 << 56;
const KIND: u64 = 0xff << 56;

const BGID: u16 = 7;

/// Whether this kernel offers everything the backend uses: exactly the opcodes it submits
/// (SEND_ZC, optional, is probed apart in `zc_supported`), provided
/// buffer rings (registered for real on a scratch ring) and the extended wait argument.
///
/// Runs on a throwaway thread: tearing down a ring queues task work on the thread that made
/// it, which interrupts that thread's next blocking system call with EINTR. The host's thread
/// that calls `build()` must not inherit that surprise.
pub(crate) fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("sockeye-probe".into())
        .spawn(probe_here)
        .map_err(|e| format!("spawning the probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
}

fn probe_here() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("kernel lacks IORING_FEAT_EXT_ARG".into());
    }
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p).map_err(|e| format!("register_probe: {e}"))?;
    for (name, code) in [
        ("ACCEPT", opcode::AcceptMulti::CODE),
        ("RECV", opcode::RecvMulti::CODE),
        ("SEND", opcode::Send::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel2::CODE),
        ("POLL_ADD", opcode::PollAdd::CODE),
    ] {
        if !p.is_supported(code) {
            return Err(format!("kernel lacks IORING_OP_{name}"));
        }
    }
    // Multishot receive arrived in 6.0; the opcode probe cannot see the flag.
    let (major, minor) = kernel_version().unwrap_or((0, 0));
    if (major, minor) < (6, 0) {
        return Err(format!("kernel {major}.{minor} lacks multishot receive (needs 6.0)"));
    }
    let br = BufRing::new(&ring, 2, 64).map_err(|e| format!("register_buf_ring: {e}"))?;
    br.unregister(&ring);
    Ok(())
}

/// Registers an empty file table of as many slots as this process may have descriptors (the
/// kernel's own limit for it) or the worker connections, at most [`MAX_FIXED_FILES`]
/// (connections past it use their descriptors); returns its size, 0 before 6.13 (see
/// below) or where the kernel refuses, and the backend then uses plain descriptors only.
fn register_file_table(ring: &IoUring, max_connections: usize) -> u32 {
    // Before 6.13 a fixed-file request pins the whole table's generation, and a socket taken
    // out of the table is released only once every request issued before that is done: a
    // closed connection's socket would stay open behind any other's long-lived receive.
    if kernel_version().unwrap_or((0, 0)) < (6, 13) {
        return 0;
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the valid struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    let n = lim.rlim_cur.min(u64::from(MAX_FIXED_FILES)).min(max_connections as u64) as u32;
    let mut p = Probe::new();
    let updates = ring.submitter().register_probe(&mut p).is_ok()
        && p.is_supported(opcode::FilesUpdate::CODE);
    if n == 0 || !updates || ring.submitter().register_files_sparse(n).is_err() {
        return 0;
    }
    n
}

// io_uring_register(2) and io_uring_enter(2) values (include/uapi/linux/io_uring.h) for the
// registered ring descriptor, which the io-uring crate keeps per `Submitter`, a borrow of the
// ring that the loop cannot keep beside it.
const IORING_REGISTER_RING_FDS: libc::c_long = 20;
const IORING_UNREGISTER_RING_FDS: libc::c_long = 21;
const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;
const IORING_ENTER_REGISTERED_RING: u32 = 1 << 4;

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// Registers the ring's own descriptor with the calling thread (the worker, its only
/// issuer), so that `io_uring_enter` finds the ring by index: the kernel then skips looking
/// the descriptor up and counting a reference on it at every call. The index, or `None`
/// where the kernel refuses (before 5.18, or the thread's 16 registrations are taken).
fn register_ring(ring: &IoUring) -> Option<u32> {
    // offset u32::MAX: the kernel picks the index and writes it back.
    let mut up = RsrcUpdate { offset: u32::MAX, resv: 0, data: ring.as_raw_fd() as u64 };
    // SAFETY: IORING_REGISTER_RING_FDS reads and writes back one io_uring_rsrc_update, the
    // live struct passed (nr_args 1).
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_RING_FDS,
            &mut up as *mut RsrcUpdate,
            1,
        )
    };
    (r == 1).then_some(up.offset)
}

/// Undoes [`register_ring`] (on the thread that registered it), before the ring is dropped:
/// the thread's registration holds a reference that would keep the ring alive.
fn unregister_ring(ring: &IoUring, index: u32) {
    let mut up = RsrcUpdate { offset: index, resv: 0, data: 0 };
    // SAFETY: IORING_UNREGISTER_RING_FDS reads one io_uring_rsrc_update, the live struct
    // passed (nr_args 1).
    unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_UNREGISTER_RING_FDS,
            &mut up as *mut RsrcUpdate,
            1,
        )
    };
}

fn zc_supported(ring: &IoUring) -> bool {
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p).is_ok() && p.is_supported(opcode::SendZc::CODE)
}

fn kernel_version() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// A provided-buffer ring: `entries` buffers of `size` bytes the kernel picks from for receives.
///
/// The buffers are one raw allocation, never borrowed as a whole: the kernel writes into the
/// buffers it holds while we read the one a completion handed back, so the only reference
/// ever made is to that one buffer (`buf_mut`).
struct BufRing {
    ring: *mut types::BufRingEntry,
    ring_layout: Layout,
    /// `entries * size` bytes (`bufs_len`) of anonymous memory mapped for the ring: its pages
    /// are zero and cost nothing until the kernel first writes into them (an aligned
    /// `alloc_zeroed` would write every page up front). Null once freed or leaked.
    bufs: *mut u8,
    bufs_len: usize,
    entries: u16,
    size: usize,
    tail: u16,
    /// Buffers the kernel holds (lent and not yet returned to us); for leak accounting.
    lent: usize,
    /// Registered with `IOU_PBUF_RING_INC` (kernel 6.12+): the kernel consumes a buffer
    /// piece by piece, each receive taking only the bytes it wrote, and hands the buffer back
    /// (a completion without `IORING_CQE_F_BUF_MORE`) once it is full. Without it every
    /// receive takes a whole buffer, however few bytes it carries.
    incremental: bool,
    /// Per buffer, how many of its bytes earlier receives consumed: where the next receive
    /// into it starts (incremental mode; always 0 otherwise).
    used: Box<[u32]>,
}

/// `IOU_PBUF_RING_INC` from the kernel's uapi (the crate keeps its `sys` module private).
const PBUF_RING_INC: u16 = 2;

impl BufRing {
    /// A ring of `entries` buffers of `size` bytes (`0` for either: what the kernel's mode
    /// calls for, [`AUTO_URING_BUFFERS_INC`] × [`AUTO_URING_BUFFER_SIZE_INC`] incremental, else
    /// [`AUTO_URING_BUFFERS`] × [`AUTO_URING_BUFFER_SIZE`]), registered with `ring`, consuming
    /// incrementally where the kernel can (6.12+).
    fn new(ring: &IoUring, entries: u16, size: usize) -> io::Result<Self> {
        let auto = |v: u16, a: u16| if v == 0 { a } else { v };
        let (inc, plain) =
            (auto(entries, AUTO_URING_BUFFERS_INC), auto(entries, AUTO_URING_BUFFERS));
        let (inc_size, plain_size) = if size == 0 {
            (AUTO_URING_BUFFER_SIZE_INC, AUTO_URING_BUFFER_SIZE)
        } else {
            (size, size)
        };
        let mut br = Self::alloc(inc, inc_size)?;
        // A kernel before 6.12 refuses the incremental flag (EINVAL) and registers nothing,
        // so a plain registration may follow, of a fresh allocation if the mode wants another
        // size (the first one is dropped unregistered, which frees it).
        // Every `register` here: `br` is fresh from `alloc`; once registered it is returned to
        // the caller, which keeps it until it is unregistered or the ring is gone (`register`'s
        // contract).
        #[cfg(test)]
        let plain_only = hooks::PLAIN_RING.with(|p| p.get());
        #[cfg(not(test))]
        let plain_only = false;
        // SAFETY: as above.
        if !plain_only && unsafe { br.register(ring, PBUF_RING_INC) }.is_ok() {
            br.incremental = true;
        } else {
            if plain != br.entries || plain_size != br.size {
                br = Self::alloc(plain, plain_size)?;
            }
            // SAFETY: as above. Not registered (an error): `Drop` frees both allocations.
            unsafe { br.register(ring, 0) }?;
        }
        for bid in 0..br.entries {
            br.push(bid);
        }
        br.lent = br.entries as usize;
        br.publish();
        Ok(br)
    }

    /// The ring's memory, not yet registered.
    fn alloc(entries: u16, size: usize) -> io::Result<Self> {
        let entries = entries.clamp(2, 1 << 15).next_power_of_two();
        let ring_layout = Layout::from_size_align(
            entries as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let total = (entries as usize)
            .checked_mul(size)
            .filter(|&t| t > 0 && u32::try_from(size).is_ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "uring buffer size"))?;
        // SAFETY: the layout has a non-zero size (at least 2 entries of 16 bytes).
        let mem = unsafe { alloc::alloc_zeroed(ring_layout) }.cast::<types::BufRingEntry>();
        if mem.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // SAFETY: a fresh private anonymous mapping of `total > 0` bytes (checked above), no
        // memory argument; the result is checked. Its pages read as zero, so every byte a
        // buffer slice covers is initialized whatever the kernel wrote.
        let bufs = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if bufs == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: allocated above with this layout, never registered.
            unsafe { alloc::dealloc(mem.cast(), ring_layout) };
            return Err(e);
        }
        Ok(BufRing {
            ring: mem,
            ring_layout,
            bufs: bufs.cast::<u8>(),
            bufs_len: total,
            entries,
            size,
            tail: 0,
            lent: 0,
            incremental: false,
            used: vec![0; entries as usize].into_boxed_slice(),
        })
    }

    /// Registers the ring with `ring` under [`BGID`] with `flags`.
    ///
    /// # Safety
    ///
    /// The kernel keeps writing the ring's entries and buffers until it is unregistered or
    /// the io_uring instance is gone: `self` must not be freed before either (`unregister`
    /// frees only after the kernel let go; `Loop::teardown` leaks it otherwise). The entry
    /// array is page aligned, zeroed and `entries` long (`alloc`).
    unsafe fn register(&self, ring: &IoUring, flags: u16) -> io::Result<()> {
        // SAFETY: the caller's contract above.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring as u64,
                self.entries,
                BGID,
                flags,
            )
        }
    }

    /// Puts buffer `bid` at the ring's tail (visible to the kernel after `publish`).
    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let idx = (self.tail & mask) as usize;
        // SAFETY: `idx < entries`, inside the allocation; the kernel reads only entries between
        // its head and the published tail, and this one is past the published tail.
        let e = unsafe { &mut *self.ring.add(idx) };
        e.set_addr(self.bufs as u64 + u64::from(bid) * self.size as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's `resv`, inside the allocation; the
        // kernel reads it with acquire semantics, so a release store orders the entries first.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.ring).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// Takes the `len` bytes a receive completion reported in buffer `bid`: where they lie,
    /// and whether the buffer came back with them (`done`: push it again once they are
    /// handled) or the kernel keeps filling the rest of it (`more`, incremental mode only).
    fn take(&mut self, bid: u16, len: usize, more: bool) -> Piece {
        // The kernel names only buffers we published; anything else would be a kernel bug.
        assert!(bid < self.entries && !self.bufs.is_null(), "buffer id {bid} out of range");
        let b = bid as usize;
        let used = self.used[b] as usize;
        let len = len.min(self.size - used);
        let more = more && self.incremental && used + len < self.size;
        self.used[b] = if more { (used + len) as u32 } else { 0 };
        if !more {
            self.lent -= 1;
        }
        Piece { bid, start: b * self.size + used, len, done: !more }
    }

    /// The bytes of `piece`, which the completion that `take` read handed over.
    fn bytes_mut(&mut self, piece: &Piece) -> &mut [u8] {
        // SAFETY: `start + len` lies inside buffer `bid` (`take` clamps `len` to its size),
        // inside the `entries * size` allocation, which lives until `free`. The kernel wrote
        // these bytes before posting the completion and never writes them again: it gave the
        // whole buffer back (`done`), which it does not touch until `push` republishes it
        // (that needs `&mut self`), or, consuming incrementally, it only writes past them,
        // at the part of the buffer this slice does not cover. `&mut self` makes the slice
        // the only reference; no reference to the whole storage exists.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.add(piece.start), piece.len) }
    }

    fn unregister(mut self, ring: &IoUring) {
        if ring.submitter().unregister_buf_ring(BGID).is_ok() {
            self.free();
        } else {
            // The kernel may still use the ring and its buffers: leak them rather than free
            // memory it uses.
            self.ring = std::ptr::null_mut();
            self.bufs = std::ptr::null_mut();
        }
    }

    fn free(&mut self) {
        if !self.ring.is_null() {
            // SAFETY: allocated in `new` with `ring_layout`; the kernel no longer uses it.
            unsafe { alloc::dealloc(self.ring.cast(), self.ring_layout) };
            self.ring = std::ptr::null_mut();
        }
        if !self.bufs.is_null() {
            // SAFETY: mapped in `new`, `bufs_len` long; the kernel no longer uses it and no
            // slice of it outlives `&mut self`.
            unsafe { libc::munmap(self.bufs.cast(), self.bufs_len) };
            self.bufs = std::ptr::null_mut();
        }
    }
}

/// The bytes one receive completion delivered, in buffer `bid` at `start..start + len` of
/// the ring's storage.
struct Piece {
    bid: u16,
    start: usize,
    len: usize,
    /// The kernel gave the buffer back with these bytes.
    done: bool,
}

/// Returns a buffer the kernel gave back to the ring when dropped, whatever path the handling
/// takes; a buffer the kernel still fills stays with it.
struct Lend<'a> {
    ring: &'a mut BufRing,
    piece: Piece,
}

impl Drop for Lend<'_> {
    fn drop(&mut self) {
        if self.piece.done {
            self.ring.push(self.piece.bid);
            self.ring.publish();
            self.ring.lent += 1;
        }
    }
}

#[derive(Debug)]
struct EventFd(OwnedFd);

impl Wake for EventFd {
    fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
        let r = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if r == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// A worker's listener and waker, made on the building thread; the ring is made on the worker.
#[derive(Debug)]
pub(crate) struct Prep {
    listeners: Vec<(std::net::TcpListener, bool)>,
    rx: Receiver<Command>,
    efd: Arc<EventFd>,
}

impl Prep {
    /// `listeners`: each with whether it speaks TLS.
    pub(crate) fn new(
        listeners: Vec<(std::net::TcpListener, bool)>,
        rx: Receiver<Command>,
    ) -> io::Result<Self> {
        // SAFETY: eventfd has no memory arguments; the result is checked.
        // Non-blocking: the ring polls it (multishot), and several POLLIN completions can
        // arrive for one counter, so `clear_wake` may find it already cleared (EAGAIN, not a
        // hang). A write fails only if the counter would overflow, never here.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let efd = Arc::new(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }));
        Ok(Self { listeners, rx, efd })
    }

    pub(crate) fn waker(&self) -> Arc<dyn Wake> {
        self.efd.clone()
    }

    pub(crate) fn run<H: Handler>(
        self,
        core: Core<H>,
        cfg: &Config,
        stats: Arc<WorkerStats>,
    ) -> io::Result<()> {
        let mut l = self.into_loop(core, cfg, stats)?;
        let r = worker::run(&mut l);
        l.teardown();
        r
    }

    /// Makes the ring (on the calling thread, which becomes its only issuer) and the loop.
    fn into_loop<H: Handler>(
        self,
        core: Core<H>,
        cfg: &Config,
        stats: Arc<WorkerStats>,
    ) -> io::Result<Loop<H>> {
        // The kernel rounds up to a power of two and caps the SQ at 32768 entries (the CQ,
        // four times larger, at 65536).
        let entries = cfg.uring_entries.clamp(1, 1 << 15);
        let cq = (entries * 4).min(1 << 16);
        // Best first: one issuer with deferred task work (completions run only when this
        // thread waits); then cooperative task work; then plain.
        let ring = IoUring::<squeue::Entry, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq)
            .build(entries)
            .or_else(|_| IoUring::builder().setup_coop_taskrun().setup_cqsize(cq).build(entries))
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))?;
        let bufs = BufRing::new(&ring, cfg.uring_buffers, cfg.uring_buffer_size)?;
        let fixed_files = register_file_table(&ring, cfg.max_connections);
        let sq_entries = ring.params().sq_entries() as usize;
        let ring_index = register_ring(&ring);
        let zc_threshold =
            if zc_supported(&ring) { cfg.uring_send_zc_threshold } else { usize::MAX };
        let w = Loop {
            ring: ManuallyDrop::new(ring),
            bufs: ManuallyDrop::new(bufs),
            listeners: self
                .listeners
                .into_iter()
                .map(|(sock, secure)| Listening { sock: Some(sock), secure, accepting: false })
                .collect(),
            efd: self.efd,
            wake_armed: false,
            zc_threshold,
            conns: Vec::new(),
            sends: slab::Slab::new(),
            msgs: Vec::new(),
            w: Worker::new(core, self.rx, stats, cfg.shutdown_timeout),
            cqes: VecDeque::with_capacity(1024),
            work: Vec::new(),
            rearm: Vec::new(),
            parked: HashMap::new(),
            outstanding: 0,
            turn_deliveries: 0,
            gathering: true,
            woken: false,
            rewake: false,
            fixed_files,
            fixed: Vec::new(),
            ring_index,
            ring_thread: std::thread::current().id(),
            reg_fds: vec![-1; sq_entries + 1].into_boxed_slice(),
            reg_next: 0,
            torn_down: false,
        };
        Ok(w)
    }
}

/// A send in flight: the queue the kernel reads from and, when it is more than one slice (a
/// shared frame among owned bytes), the header of its SENDMSG.
struct Flight {
    q: Box<OutQ>,
    msg: Option<Box<MsgBuf>>,
}

/// A SENDMSG's header and iovecs, boxed so that neither moves while the kernel reads them.
struct MsgBuf {
    iov: [libc::iovec; WRITE_SLICES],
    hdr: libc::msghdr,
}

impl MsgBuf {
    fn new() -> Box<Self> {
        // SAFETY: all-zero iovecs and msghdr are valid (null pointers, zero lengths).
        Box::new(unsafe { std::mem::zeroed() })
    }
}

/// Spare SENDMSG headers kept for reuse (about 1 KiB each); more are freed.
const MAX_SPARE_MSGS: usize = 64;

/// No send in flight (`ConnIo::send`).
const NO_SEND: u32 = u32::MAX;

/// The most slots of a worker's registered file table (8 bytes of kernel memory each).
const MAX_FIXED_FILES: u32 = 1 << 16;

/// What a FILES_UPDATE that empties a slot reads (the kernel reads it when it issues the
/// entry; a static never moves).
static NO_FILE: [RawFd; 1] = [-1];

/// Builds the entry `$sqe` on a connection's socket, `$t` its slot in the registered file
/// table when it has one (the kernel then skips the per-request descriptor lookup and
/// reference count), else its descriptor.
macro_rules! on_socket {
    ($slot:expr, $fd:expr, |$t:ident| $sqe:expr) => {
        match $slot {
            Some(slot) => {
                let $t = types::Fixed(slot);
                $sqe
            }
            None => {
                let $t = types::Fd($fd);
                $sqe
            }
        }
    };
}

/// What the backend tracks per connection, beside the core's slot (same key): 16 bytes, since
/// every idle connection pays for it. A send's buffer lives in `Loop::sends` while in flight.
struct ConnIo {
    fd: Option<OwnedFd>,
    /// Index in `Loop::sends` of the send in flight, or `NO_SEND`.
    send: u32,
    /// A zero-copy send's result, kept until its notification (valid when `zc_pending`).
    zc_result: i32,
    recv_armed: bool,
    /// A cancel was requested for the receive (pause) and has not completed.
    cancelling: bool,
    /// The core declared it dead; close and free once no operation is in flight.
    dying: bool,
    /// A zero-copy send reported its result; the buffer stays lent until the notification.
    zc_pending: bool,
}

impl Default for ConnIo {
    fn default() -> Self {
        Self {
            fd: None,
            send: NO_SEND,
            zc_result: 0,
            recv_armed: false,
            cancelling: false,
            dying: false,
            zc_pending: false,
        }
    }
}

// Every idle connection pays for this; keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<ConnIo>() == 16);

impl ConnIo {
    fn busy(&self) -> bool {
        self.recv_armed || self.send != NO_SEND || self.cancelling
    }
}

/// One of a worker's listening sockets; its multishot accept's user data is `ACCEPT | index`.
struct Listening {
    /// `None` once the worker stops accepting for good.
    sock: Option<std::net::TcpListener>,
    /// Whether the connections it accepts speak TLS.
    secure: bool,
    /// Whether its multishot accept is armed.
    accepting: bool,
}

struct Loop<H: Handler> {
    // Dropped by hand in `teardown`, ring before the memory it points into.
    ring: ManuallyDrop<IoUring>,
    bufs: ManuallyDrop<BufRing>,
    listeners: Vec<Listening>,
    efd: Arc<EventFd>,
    wake_armed: bool,
    /// Sends of at least this many bytes use SEND_ZC.
    zc_threshold: usize,
    conns: Vec<ConnIo>,
    /// The sends in flight: owned here until the completion (or, for zero copy, the
    /// notification) arrives.
    sends: slab::Slab<Flight>,
    /// Spare SENDMSG headers (boxed: a flight holds one by pointer while the kernel reads it).
    #[allow(clippy::vec_box)]
    msgs: Vec<Box<MsgBuf>>,
    w: Worker<H>,
    /// Completions reaped and not yet handled: `(user_data, result, flags)`.
    cqes: VecDeque<(u64, i32, u32)>,
    work: Vec<u32>,
    /// Connections to read again at the end of the turn, if the core wants to.
    rearm: Vec<u32>,
    /// Bytes that arrived for a read-paused connection after its pause: completions the
    /// kernel posted before the cancel took effect (at most the ring's worth). They are not
    /// handed to the core, which would consume them (and drop their echoes) while paused;
    /// they are copied out so the buffers go back to the ring at once, and handed to the core
    /// one buffer at a time, in order, before the connection's socket is read again.
    parked: HashMap<u32, VecDeque<Vec<u8>>>,
    /// Operations submitted and not completed (teardown waits for them).
    outstanding: usize,
    /// The core's delivery count when this turn's completions were first handled.
    turn_deliveries: usize,
    /// Fan-out turns gather (off after an enter for it failed).
    gathering: bool,
    /// A wake-up completion was handled (reset by `gather` to see whether it took one).
    woken: bool,
    /// The gather took a wake-up: the next wait must not block (the commands it announced
    /// are read after the wait).
    rewake: bool,
    /// Slots in the ring's registered file table (0: the kernel gave none). A connection
    /// whose key is below it has its socket there, at its key, from its accept until it
    /// closes; `fixed` has its bit set.
    fixed_files: u32,
    fixed: Vec<u64>,
    /// The ring's index among the worker thread's registered rings, if it has one; and that
    /// thread (an index means nothing on another).
    ring_index: Option<u32>,
    ring_thread: std::thread::ThreadId,
    /// The descriptors of queued registrations, which the kernel reads when it issues the
    /// entry (and the queue's head moves past an entry only after that). One more than the
    /// submission queue holds, reused in turn: an entry is rewritten only at the
    /// `sq_entries + 1`-th registration after it, and that many entries cannot all wait in
    /// the queue at once, so its own was issued by then.
    reg_fds: Box<[RawFd]>,
    reg_next: usize,
    /// `teardown` ran (it runs once: from `Prep::run`, or from `Drop` on an unwind).
    torn_down: bool,
}

impl<H: Handler> Driver for Loop<H> {
    type H = H;

    fn worker(&mut self) -> &mut Worker<H> {
        &mut self.w
    }

    fn start(&mut self) {
        self.arm_accept();
        self.arm_wake();
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.wait_and_complete(timeout)
    }

    fn settle(&mut self) {
        Loop::settle(self);
    }

    fn resume_accepting(&mut self) {
        self.arm_accept();
    }

    fn stop_accepting(&mut self) {
        self.cancel_accept();
    }

    fn publish_stats(&mut self) {
        let stats = self.w.stats();
        stats.buffers_total.store(self.bufs.entries as usize, Ordering::Relaxed);
        stats.buffers_in_kernel.store(self.bufs.lent, Ordering::Relaxed);
    }
}

impl<H: Handler> Loop<H> {
    /// The connection's slot in the registered file table, if its socket is there.
    fn slot(&self, key: usize) -> Option<u32> {
        let bit = self.fixed.get(key / 64).is_some_and(|w| w & (1 << (key % 64)) != 0);
        bit.then_some(key as u32)
    }

    /// Puts an accepted socket in the file table at its key, when the table reaches that
    /// far. Asynchronous, with no system call of its own: the update goes in the submission
    /// queue ahead of the connection's first operation, and the kernel issues a submission's
    /// entries in order (a FILES_UPDATE runs inline when issued, never in an io-wq thread).
    fn register_fixed(&mut self, key: usize, fd: RawFd) {
        if key >= self.fixed_files as usize {
            return;
        }
        let i = self.reg_next;
        self.reg_next = (i + 1) % self.reg_fds.len();
        self.reg_fds[i] = fd;
        let sqe = opcode::FilesUpdate::new(&self.reg_fds[i], 1)
            .offset(key as i32)
            .build()
            .user_data(FILES | key as u64);
        self.push(sqe);
        if self.fixed.len() <= key / 64 {
            self.fixed.resize(key / 64 + 1, 0);
        }
        self.fixed[key / 64] |= 1 << (key % 64);
    }

    /// Takes a closing connection's socket out of the file table, whose reference would
    /// otherwise keep it open after its descriptor is closed (until the end of this turn's
    /// submission, it does). Queued like the registration: if the key goes to a new accept
    /// in this turn, that one's update comes after this one.
    fn unregister_fixed(&mut self, key: usize) {
        if self.slot(key).is_none() {
            return;
        }
        self.fixed[key / 64] &= !(1 << (key % 64));
        let sqe = opcode::FilesUpdate::new(NO_FILE.as_ptr(), 1)
            .offset(key as i32)
            .build()
            .user_data(FILES | key as u64);
        self.push(sqe);
    }

    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY (of every push): each operation's memory — the descriptor a FILES_UPDATE
        // reads (`reg_fds`, a static for an emptied slot; read when the entry is issued), a
        // receive's provided buffers, a
        // send's queue and SENDMSG header held in `Loop::sends` (`ConnIo::send` only holds its
        // index; the bytes and the header are on the heap and do not move), the eventfd
        // polled for wake-ups — lives until its completion is reaped; `teardown` waits for all
        // of them before freeing anything, and leaks what never completed.
        loop {
            // SAFETY: see above.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                self.outstanding += 1;
                return;
            }
            // Submission queue full: hand what is there to the kernel, collect what completed
            // (operations that finish inline post at once, and the CQ is only four times the
            // SQ; on EBUSY reaping is what frees the CQ), and retry.
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    log::error!("io_uring submit: {e}");
                }
            }
            self.reap();
        }
    }

    /// Copies ready completions out of the CQ (so handlers can push new entries).
    fn reap(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        for c in &mut cq {
            self.cqes.push_back((c.user_data(), c.result(), c.flags()));
        }
    }

    fn arm_accept(&mut self) {
        if self.w.accepts_backed_off() || self.w.stopping() {
            return;
        }
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            let Some(sock) = l.sock.as_ref() else { continue };
            if l.accepting {
                continue;
            }
            let sqe = opcode::AcceptMulti::new(types::Fd(sock.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(ACCEPT | i as u64);
            self.push(sqe);
            self.listeners[i].accepting = true;
        }
    }

    fn cancel_accept(&mut self) {
        for i in 0..self.listeners.len() {
            if self.listeners[i].accepting {
                let sqe =
                    opcode::AsyncCancel2::new(types::CancelBuilder::user_data(ACCEPT | i as u64))
                        .build()
                        .user_data(CANCEL);
                self.push(sqe);
            }
        }
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        // A multishot poll, not a read: a read on an eventfd would park in an io-wq thread.
        let fd = self.efd.0.as_raw_fd();
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE);
        self.push(sqe);
        self.wake_armed = true;
    }

    /// Resets the eventfd counter after a wake-up (non-blocking: an earlier completion of the
    /// same batch may have cleared it already).
    fn clear_wake(&mut self) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a valid u64 from a non-blocking eventfd we own.
        unsafe { libc::read(self.efd.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    fn arm_recv(&mut self, key: usize) {
        let Some(c) = self.conns.get(key) else { return };
        let Some(fd) = c.fd.as_ref().map(|f| f.as_raw_fd()) else { return };
        if c.recv_armed || c.dying || c.cancelling {
            return;
        }
        let sqe = on_socket!(self.slot(key), fd, |t| opcode::RecvMulti::new(t, BGID).build())
            .user_data(RECV | key as u64);
        self.push(sqe);
        self.conns[key].recv_armed = true;
    }

    /// Submits everything queued and waits for `min` completions (or until `args`' timeout),
    /// as `submit_and_wait` / `submit_with_args` do, on the registered ring index.
    fn enter_registered(
        &mut self,
        index: u32,
        min: u32,
        args: Option<&types::SubmitArgs>,
    ) -> io::Result<usize> {
        debug_assert_eq!(
            std::thread::current().id(),
            self.ring_thread,
            "a ring entered off its thread"
        );
        let to_submit = self.ring.submission().len() as u32;
        let mut flags = IORING_ENTER_GETEVENTS | IORING_ENTER_REGISTERED_RING;
        let (arg, size) = match args {
            Some(a) => {
                flags |= IORING_ENTER_EXT_ARG;
                // `SubmitArgs` is `repr(transparent)` over `struct io_uring_getevents_arg`.
                (
                    (a as *const types::SubmitArgs).cast::<libc::c_void>(),
                    size_of::<types::SubmitArgs>(),
                )
            }
            None => (std::ptr::null(), 0),
        };
        // SAFETY: io_uring_enter on this thread's registered index of this ring; the kernel
        // reads the queued entries (whose memory the `push` contract keeps alive) and, with
        // EXT_ARG, the getevents argument and the timespec it points to, both alive for the
        // call.
        let r = unsafe {
            libc::syscall(libc::SYS_io_uring_enter, index, to_submit, min, flags, arg, size)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Submits everything queued and waits for a completion (or the timeout), then handles
    /// every completion.
    fn wait_and_complete(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let rewake = std::mem::take(&mut self.rewake);
        let res = match timeout {
            // Completions reaped by a push since the loop handled them, or a wake-up the
            // gather took after this turn read its commands: do not wait.
            _ if !self.cqes.is_empty() || rewake => self.ring.submit(),
            Some(d) => {
                let ts = types::Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                match self.ring_index {
                    Some(i) => self.enter_registered(i, 1, Some(&args)),
                    None => self.ring.submitter().submit_with_args(1, &args),
                }
            }
            None => match self.ring_index {
                Some(i) => self.enter_registered(i, 1, None),
                None => self.ring.submitter().submit_and_wait(1),
            },
        };
        if let Err(e) = res {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                _ => return Err(e),
            }
        }
        self.w.core.set_now(Instant::now());
        self.turn_deliveries = self.w.core.deliveries();
        self.handle_completions();
        Ok(())
    }

    /// Before a fan-out's sends go out, runs the deferred task work that is already pending
    /// (receives other sockets got meanwhile; the kernel runs it in batches, of 20 items
    /// from 6.13) and handles what it completes, so that their
    /// messages join this turn's sends instead of costing every subscriber another send in
    /// the next turn. A wait runs only as much task work after its wake-up as it needs for
    /// one completion (one connection's receive), where `epoll_wait` would report every
    /// socket ready by then. One non-blocking enter, made only when this turn delivered to at
    /// least [`super::GATHER_MIN_DELIVERIES`] subscribers.
    fn gather(&mut self) {
        if self.w.core.deliveries().wrapping_sub(self.turn_deliveries)
            < super::GATHER_MIN_DELIVERIES
        {
            return;
        }
        self.turn_deliveries = self.w.core.deliveries();
        if !self.gathering {
            return;
        }
        let res = match self.ring_index {
            Some(i) => self.enter_registered(i, 0, None),
            None => {
                let queued = self.ring.submission().len() as u32;
                // SAFETY: io_uring_enter with no argument; the kernel reads the queued
                // entries, whose memory the `push` contract keeps alive.
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        queued,
                        0,
                        IORING_ENTER_GETEVENTS,
                        None,
                    )
                }
            }
        };
        if let Err(e) = res {
            if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) {
                // Once: the turn goes on without gathering, as before there was a gather.
                log::warn!("io_uring enter for pending completions: {e}; not gathering again");
                self.gathering = false;
            }
        }
        self.woken = false;
        self.handle_completions();
        self.rewake |= self.woken;
    }

    /// Reaps the ready completions and handles every one.
    fn handle_completions(&mut self) {
        self.reap();
        // Handling a completion may push, and a push that finds the SQ full reaps more
        // completions onto this queue: take them one at a time until none is left, so
        // none is dropped (a lost receive would keep its buffer, a lost send its
        // connection busy forever). Each leaves the queue before it is handled, so an
        // unwind cannot make teardown count it twice.
        while let Some((ud, res, flags)) = self.cqes.pop_front() {
            self.outstanding = self.outstanding.saturating_sub(1);
            // A multishot operation that continues keeps its slot in `outstanding`.
            if cqueue::more(flags) {
                self.outstanding += 1;
            }
            self.complete(ud, res, flags);
        }
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32) {
        let key = (ud & 0xffff_ffff) as usize;
        match ud & KIND {
            ACCEPT => self.on_accept(key, res, flags),
            WAKE => {
                if res > 0 {
                    self.clear_wake();
                }
                // Commands were read before this turn's gather: a wake-up it took must not
                // leave one waiting for the next wait.
                self.woken = true;
                if !cqueue::more(flags) {
                    self.wake_armed = false;
                    self.arm_wake();
                }
            }
            RECV => self.on_recv(key, res, flags),
            SEND => self.on_send(key, res),
            SEND_ZC => {
                // First the result (with MORE when a notification follows), then the
                // notification that the kernel no longer reads the buffer.
                if cqueue::notif(flags) {
                    let r = match self.conns.get_mut(key) {
                        Some(c) if c.zc_pending => {
                            c.zc_pending = false;
                            c.zc_result
                        }
                        _ => 0,
                    };
                    self.on_send(key, r);
                } else if cqueue::more(flags) {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.zc_result = res;
                        c.zc_pending = true;
                    }
                } else {
                    self.on_send(key, res);
                }
            }
            FILES if res < 0 => {
                // Only a registration can fail (6.13+: emptying a slot cannot), and it
                // leaves the slot empty: the connection's operations fail (EBADF), and it
                // closes as on any receive error.
                log::warn!(
                    "io_uring: file table update for {key}: {}",
                    io::Error::from_raw_os_error(-res)
                );
            }
            CANCEL_PAUSE => {
                // The paused receive reports its own end; if the connection drained meanwhile,
                // it reads again at the end of this turn.
                if let Some(c) = self.conns.get_mut(key) {
                    c.cancelling = false;
                    self.rearm.push(key as u32);
                    self.maybe_close(key);
                }
            }
            _ => {}
        }
    }

    fn on_accept(&mut self, which: usize, res: i32, flags: u32) {
        let Some(l) = self.listeners.get_mut(which) else { return };
        if !cqueue::more(flags) {
            l.accepting = false;
        }
        let secure = l.secure;
        if res < 0 {
            match -res {
                libc::ECANCELED | libc::EINTR | libc::ECONNABORTED | libc::EAGAIN => {}
                e => {
                    log::warn!(
                        "accept: {}; pausing accepts for {ACCEPT_BACKOFF:?}",
                        io::Error::from_raw_os_error(e)
                    );
                    self.cancel_accept();
                    self.w.backoff_accepts();
                }
            }
            return;
        }
        // SAFETY: a successful accept completion hands us a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        if !self.w.core.has_room() {
            drop(fd);
            self.cancel_accept();
            return;
        }
        let peer = peer_addr(fd.as_raw_fd()).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        set_nodelay(fd.as_raw_fd());
        let key = self.w.core.accept(peer, fd.as_raw_fd(), secure);
        if self.conns.len() <= key {
            self.conns.resize_with(key + 1, ConnIo::default);
        }
        let raw = fd.as_raw_fd();
        self.conns[key] = ConnIo { fd: Some(fd), ..ConnIo::default() };
        self.register_fixed(key, raw);
        self.parked.remove(&(key as u32));
        self.arm_recv(key);
    }

    fn on_recv(&mut self, key: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more {
            if let Some(c) = self.conns.get_mut(key) {
                c.recv_armed = false;
            }
        }
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else { return };
            let piece = self.bufs.take(bid, res as usize, cqueue::buffer_more(flags));
            let dying = self.conns.get(key).is_none_or(|c| c.dying);
            let mut lend = Lend { ring: &mut self.bufs, piece };
            let mut after = After::Continue;
            if !dying {
                let Lend { ring, piece } = &mut lend;
                let data = ring.bytes_mut(piece);
                if !self.w.core.wants_read(key) || self.parked.contains_key(&(key as u32)) {
                    // Posted after the pause (or behind bytes that were): keep it for later.
                    self.parked.entry(key as u32).or_default().push_back(data.to_vec());
                    after = After::StopReading;
                } else {
                    after = self.w.core.on_data(key, data);
                }
            }
            drop(lend);
            if after == After::StopReading && !self.w.core.wants_read(key) {
                self.pause_recv(key);
            }
            if !more {
                self.rearm.push(key as u32);
            }
            self.maybe_close(key);
            return;
        }
        if res == 0 {
            if !self.conns.get(key).is_none_or(|c| c.dying) {
                self.w.core.on_hangup(key);
            }
        } else {
            match -res {
                libc::ENOBUFS => {
                    self.w.stats().buffer_shortages.fetch_add(1, Ordering::Relaxed);
                    // The ring ran dry; every buffer goes back as its completion is handled,
                    // so re-arm at the end of this turn.
                    self.rearm.push(key as u32);
                }
                // The receive was cancelled (a pause, or the connection is dying). If the
                // connection drained before this arrived, its resume found the receive still
                // armed and did nothing: read again at the end of this turn.
                libc::ECANCELED => self.rearm.push(key as u32),
                _ => {
                    if !self.conns.get(key).is_none_or(|c| c.dying) {
                        self.w.core.on_hangup(key);
                    }
                }
            }
        }
        self.maybe_close(key);
    }

    fn pause_recv(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.recv_armed && !c.cancelling && !c.dying {
            c.cancelling = true;
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(RECV | key as u64))
                .build()
                .user_data(CANCEL_PAUSE | key as u64);
            self.push(sqe);
        }
    }

    fn on_send(&mut self, key: usize, res: i32) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.send == NO_SEND {
            return;
        }
        let fl = self.sends.remove(std::mem::replace(&mut c.send, NO_SEND) as usize);
        if let Some(m) = fl.msg {
            if self.msgs.len() < MAX_SPARE_MSGS {
                self.msgs.push(m);
            }
        }
        let mut resume = false;
        if c.dying || res < 0 {
            if !c.dying {
                self.w.core.on_write_error(key);
            }
            // The core gives the flight's bytes back to the memory budget (nothing is sent
            // again: the connection is dead), then the socket closes.
            let _ = self.w.core.on_send_done(key, fl.q, 0, &mut resume);
            self.maybe_close(key);
            return;
        }
        if let Some(q) = self.w.core.on_send_done(key, fl.q, res as usize, &mut resume) {
            self.submit_send(key, q);
        }
        if resume {
            // At the end of the turn: what was parked during the pause goes first.
            self.rearm.push(key as u32);
        }
    }

    fn submit_send(&mut self, key: usize, q: Box<OutQ>) {
        let Some(fd) = self.conns.get(key).and_then(|c| c.fd.as_ref()).map(|f| f.as_raw_fd())
        else {
            return;
        };
        let (sqe, msg) = if let Some(bytes) = q.single() {
            let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
            let slot = self.slot(key);
            let sqe = if len as usize >= self.zc_threshold {
                on_socket!(slot, fd, |t| opcode::SendZc::new(t, ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build())
                .user_data(SEND_ZC | key as u64)
            } else {
                on_socket!(slot, fd, |t| opcode::Send::new(t, ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build())
                .user_data(SEND | key as u64)
            };
            (sqe, None)
        } else {
            // Owned bytes and shared frames: one SENDMSG over all of them (as many as one
            // call's iovecs hold; the rest follows when it completes).
            let mut m = self.msgs.pop().unwrap_or_else(MsgBuf::new);
            let mut iov = [IoSlice::new(&[]); WRITE_SLICES];
            let n = q.slices(&mut iov);
            for (dst, src) in m.iov.iter_mut().zip(&iov[..n]) {
                *dst =
                    libc::iovec { iov_base: src.as_ptr() as *mut libc::c_void, iov_len: src.len() };
            }
            m.hdr.msg_iov = m.iov.as_mut_ptr();
            m.hdr.msg_iovlen = n;
            let sqe = on_socket!(self.slot(key), fd, |t| opcode::SendMsg::new(t, &m.hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build())
            .user_data(SEND | key as u64);
            (sqe, Some(m))
        };
        // The queue moves into the table; the heap memory the kernel reads (its buffer, the
        // shared frames it holds, the boxed header) does not move.
        self.conns[key].send = self.sends.insert(Flight { q, msg }) as u32;
        self.push(sqe);
    }

    /// Reads again: first the bytes parked during a pause, one buffer at a time while the
    /// core wants more, then (all of them handed over) the socket.
    fn resume_recv(&mut self, key: usize) {
        let k = key as u32;
        if self.conns.get(key).is_none_or(|c| c.dying) {
            self.parked.remove(&k);
            return;
        }
        if let Some(q) = self.parked.get_mut(&k) {
            while self.w.core.wants_read(key) {
                let Some(mut chunk) = q.pop_front() else { break };
                self.w.core.on_data(key, &mut chunk);
            }
            if !q.is_empty() {
                return; // paused again: the rest waits for the next resume
            }
            self.parked.remove(&k);
        }
        if self.w.core.wants_read(key) {
            self.arm_recv(key);
        }
    }

    /// Closes and frees a dying connection once nothing of it is in flight.
    fn maybe_close(&mut self, key: usize) {
        let Some(c) = self.conns.get(key) else { return };
        if c.dying && !c.busy() && c.fd.is_some() {
            self.unregister_fixed(key);
            self.conns[key].fd = None;
            self.parked.remove(&(key as u32));
            self.w.core.remove(key);
        }
    }

    fn settle(&mut self) {
        self.gather();
        loop {
            let mut work = std::mem::take(&mut self.work);
            let mut progress = false;
            self.w.core.take_dirty(&mut work);
            for &k in &work {
                let k = k as usize;
                if self.conns.get(k).is_some_and(|c| c.send == NO_SEND && !c.dying) {
                    if let Some(q) = self.w.core.take_out(k) {
                        self.submit_send(k, q);
                    }
                }
            }
            progress |= !work.is_empty();
            work.clear();
            self.w.core.take_shut(&mut work);
            for &k in &work {
                if let Some(fd) = self.conns.get(k as usize).and_then(|c| c.fd.as_ref()) {
                    // SAFETY: shutdown on a descriptor we own; no memory is passed.
                    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
                }
                // Closed: it reads to EOF and discards, parked bytes included.
                self.parked.remove(&k);
                self.arm_recv(k as usize);
            }
            progress |= !work.is_empty();
            work.clear();
            self.w.core.take_dead(&mut work);
            for &k in &work {
                let k = k as usize;
                let Some(c) = self.conns.get_mut(k) else {
                    self.w.core.remove(k);
                    continue;
                };
                c.dying = true;
                if let Some(fd) = c.fd.as_ref().map(|f| f.as_raw_fd()) {
                    if self.w.core.must_reset(k) {
                        super::sys::reset_on_close(fd);
                    }
                    if c.recv_armed || c.send != NO_SEND {
                        let sqe = opcode::AsyncCancel2::new(
                            types::CancelBuilder::fd(types::Fd(fd)).all(),
                        )
                        .build()
                        .user_data(CANCEL);
                        self.push(sqe);
                    }
                }
                self.maybe_close(k);
            }
            progress |= !work.is_empty();
            work.clear();
            let mut rearm = std::mem::take(&mut self.rearm);
            for &k in &rearm {
                if self.w.core.wants_read(k as usize) {
                    self.resume_recv(k as usize);
                }
            }
            // Parked bytes handed to the core may have queued sends: another pass.
            progress |= !rearm.is_empty();
            rearm.clear();
            self.rearm = rearm;
            self.work = work;
            if !progress {
                break;
            }
        }
    }

    /// Cancels everything, waits for every completion, then frees the ring before the memory
    /// it points into; what has not completed by then is leaked, not freed. Runs once.
    fn teardown(&mut self) {
        if std::mem::replace(&mut self.torn_down, true) {
            return;
        }
        #[cfg(test)]
        hooks::TEARDOWNS.with(|c| c.set(c.get() + 1));
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(CANCEL);
        self.push(sqe);
        let deadline = Instant::now() + teardown_wait();
        while self.outstanding > 0 && Instant::now() < deadline {
            let ts = types::Timespec::new().nsec(50_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
            while let Some((_, _, flags)) = self.cqes.pop_front() {
                self.outstanding = self.outstanding.saturating_sub(1);
                if cqueue::more(flags) {
                    self.outstanding += 1;
                }
            }
        }
        for c in &mut self.conns {
            c.fd = None;
        }
        let leaked = self.outstanding > 0;
        if self.fixed_files > 0 {
            // The table's references would keep the sockets open until the ring is freed.
            let _ = self.ring.submitter().unregister_files();
        }
        if let Some(i) = self.ring_index.take() {
            debug_assert_eq!(
                std::thread::current().id(),
                self.ring_thread,
                "teardown off the ring's thread"
            );
            unregister_ring(&self.ring, i);
        }
        // SAFETY: dropped exactly once, here; nothing uses the ring afterwards.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        if leaked {
            // Operations that never completed may still reference the buffers: leak them.
            log::warn!("io_uring teardown: {} operations did not complete", self.outstanding);
            for b in self.sends.drain() {
                #[cfg(test)]
                hooks::LEAKED_SENDS.with(|c| c.set(c.get() + 1));
                std::mem::forget(b);
            }
            // `bufs` stays in its ManuallyDrop: the ring and its buffers are leaked too.
            return;
        }
        self.bufs.free();
        // SAFETY: dropped exactly once; the ring that used it is gone.
        unsafe { ManuallyDrop::drop(&mut self.bufs) };
    }
}

/// Whatever ends the loop, a normal return or a panic unwinding out of `Loop::run`, the
/// kernel must be done with the memory it was lent before any of it is freed: `sends` and
/// the buffer ring are fields that would otherwise be dropped under operations in flight.
impl<H: Handler> Drop for Loop<H> {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// How long teardown waits for cancelled operations to complete.
fn teardown_wait() -> Duration {
    #[cfg(test)]
    if let Some(d) = hooks::TEARDOWN_WAIT.with(|w| w.get()) {
        return d;
    }
    Duration::from_secs(2)
}

impl Drop for BufRing {
    fn drop(&mut self) {
        self.free();
    }
}

fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: the descriptor is borrowed for the call only; ManuallyDrop keeps it open.
    let s = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    s.peer_addr().ok()
}

fn set_nodelay(fd: RawFd) {
    // SAFETY: the descriptor is borrowed for the call only; ManuallyDrop keeps it open.
    let s = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    let _ = s.set_nodelay(true);
}

/// Test-only counters and knobs, per thread (a loop lives on one thread; tests run in parallel).
#[cfg(test)]
mod hooks {
    use std::cell::Cell;
    use std::time::Duration;

    thread_local! {
        /// Teardowns run on this thread.
        pub(super) static TEARDOWNS: Cell<usize> = const { Cell::new(0) };
        /// Send buffers teardown leaked (forgot) because their operation had not completed.
        pub(super) static LEAKED_SENDS: Cell<usize> = const { Cell::new(0) };
        /// Overrides how long teardown waits for completions.
        pub(super) static TEARDOWN_WAIT: Cell<Option<Duration>> = const { Cell::new(None) };
        /// Makes buffer rings register as a kernel before 6.12 would (no incremental mode).
        pub(super) static PLAIN_RING: Cell<bool> = const { Cell::new(false) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use crate::io::test_support::{core, Nop};

    /// A loop on this thread, as a worker makes it (one listener).
    fn new_loop() -> Loop<Nop> {
        let (core, cfg) = core();
        let (_tx, rx) = crossbeam_channel::unbounded();
        let prep = Prep::new(vec![(TcpListener::bind("127.0.0.1:0").expect("bind"), false)], rx)
            .expect("prep");
        prep.into_loop(core, &cfg, Arc::new(WorkerStats::default())).expect("io_uring loop")
    }

    /// Where the kernel has them (6.13 for the table, see `register_file_table`; 5.18), a
    /// loop registers a file table and its ring's
    /// descriptor; teardown gives the registration back, or the thread's 16 would run out
    /// after as many loops (a worker's thread makes one, tests many).
    #[test]
    fn loops_register_their_files_and_ring_and_give_the_ring_back() {
        if let Err(e) = probe() {
            eprintln!("skipped: {e}");
            return;
        }
        let kernel = kernel_version().unwrap_or((0, 0));
        for i in 0..20 {
            let w = new_loop();
            if kernel >= (6, 13) {
                assert!(w.fixed_files > 0, "loop {i}: no file table");
            }
            if kernel >= (5, 18) {
                assert!(w.ring_index.is_some(), "loop {i}: the ring is not registered");
            }
            drop(w);
        }
    }

    /// A loop on this thread, with one connection (key 0) whose peer never reads and a send
    /// to it in flight: the socket is full before the send is submitted, so the kernel holds
    /// the send's buffer. Returns the loop and the peer (which must stay open).
    fn loop_with_send_in_flight() -> (Loop<Nop>, UnixStream) {
        let mut w = new_loop();

        // A Unix stream pair, not TCP: once full it stays full while the peer does not read
        // (on loopback TCP the kernel may still free room after a refused write: ACKs,
        // the receiver collapsing its queue, autotuning), so the send cannot complete.
        let (mut s, peer) = UnixStream::pair().expect("socketpair");
        s.set_nonblocking(true).expect("nonblocking");
        let chunk = [0x55u8; 1 << 16];
        loop {
            match s.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the socket: {e}"),
            }
        }
        w.conns.push(ConnIo { fd: Some(OwnedFd::from(s)), ..ConnIo::default() });
        let mut q = Box::<OutQ>::default();
        q.bytes_mut().resize(1 << 20, 0xaa);
        w.submit_send(0, q);
        w.ring.submit().expect("submit");
        w.reap();
        assert!(w.cqes.is_empty(), "the send completed at once: {:?}", w.cqes);
        assert_eq!((w.outstanding, w.sends.len()), (1, 1), "one send in flight");
        (w, peer)
    }

    /// Incremental consumption against the kernel: receives into a 4 KiB buffer take only the
    /// bytes they carry, one after the other in the same buffer, which stays with the kernel
    /// (`IORING_CQE_F_BUF_MORE`) until a receive fills it; the next receive starts in the next
    /// buffer, and the full one is back in our hands.
    #[test]
    fn receives_consume_a_provided_buffer_piece_by_piece() {
        if let Err(e) = probe() {
            eprintln!("skipped: {e}");
            return;
        }
        if kernel_version().unwrap_or((0, 0)) < (6, 12) {
            eprintln!("skipped: incremental buffer consumption needs kernel 6.12");
            return;
        }
        let mut ring = IoUring::new(8).expect("io_uring");
        let mut br = BufRing::new(&ring, 2, 4096).expect("buffer ring");
        assert!(br.incremental, "kernel 6.12+ refused IOU_PBUF_RING_INC");
        let (mut tx, rx) = UnixStream::pair().expect("socketpair");
        let sqe = opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), BGID).build().user_data(1);
        // SAFETY: the socket and the buffer ring outlive every completion reaped here.
        unsafe { ring.submission().push(&sqe) }.expect("push");
        let mut recv = |ring: &mut IoUring, bytes: &[u8]| {
            tx.write_all(bytes).expect("write");
            ring.submit_and_wait(1).expect("wait");
            let cqe = ring.completion().next().expect("a completion");
            assert!(cqe.result() > 0, "receive failed: {}", cqe.result());
            let bid = cqueue::buffer_select(cqe.flags()).expect("a provided buffer");
            (bid, cqe.result() as usize, cqueue::buffer_more(cqe.flags()))
        };
        let mut seen = Vec::new();
        for msg in [&b"hello"[..], b"world", &[0x42; 4086][..], b"next"] {
            let (bid, len, more) = recv(&mut ring, msg);
            let piece = br.take(bid, len, more);
            assert_eq!(br.bytes_mut(&piece), msg);
            seen.push((bid, piece.start - usize::from(bid) * 4096, piece.done));
        }
        let first = seen[0].0;
        assert_eq!(
            seen,
            [(first, 0, false), (first, 5, false), (first, 10, true), (1 - first, 0, false)],
            "(buffer, offset, given back) per receive"
        );
        assert_eq!(br.lent, 1, "the full buffer is ours, the other one the kernel's");
        br.unregister(&ring);
    }

    /// What `Loop::gather` relies on: on a ring with deferred task work (as the worker's), a
    /// receive whose bytes arrived is not run until the ring is entered for completions;
    /// a non-blocking enter for none (`min_complete` 0) runs those that are pending (in
    /// batches of 20 from 6.13: all three here).
    #[test]
    fn a_non_blocking_enter_runs_the_receives_already_pending() {
        if let Err(e) = probe() {
            eprintln!("skipped: {e}");
            return;
        }
        let Ok(mut ring) = IoUring::<squeue::Entry, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(8)
        else {
            eprintln!("skipped: no deferred task work (kernel 6.1)");
            return;
        };
        let br = BufRing::new(&ring, 4, 4096).expect("buffer ring");
        let pairs: Vec<_> = (0..3).map(|_| UnixStream::pair().expect("socketpair")).collect();
        for (i, (_, rx)) in pairs.iter().enumerate() {
            let sqe =
                opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), BGID).build().user_data(i as u64);
            // SAFETY: the sockets and the buffer ring outlive every completion reaped here.
            unsafe { ring.submission().push(&sqe) }.expect("push");
        }
        ring.submit().expect("submit");
        for (tx, _) in &pairs {
            (&*tx).write_all(b"ping").expect("write");
        }
        ring.submit().expect("submit");
        assert_eq!(ring.completion().count(), 0, "deferred receives ran without an enter for them");
        // SAFETY: io_uring_enter with no argument and nothing queued.
        unsafe { ring.submitter().enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None) }
            .expect("enter");
        let mut got: Vec<_> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        got.sort();
        assert_eq!(got, [(0, 4), (1, 4), (2, 4)], "every pending receive completed at once");
        br.unregister(&ring);
    }

    /// A wake-up (another thread queued a command) that the gather of a fan-out turn takes,
    /// after the turn read its commands, still ends the next wait at once (else the command
    /// would wait for unrelated I/O).
    #[test]
    fn a_wake_up_the_gather_takes_still_ends_the_next_wait() {
        if let Err(e) = probe() {
            eprintln!("skipped: {e}");
            return;
        }
        let mut l = new_loop();
        Driver::start(&mut l);
        // Submits the accept and the eventfd poll (nothing completes).
        l.wait_and_complete(Some(Duration::from_millis(20))).expect("wait");
        // This turn fanned out to enough subscribers to gather.
        l.turn_deliveries = l.w.core.deliveries().wrapping_sub(super::super::GATHER_MIN_DELIVERIES);
        l.efd.wake().expect("wake");
        Driver::settle(&mut l);
        assert!(l.rewake, "the gather did not take the wake-up: the test proves nothing");
        let t = Instant::now();
        l.wait_and_complete(Some(Duration::from_secs(2))).expect("wait");
        assert!(t.elapsed() < Duration::from_secs(1), "the wait slept over a wake-up");
        l.teardown();
    }

    /// `uring_buffers` and `uring_buffer_size` 0 pick the ring the kernel's mode calls for:
    /// 4 large buffers consumed incrementally, or, where the kernel lacks that mode (forced
    /// here), 128 whole ones of 64 KiB.
    #[test]
    fn automatic_ring_size_follows_the_kernels_mode() {
        if let Err(e) = probe() {
            eprintln!("skipped: {e}");
            return;
        }
        let ring = IoUring::new(8).expect("io_uring");
        hooks::PLAIN_RING.with(|p| p.set(true));
        let plain = BufRing::new(&ring, 0, 4096).expect("plain ring");
        assert!(!plain.incremental);
        assert_eq!((plain.entries, plain.lent), (AUTO_URING_BUFFERS, 128));
        plain.unregister(&ring);
        let plain = BufRing::new(&ring, 0, 0).expect("plain ring, automatic size");
        hooks::PLAIN_RING.with(|p| p.set(false));
        assert_eq!((plain.entries, plain.size), (AUTO_URING_BUFFERS, AUTO_URING_BUFFER_SIZE));
        plain.unregister(&ring);
        let fixed = BufRing::new(&ring, 4, 4096).expect("4 buffers");
        assert_eq!(fixed.entries, 4, "an explicit count is kept whatever the mode");
        fixed.unregister(&ring);
        if kernel_version().unwrap_or((0, 0)) >= (6, 12) {
            let inc = BufRing::new(&ring, 0, 4096).expect("incremental ring");
            assert!(inc.incremental);
            assert_eq!((inc.entries, inc.lent), (AUTO_URING_BUFFERS_INC, 4));
            assert_eq!(inc.size, 4096, "an explicit size is kept");
            inc.unregister(&ring);
            let inc = BufRing::new(&ring, 0, 0).expect("incremental ring, automatic size");
            assert_eq!(
                (inc.entries, inc.size),
                (AUTO_URING_BUFFERS_INC, AUTO_URING_BUFFER_SIZE_INC)
            );
            inc.unregister(&ring);
        }
    }

    /// A panic unwinding out of the loop still tears it down: it waits for what is in flight
    /// and leaks (never frees) the buffers of operations that did not complete.
    #[test]
    fn unwinding_out_of_the_loop_tears_down_and_leaks_what_is_in_flight() {
        if let Err(e) = probe() {
            eprintln!("skipped: {e}");
            return;
        }
        hooks::TEARDOWN_WAIT.with(|w| w.set(Some(Duration::ZERO)));
        let (w, _peer) = loop_with_send_in_flight();
        let (t0, l0) = (hooks::TEARDOWNS.with(|c| c.get()), hooks::LEAKED_SENDS.with(|c| c.get()));
        let r = catch_unwind(AssertUnwindSafe(move || {
            let _w = w;
            panic!("a fault inside the loop");
        }));
        assert!(r.is_err());
        assert_eq!(hooks::TEARDOWNS.with(|c| c.get()) - t0, 1, "teardown did not run on unwind");
        assert_eq!(
            hooks::LEAKED_SENDS.with(|c| c.get()) - l0,
            1,
            "the in-flight send's buffer was not leaked"
        );

        // With time to wait, the cancelled send completes first: nothing is leaked.
        hooks::TEARDOWN_WAIT.with(|w| w.set(None));
        let (w, _peer) = loop_with_send_in_flight();
        let (t0, l0) = (hooks::TEARDOWNS.with(|c| c.get()), hooks::LEAKED_SENDS.with(|c| c.get()));
        let r = catch_unwind(AssertUnwindSafe(move || {
            let _w = w;
            panic!("a fault inside the loop");
        }));
        assert!(r.is_err());
        assert_eq!(hooks::TEARDOWNS.with(|c| c.get()) - t0, 1, "teardown did not run on unwind");
        assert_eq!(hooks::LEAKED_SENDS.with(|c| c.get()) - l0, 0, "leaked a completed send");
    }
}
