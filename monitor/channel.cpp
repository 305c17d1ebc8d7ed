// The monitor's side of the event channel (the shm rings file) and of the control channel (a unix
// SOCK_SEQPACKET socket served by one thread). Runs at install time and on the control thread only.
// Only a peer with our uid is served (SO_PEERCRED); one consumer at a time; every message is
// validated by apply_control() before anything changes; a closed connection counts as the
// consumer's death: sync waits end and sync actions degrade to async until the next attach.
#include "monitor.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace hvtrace::monitor {
namespace {

std::string errno_text(const char* what, const std::string& path) {
  return std::string(what) + " " + path + ": " + std::strerror(errno);
}

void set_gone(Monitor& m, bool gone) {
  abi::aref(m.consumer_gone).store(gone ? 1u : 0u, std::memory_order_release);
  if (gone) {
    // Wake vCPUs blocked in a sync wait so they notice at once.
    for (unsigned i = 0; i < m.max_vcpus; ++i) {
      if (!m.vcpus[i].has_ring) continue;
      auto* h = m.vcpus[i].prod.header();
      abi::aref(h->ack_futex).fetch_add(1, std::memory_order_relaxed);
      abi::futex_wake(&h->ack_futex);
    }
  }
}

void reply(int fd, const abi::CtlHeader& req, abi::CtlStatus st, const std::string& why, const Monitor& m,
           bool stats) {
  abi::Reply r{};
  r.hdr = abi::CtlHeader{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion), req.type, sizeof(abi::Reply),
                         req.request_id};
  r.status = static_cast<std::int32_t>(st);
  r.generation = m.current.load(std::memory_order_acquire)->generation;
  std::snprintf(r.message, sizeof r.message, "%s", why.c_str());
  if (stats) {
    r.rejected_messages = m.rejected.load();
    r.user_syscalls = qemu_plugin_u64_sum(m.f_user_syscalls);
    r.cr3_writes = qemu_plugin_u64_sum(m.f_cr3_writes);
    r.user_int80s = qemu_plugin_u64_sum(m.f_user_int80s);
    r.user_sysenters = qemu_plugin_u64_sum(m.f_user_sysenters);
  }
  (void)send(fd, &r, sizeof r, MSG_NOSIGNAL);
}

// Serve one message; false if the connection should close.
bool serve_message(Monitor& m, int fd) {
  alignas(8) std::uint8_t buf[abi::kMaxCtlMessage + 8];
  const ssize_t n = recv(fd, buf, sizeof buf, MSG_TRUNC);
  if (n <= 0) return false;
  abi::CtlHeader req{};
  std::memcpy(&req, buf, std::min<std::size_t>(sizeof req, static_cast<std::size_t>(n)));
  if (static_cast<std::size_t>(n) > sizeof buf) {
    m.rejected.fetch_add(1);
    reply(fd, req, abi::CtlStatus::kBadSize, "message too long", m, false);
    return true;
  }
  const FilterConfig& cur = *m.current.load(std::memory_order_acquire);
  FilterConfig next;
  abi::CtlType type{};
  std::string why;
  const abi::CtlStatus st = apply_control(buf, static_cast<std::size_t>(n), cur, &next, &type, &why, m.opt.ring_bytes / 4);
  if (st != abi::CtlStatus::kOk) {
    m.rejected.fetch_add(1);
    reply(fd, req, st, why, m, false);
    return true;
  }
  switch (type) {
    case abi::CtlType::kAttach:
      m.attach_epoch.fetch_add(1);   // vCPUs forget the previous consumer's sync timeouts
      m.attached.store(true);
      set_gone(m, false);
      reply(fd, req, st, "attached", m, false);
      return true;
    case abi::CtlType::kDetach:
      m.attached.store(false);
      set_gone(m, true);
      reply(fd, req, st, "detached", m, false);
      return true;
    case abi::CtlType::kGetStats:
      reply(fd, req, st, "", m, true);
      return true;
    default:
      publish_config(m, next);
      if (type == abi::CtlType::kSetDtbs) drop_open_calls_filtered(m, next);
      if (type == abi::CtlType::kAddBreakpoint || type == abi::CtlType::kRemoveBreakpoint) breakpoints_changed(m, next);
      reply(fd, req, st, "applied", m, false);
      return true;
  }
}

void control_loop(Monitor* mp) {
  Monitor& m = *mp;
  int client = -1;
  for (;;) {
    pollfd fds[3] = {{m.stop_pipe[0], POLLIN, 0}, {m.listen_fd, POLLIN, 0}, {client, POLLIN, 0}};
    const int rc = poll(fds, client >= 0 ? 3 : 2, m.opt.icount || m.opt.count_checks ? 50 : -1);
    // icount=on, countchecks=on: the counts where a reader of the rings sees them (a benchmark
    // reads them while another consumer holds the control channel).
    if (m.opt.icount && m.shm_hdr)
      abi::aref(m.shm_hdr->guest_insns).store(qemu_plugin_u64_sum(m.f_insns), std::memory_order_release);
    if (m.opt.count_checks && m.shm_hdr) {
      abi::aref(m.shm_hdr->cond_checks).store(qemu_plugin_u64_sum(m.f_cond_checks), std::memory_order_release);
      abi::aref(m.shm_hdr->kernel_blocks).store(qemu_plugin_u64_sum(m.f_kernel_blocks), std::memory_order_release);
    }
    if (rc < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents) break;
    // The current client first: a consumer that just closed must not make its successor "busy".
    if (client >= 0 && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) {
      if (!serve_message(m, client)) {
        close(client);
        client = -1;
        // The consumer is gone (closed or died): nobody will ack, so no vCPU may wait.
        m.attached.store(false);
        set_gone(m, true);
      }
    }
    if (fds[1].revents & POLLIN) {
      const int c = accept4(m.listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        ucred cred{};
        socklen_t len = sizeof cred;
        if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != getuid()) {
          m.rejected.fetch_add(1);
          close(c);
        } else if (client >= 0) {
          abi::CtlHeader h{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion), 0, 0, 0};
          reply(c, h, abi::CtlStatus::kBusy, "another consumer is connected", m, false);
          close(c);
        } else {
          client = c;
        }
      }
    }
  }
  if (client >= 0) close(client);
}

}  // namespace

bool create_rings(Monitor& m, std::string* why) {
  const std::uint32_t n = m.max_vcpus;
  const std::uint32_t ds = m.opt.ring_bytes;
  m.shm_size = abi::shm_file_size(n, ds);
  const int fd = open(m.opt.shm_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    *why = errno_text("cannot create rings file", m.opt.shm_path);
    return false;
  }
  if (fchmod(fd, 0600) != 0 || ftruncate(fd, static_cast<off_t>(m.shm_size)) != 0) {
    *why = errno_text("cannot size rings file", m.opt.shm_path);
    close(fd);
    unlink(m.opt.shm_path.c_str());
    return false;
  }
  void* p = mmap(nullptr, m.shm_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    *why = errno_text("cannot map rings file", m.opt.shm_path);
    close(fd);
    unlink(m.opt.shm_path.c_str());
    return false;
  }
  m.shm_fd = fd;
  m.shm = static_cast<std::uint8_t*>(p);
  m.shm_hdr = reinterpret_cast<abi::ShmHeader*>(m.shm);
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint64_t off = abi::ring_header_offset(i, ds);
    auto* h = reinterpret_cast<abi::RingHeader*>(m.shm + off);
    abi::init_ring(*h, i, ds, off + abi::kPageSize);
    m.vcpus[i].prod = abi::RingProducer(h, m.shm + off + abi::kPageSize);
    m.vcpus[i].has_ring = true;
  }
  abi::ShmHeader& s = *m.shm_hdr;
  s.magic = abi::kShmMagic;
  s.abi_version = abi::kAbiVersion;
  s.header_size = sizeof(abi::ShmHeader);
  s.ring_header_size = sizeof(abi::RingHeader);
  s.n_rings = n;
  s.file_size = m.shm_size;
  s.monitor_pid = static_cast<std::uint32_t>(getpid());
  s.syscall_entry_va = m.opt.entry_va;
  s.door_entry_va[static_cast<unsigned>(abi::Door::kSyscall64)] = m.opt.entry_va;
  s.generation = 0;
  abi::aref(s.ready).store(1, std::memory_order_release);
  return true;
}

void publish_config(Monitor& m, const FilterConfig& next) {
  const FilterConfig* cur = m.current.load(std::memory_order_acquire);
  // A slot that is neither current nor announced by any vCPU. The pool has a slot per vCPU plus
  // two, and a vCPU announces at most one, so one pass always finds one.
  FilterConfig* slot = nullptr;
  for (auto& c : m.pool) {
    if (&c == cur) continue;
    bool busy = false;
    for (unsigned v = 0; v < m.max_vcpus && !busy; ++v)
      busy = m.vcpus[v].hazard.load(std::memory_order_seq_cst) == &c;
    if (!busy) {
      slot = &c;
      break;
    }
  }
  if (slot == nullptr) return;  // unreachable (kConfigPool > kMaxVcpus + 1)
  *slot = next;
  m.current.store(slot, std::memory_order_seq_cst);   // publish, then widen (arming.hpp)
  if (m.shm_hdr) abi::aref(m.shm_hdr->generation).store(next.generation, std::memory_order_release);
  for (unsigned v = 0; v < m.max_vcpus; ++v)
    if (m.vcpus[v].ready) widen_flags([&](const ArmFlags& f) { store_flags(m, v, f); });
}

// After the DTB set changed: the open entries of address spaces it no longer passes (a process
// gone, its calls never to return, or no longer traced) leave the vCPUs' tables (doors.hpp).
void drop_open_calls_filtered(Monitor& m, const FilterConfig& now) {
  for (unsigned v = 0; v < m.max_vcpus; ++v)
    (void)m.vcpus[v].open.drop_unless([&](std::uint64_t dtb) { return now.dtb_passes(dtb); });
}

bool start_control(Monitor& m, std::string* why) {
  if (m.opt.ctl_path.empty()) return true;
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *why = errno_text("cannot create control socket", m.opt.ctl_path);
    return false;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", m.opt.ctl_path.c_str());
  const mode_t old = umask(0077);  // owner-only from the start, no window
  const int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  umask(old);
  if (rc != 0 || listen(fd, 4) != 0) {
    *why = errno_text("cannot bind control socket", m.opt.ctl_path);
    close(fd);
    return false;
  }
  if (pipe2(m.stop_pipe, O_CLOEXEC) != 0) {
    *why = errno_text("cannot create pipe for", m.opt.ctl_path);
    close(fd);
    unlink(m.opt.ctl_path.c_str());
    return false;
  }
  m.listen_fd = fd;
  m.control = std::thread(control_loop, &m);
  return true;
}

void stop_control(Monitor& m) {
  if (m.control.joinable()) {
    const char c = 'x';
    (void)!write(m.stop_pipe[1], &c, 1);
    m.control.join();
  }
  if (m.listen_fd >= 0) {
    close(m.listen_fd);
    unlink(m.opt.ctl_path.c_str());
    m.listen_fd = -1;
  }
  set_gone(m, true);
}

}  // namespace hvtrace::monitor
