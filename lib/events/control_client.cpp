// ControlClient: see control_client.hpp.
#include "events/control_client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace hvtrace::events {

ControlClient& ControlClient::operator=(ControlClient&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    next_id_ = o.next_id_;
    o.fd_ = -1;
  }
  return *this;
}

ControlClient::~ControlClient() {
  if (fd_ >= 0) ::close(fd_);
}

Result<ControlClient> ControlClient::connect(const std::filesystem::path& socket_path, std::chrono::milliseconds wait) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.string().size() >= sizeof addr.sun_path) return make_error("socket path {} too long", socket_path.string());
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.string().size());
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    const int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return make_error("socket: {}", std::strerror(errno));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return ControlClient(fd);
    const int err = errno;
    ::close(fd);
    if (std::chrono::steady_clock::now() >= deadline)
      return make_error("connecting to monitor control socket {}: {}", socket_path.string(), std::strerror(err));
    std::this_thread::sleep_for(std::chrono::milliseconds{20});
  }
}

Result<abi::Reply> ControlClient::send_raw(const void* msg, std::size_t len) { return exchange(msg, len, std::nullopt); }

// One request, one reply. The wait survives signals (poll returns EINTR on every handled signal,
// e.g. the Ctrl-C that ends a watch), and a reply to an earlier request that the client stopped
// waiting for is skipped: otherwise every later request would read its predecessor's reply.
Result<abi::Reply> ControlClient::exchange(const void* msg, std::size_t len, std::optional<std::uint32_t> id) {
  if (::send(fd_, msg, len, MSG_NOSIGNAL) != static_cast<ssize_t>(len))
    return make_error("sending control message: {}", std::strerror(errno));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{5};
  for (int stale = 0;; ) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return make_error("monitor did not answer within 5 s");
    pollfd p{fd_, POLLIN, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(left.count()));
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) return make_error("waiting for the monitor: {}", std::strerror(errno));
    if (rc == 0) continue;   // the deadline check above ends it
    abi::Reply r{};
    const ssize_t n = ::recv(fd_, &r, sizeof r, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return make_error("monitor closed the control connection");
    if (n != static_cast<ssize_t>(sizeof r) || r.hdr.magic != abi::kCtlMagic || r.hdr.size != sizeof r)
      return make_error("malformed reply from the monitor ({} bytes)", n);
    r.message[sizeof r.message - 1] = '\0';
    if (id && r.hdr.request_id != *id) {
      // Older (modulo wrap) than ours: a late answer to a request given up on. Anything else is a protocol error.
      const auto behind = static_cast<std::int32_t>(*id - r.hdr.request_id);
      if (behind > 0 && ++stale <= 64) continue;
      return make_error("reply to request {} for {}", r.hdr.request_id, *id);
    }
    return r;
  }
}

template <typename M>
Result<std::uint32_t> ControlClient::request(M& msg, abi::CtlType type) {
  abi::CtlHeader& h = reinterpret_cast<abi::CtlHeader&>(msg);
  h = abi::CtlHeader{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion), static_cast<std::uint16_t>(type),
                     sizeof(M), next_id_++};
  auto r = exchange(&msg, sizeof msg, h.request_id);
  if (!r) return r.error();
  if (r->status != 0) return make_error("monitor rejected the request (status {}): {}", r->status, r->message);
  return r->generation;
}

Result<std::uint32_t> ControlClient::attach() {
  abi::AttachMsg m{};
  m.client_pid = static_cast<std::uint32_t>(getpid());
  return request(m, abi::CtlType::kAttach);
}

Result<std::uint32_t> ControlClient::set_all_dtbs() {
  abi::SetDtbsMsg m{};
  m.mode = static_cast<std::uint32_t>(abi::DtbMode::kAll);
  return request(m, abi::CtlType::kSetDtbs);
}

Result<std::uint32_t> ControlClient::set_dtbs(const std::vector<Dtb>& dtbs) { return dtb_set(dtbs, abi::CtlType::kSetDtbs); }

Result<std::uint32_t> ControlClient::set_read_data_dtbs(const std::optional<std::vector<Dtb>>& dtbs) {
  if (!dtbs) {
    abi::SetDtbsMsg m{};
    m.mode = static_cast<std::uint32_t>(abi::DtbMode::kAll);
    return request(m, abi::CtlType::kSetReadDataDtbs);
  }
  return dtb_set(*dtbs, abi::CtlType::kSetReadDataDtbs);
}

Result<std::uint32_t> ControlClient::dtb_set(const std::vector<Dtb>& dtbs, abi::CtlType type) {
  if (dtbs.size() > abi::kMaxDtbs) return make_error("{} DTBs, the monitor takes at most {}", dtbs.size(), abi::kMaxDtbs);
  abi::SetDtbsMsg m{};
  m.mode = static_cast<std::uint32_t>(abi::DtbMode::kSet);
  m.count = static_cast<std::uint32_t>(dtbs.size());
  for (std::size_t i = 0; i < dtbs.size(); ++i) m.dtbs[i] = dtbs[i].value;
  return request(m, type);
}

Result<std::uint32_t> ControlClient::set_arg_rules(const std::vector<abi::ArgRule>& rules) {
  if (rules.size() > abi::kMaxArgRules)
    return make_error("{} argument rules, the monitor takes at most {}", rules.size(), abi::kMaxArgRules);
  abi::SetArgRulesMsg m{};
  m.count = static_cast<std::uint32_t>(rules.size());
  for (std::size_t i = 0; i < rules.size(); ++i) m.rules[i] = rules[i];
  return request(m, abi::CtlType::kSetArgRules);
}

Result<std::uint32_t> ControlClient::set_syscalls(const std::optional<std::vector<unsigned>>& nrs,
                                                  abi::SyscallAbi table) {
  abi::SetSyscallsMsg m{};
  m.all = nrs ? 0 : 1;
  m.abi = table == abi::SyscallAbi::kI386 ? 1 : 0;
  if (nrs)
    for (unsigned nr : *nrs) {
      if (nr >= abi::kSyscallBits) return make_error("syscall number {} out of range 0..{}", nr, abi::kSyscallBits - 1);
      m.bitmap[nr / 64] |= 1ULL << (nr % 64);
    }
  return request(m, abi::CtlType::kSetSyscalls);
}

Result<std::uint32_t> ControlClient::set_sync_syscalls(const std::vector<unsigned>& nrs, abi::SyscallAbi table) {
  abi::SetSyscallsMsg m{};
  m.abi = table == abi::SyscallAbi::kI386 ? 1 : 0;
  for (unsigned nr : nrs) {
    if (nr >= abi::kSyscallBits) return make_error("syscall number {} out of range 0..{}", nr, abi::kSyscallBits - 1);
    m.bitmap[nr / 64] |= 1ULL << (nr % 64);
  }
  return request(m, abi::CtlType::kSetSyncSyscalls);
}

Result<std::uint32_t> ControlClient::set_identity(std::uint64_t current_task_off, std::uint32_t pid_off,
                                                  std::uint32_t tgid_off) {
  abi::SetIdentityMsg m{};
  m.current_task_off = current_task_off;
  m.pid_off = pid_off;
  m.tgid_off = tgid_off;
  return request(m, abi::CtlType::kSetIdentity);
}

Result<std::uint32_t> ControlClient::set_actions(const Actions& a) {
  abi::SetActionsMsg m{};
  m.actions[0] = static_cast<std::uint8_t>(a.cr3);
  m.actions[1] = static_cast<std::uint8_t>(a.syscall_entry);
  m.actions[2] = static_cast<std::uint8_t>(a.syscall_exit);
  m.actions[3] = static_cast<std::uint8_t>(a.breakpoint);
  m.flags = (a.cr3_unfiltered ? abi::kActionCr3Unfiltered : 0) | (a.cr3_leaving_only ? abi::kActionCr3LeavingOnly : 0);
  return request(m, abi::CtlType::kSetActions);
}

Result<std::uint32_t> ControlClient::set_snap_len(std::uint32_t bytes) {
  abi::SetSnapLenMsg m{};
  m.snap_len = bytes;
  return request(m, abi::CtlType::kSetSnapLen);
}

Result<std::uint32_t> ControlClient::add_breakpoint(const BreakpointSpec& bp) {
  if (bp.dtbs.size() > abi::kMaxBreakpointDtbs)
    return make_error("breakpoint {}: {} DTBs, a breakpoint takes at most {}", bp.id, bp.dtbs.size(),
                      abi::kMaxBreakpointDtbs);
  abi::AddBreakpointMsg m{};
  m.id = bp.id;
  m.kind = static_cast<std::uint8_t>(bp.kind);
  m.action = static_cast<std::uint8_t>(bp.action);
  m.n_dtbs = static_cast<std::uint16_t>(bp.dtbs.size());
  m.va = bp.va;
  for (std::size_t i = 0; i < bp.dtbs.size(); ++i) m.dtbs[i] = bp.dtbs[i].value;
  return request(m, abi::CtlType::kAddBreakpoint);
}

Result<std::uint32_t> ControlClient::remove_breakpoint(std::uint32_t id) {
  abi::RemoveBreakpointMsg m{};
  m.id = id;
  return request(m, abi::CtlType::kRemoveBreakpoint);
}

Result<std::uint32_t> ControlClient::detach() {
  abi::CtlHeader m{};
  return request(m, abi::CtlType::kDetach);
}

Result<MonitorStats> ControlClient::stats() {
  abi::CtlHeader m{abi::kCtlMagic, static_cast<std::uint16_t>(abi::kAbiVersion),
                   static_cast<std::uint16_t>(abi::CtlType::kGetStats), sizeof m, next_id_++};
  auto r = exchange(&m, sizeof m, m.request_id);
  if (!r) return r.error();
  if (r->status != 0) return make_error("monitor rejected the stats request: {}", r->message);
  return MonitorStats{r->generation, r->rejected_messages, r->user_syscalls, r->cr3_writes, r->user_int80s,
                      r->user_sysenters};
}

}  // namespace hvtrace::events
