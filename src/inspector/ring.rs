//! One AF_PACKET socket with a TPACKET_V3 receive ring, bound to one interface.
//!
//! Why a V3 ring: the kernel strips the outer VLAN tag of received frames
//! (`skb_vlan_untag`) and a parent with VLAN TX offload hands the tag of sent frames over as
//! metadata too; the ring header carries that tag (`tp_vlan_tci`, `tp_vlan_tpid`) next to the
//! direction (`sockaddr_ll.sll_pkttype`), so no control message per frame is needed, and the
//! kernel fills whole blocks between wake-ups (measured here ~1.6x the rate of poll + recv).
//! Snap length is applied by a one-instruction classic BPF socket filter (`ret #snaplen`),
//! the way libpcap does it: the kernel copies only that many bytes into the ring, while
//! `tp_len` still holds the frame's full length.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

/// `TP_STATUS_VLAN_VALID`: `tp_vlan_tci` holds a tag.
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
/// `TP_STATUS_VLAN_TPID_VALID`: `tp_vlan_tpid` holds the tag's TPID (else assume 0x8100).
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_KERNEL: u32 = 0;
const TPACKET_V3: libc::c_int = 2;
const ETH_P_ALL: u16 = 0x0003;
/// Where `sockaddr_ll` sits after a `tpacket3_hdr` (TPACKET_ALIGN(sizeof(tpacket3_hdr))).
const SLL_OFFSET: usize = (std::mem::size_of::<libc::tpacket3_hdr>() + 15) & !15;

/// Direction of a captured frame, from `sll_pkttype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received from the wire (any packet type but `PACKET_OUTGOING`).
    Rx,
    /// Sent by this host (`PACKET_OUTGOING`).
    Tx,
}

/// The tag the kernel took out of the frame and passed as metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaTag {
    pub tpid: u16,
    pub tci: u16,
}

/// One frame as the ring hands it over; `data` borrows the ring until the next call.
pub struct RawFrame<'a> {
    pub direction: Direction,
    pub meta_tag: Option<MetaTag>,
    /// Length of the frame on the wire (before snap), tag metadata not included.
    pub wire_len: u32,
    /// Capture time, nanoseconds since the Unix epoch (0 if the kernel gave none).
    pub ts_ns: u64,
    pub data: &'a [u8],
}

/// Ring sizing.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Bytes copied per frame (the filter's return value); at least 64.
    pub snap_len: u32,
    pub block_size: u32,
    pub block_count: u32,
    /// Milliseconds after which the kernel hands over a partly filled block.
    pub block_timeout_ms: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            snap_len: 128,
            block_size: 1 << 20,
            block_count: 8,
            block_timeout_ms: 20,
        }
    }
}

/// Kernel counters of the socket (read and reset by each call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    pub packets: u32,
    pub drops: u32,
}

pub struct Ring {
    fd: OwnedFd,
    map: NonNull<u8>,
    map_len: usize,
    block_size: usize,
    block_count: usize,
    current_block: usize,
    ifname: String,
    /// The interface index the socket was bound to.
    index: u32,
}

// SAFETY: the mapping is owned by this value only; moving it to another thread is fine.
unsafe impl Send for Ring {}

fn os_err(ifname: &str, what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what} on {ifname}: {e}"))
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> libc::c_int {
    // SAFETY: `value` points to a live T of the size passed; the kernel copies it.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    }
}

/// The interface index of `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name holds NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(os_err(ifname, "looking up interface"));
    }
    Ok(index)
}

/// A raw AF_PACKET socket that is not bound yet (receives nothing: protocol 0).
pub(crate) fn packet_socket(ifname: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(os_err(ifname, "opening an AF_PACKET socket"));
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

pub(crate) fn bind(fd: &OwnedFd, ifname: &str, index: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = index as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err(ifname, "binding the AF_PACKET socket"));
    }
    Ok(())
}

impl Ring {
    /// Opens the socket, sets snap length and ring, binds it to `ifname` (all protocols).
    pub fn open(ifname: &str, cfg: RingConfig) -> io::Result<Ring> {
        let index = ifindex(ifname)?;
        let fd = packet_socket(ifname)?;
        let version: libc::c_int = TPACKET_V3;
        if setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version) != 0 {
            return Err(os_err(ifname, "setting TPACKET_V3"));
        }
        let snap_len = cfg.snap_len.max(64);
        let mut filter = [libc::sock_filter {
            code: 0x06, // BPF_RET | BPF_K
            jt: 0,
            jf: 0,
            k: snap_len,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: filter.as_mut_ptr(),
        };
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog) != 0 {
            return Err(os_err(ifname, "attaching the snap-length filter"));
        }
        // Frames are 16-byte aligned slots: header + sockaddr_ll + snap bytes.
        let frame_size = ((SLL_OFFSET
            + std::mem::size_of::<libc::sockaddr_ll>()
            + snap_len as usize
            + 15)
            & !15) as u32;
        let block_size = cfg.block_size.max(4096).next_power_of_two();
        let req = libc::tpacket_req3 {
            tp_block_size: block_size,
            tp_block_nr: cfg.block_count.max(2),
            tp_frame_size: frame_size.next_power_of_two().min(block_size),
            tp_frame_nr: (block_size / frame_size.next_power_of_two().min(block_size))
                * cfg.block_count.max(2),
            tp_retire_blk_tov: cfg.block_timeout_ms.max(1),
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        if setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req) != 0 {
            return Err(os_err(ifname, "setting up the TPACKET_V3 ring"));
        }
        let map_len = block_size as usize * req.tp_block_nr as usize;
        // The ring's pages are kernel memory: never swapped, so no MAP_LOCKED.
        // SAFETY: maps the ring the kernel just allocated for this fd; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(os_err(ifname, "mapping the capture ring"));
        }
        let map = NonNull::new(map.cast::<u8>()).ok_or_else(|| {
            io::Error::other(format!("mapping the capture ring on {ifname}: null"))
        })?;
        let ring = Ring {
            fd,
            map,
            map_len,
            block_size: block_size as usize,
            block_count: req.tp_block_nr as usize,
            current_block: 0,
            ifname: ifname.to_string(),
            index,
        };
        bind(&ring.fd, ifname, index, ETH_P_ALL)?;
        Ok(ring)
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    fn block(&self, i: usize) -> *mut libc::tpacket_block_desc {
        // SAFETY: i < block_count, so the offset stays inside the mapping.
        unsafe { self.map.as_ptr().add(i * self.block_size).cast() }
    }

    fn block_status(&self, i: usize) -> u32 {
        // SAFETY: the block header lies in the mapping; the kernel writes block_status,
        // so it is read volatile.
        let status =
            unsafe { std::ptr::addr_of!((*self.block(i)).hdr.bh1.block_status).read_volatile() };
        fence(Ordering::Acquire);
        status
    }

    /// Waits up to `timeout_ms` for the next block to be filled; true when it is.
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<bool> {
        let i = self.current_block;
        if self.block_status(i) & TP_STATUS_USER != 0 {
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLERR,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(io::Error::new(
                e.kind(),
                format!("polling the capture ring on {}: {e}", self.ifname),
            ));
        }
        if rc > 0 && pfd.revents & libc::POLLERR != 0 {
            // The kernel reports the interface going down as a socket error (ENETDOWN), and
            // poll returns at once until the error is read: left unread, the caller would
            // spin. Once read, capture resumes by itself when the interface comes back up.
            self.take_error();
        }
        Ok(self.block_status(i) & TP_STATUS_USER != 0)
    }

    /// Reads (and so clears) the socket's pending error.
    fn take_error(&self) {
        let mut error: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `error` and `len` are live and sized for SO_ERROR's int.
        unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut error as *mut libc::c_int).cast(),
                &mut len,
            );
        }
    }

    /// Whether the interface was deleted: the kernel then unbinds the socket for good (its
    /// index reads -1), and an interface of that name coming back is a new one that needs a
    /// new socket.
    pub fn interface_gone(&self) -> bool {
        // SAFETY: sockaddr_ll is plain data; zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `sll` and `len` are live and sized for the address the kernel writes.
        let rc = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut sll as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        rc == 0 && sll.sll_ifindex != self.index as i32
    }

    /// Waits up to `timeout_ms` for a filled block and calls `each` for every frame in it;
    /// returns how many frames were handed over (0 on timeout or EINTR).
    pub fn next_block(
        &mut self,
        timeout_ms: i32,
        mut each: impl FnMut(RawFrame<'_>),
    ) -> io::Result<usize> {
        if !self.wait(timeout_ms)? {
            return Ok(0);
        }
        let i = self.current_block;
        let block = self.block(i);
        // SAFETY: the block belongs to user space while TP_STATUS_USER is set; the
        // kernel-written offsets are bounds-checked against the block before use.
        let (num_pkts, first) = unsafe {
            (
                (*block).hdr.bh1.num_pkts as usize,
                (*block).hdr.bh1.offset_to_first_pkt as usize,
            )
        };
        let base = block.cast::<u8>();
        let mut offset = first;
        let hdr_len = std::mem::size_of::<libc::tpacket3_hdr>();
        for _ in 0..num_pkts {
            if offset + SLL_OFFSET + std::mem::size_of::<libc::sockaddr_ll>() > self.block_size {
                break;
            }
            // SAFETY: offset + header lies inside the block (checked above); the header is
            // 4-byte aligned by the kernel (TPACKET_ALIGN).
            let hdr = unsafe { &*base.add(offset).cast::<libc::tpacket3_hdr>() };
            // SAFETY: sockaddr_ll follows the aligned header inside the block (checked above).
            let pkttype =
                unsafe { (*base.add(offset + SLL_OFFSET).cast::<libc::sockaddr_ll>()).sll_pkttype };
            let mac = hdr.tp_mac as usize;
            let snap = hdr.tp_snaplen as usize;
            if mac >= hdr_len && offset + mac + snap <= self.block_size {
                // SAFETY: [offset+mac, offset+mac+snap) lies inside the block (checked).
                let data = unsafe { std::slice::from_raw_parts(base.add(offset + mac), snap) };
                let status = hdr.tp_status;
                let meta_tag = if status & TP_STATUS_VLAN_VALID != 0 {
                    Some(MetaTag {
                        tpid: if status & TP_STATUS_VLAN_TPID_VALID != 0 {
                            hdr.hv1.tp_vlan_tpid
                        } else {
                            0x8100
                        },
                        tci: hdr.hv1.tp_vlan_tci as u16,
                    })
                } else {
                    None
                };
                each(RawFrame {
                    direction: if pkttype == libc::PACKET_OUTGOING {
                        Direction::Tx
                    } else {
                        Direction::Rx
                    },
                    meta_tag,
                    wire_len: hdr.tp_len,
                    ts_ns: u64::from(hdr.tp_sec) * 1_000_000_000 + u64::from(hdr.tp_nsec),
                    data,
                });
            }
            if hdr.tp_next_offset == 0 {
                break;
            }
            offset += hdr.tp_next_offset as usize;
        }
        fence(Ordering::Release);
        // SAFETY: hands the block back to the kernel; no reference into it outlives `each`.
        unsafe {
            std::ptr::addr_of_mut!((*block).hdr.bh1.block_status).write_volatile(TP_STATUS_KERNEL);
        }
        self.current_block = (i + 1) % self.block_count;
        Ok(num_pkts)
    }

    /// Frames received and dropped by the kernel since the last call (PACKET_STATISTICS).
    pub fn stats(&self) -> io::Result<RingStats> {
        // SAFETY: plain data, zero is valid.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` is writable and `len` holds its size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(os_err(&self.ifname, "reading PACKET_STATISTICS"));
        }
        Ok(RingStats {
            packets: st.tp_packets,
            drops: st.tp_drops,
        })
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; nothing borrows it any more.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

/// Sends one raw frame out of `ifname` (as egress there), e.g. a test frame or a probe into a
/// tap. A plain AF_PACKET send: the frame leaves exactly as given, tags inline.
pub struct Sender {
    fd: OwnedFd,
    ifname: String,
}

impl Sender {
    pub fn open(ifname: &str) -> io::Result<Sender> {
        let index = ifindex(ifname)?;
        let fd = packet_socket(ifname)?;
        // Bound with protocol 0: the socket transmits and never queues received frames.
        bind(&fd, ifname, index, 0)?;
        Ok(Sender {
            fd,
            ifname: ifname.to_string(),
        })
    }

    /// Skips the qdisc (PACKET_QDISC_BYPASS); for benchmarks replaying at full speed.
    pub fn bypass_qdisc(&self) -> io::Result<()> {
        let one: libc::c_int = 1;
        if setsockopt(&self.fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one) != 0 {
            return Err(os_err(&self.ifname, "setting PACKET_QDISC_BYPASS"));
        }
        Ok(())
    }

    /// Sends `count` copies of `frame` with one `sendmmsg` call; returns how many went out.
    pub fn send_copies(&self, frame: &[u8], count: usize) -> io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        };
        // SAFETY: mmsghdr is plain data; zero is valid.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..count).map(|_| unsafe { std::mem::zeroed() }).collect();
        for m in &mut msgs {
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points to the one iovec over `frame`, which outlives the
        // call; the kernel only reads from it.
        let rc = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            return Err(os_err(&self.ifname, "sending frames"));
        }
        Ok(rc as usize)
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a valid buffer of the length passed.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if rc < 0 {
            return Err(os_err(&self.ifname, "sending a frame"));
        }
        Ok(())
    }
}
