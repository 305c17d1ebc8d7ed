#include "vm/guestfwd.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/core.h>

#include <cerrno>
#include <charconv>
#include <optional>
#include <utility>

namespace hvtrace::vm {

namespace {

constexpr std::string_view kForm =
    "expected tcp:GUEST_ADDR:GUEST_PORT-127.0.0.1:HOST_PORT, e.g. tcp:10.0.2.100:80-127.0.0.1:8080";

std::optional<std::uint32_t> ipv4(std::string_view s) {
  in_addr a{};
  if (inet_pton(AF_INET, std::string(s).c_str(), &a) != 1) return std::nullopt;
  return ntohl(a.s_addr);
}

std::optional<std::uint16_t> port_of(std::string_view s) {
  unsigned v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size() || v == 0 || v > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(v);
}

// "ADDR:PORT" -> (addr, port)
Result<std::pair<std::string, std::uint16_t>> addr_port(std::string_view s, std::string_view spec, std::string_view what) {
  const auto colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0)
    return make_error("--guestfwd '{}': the {} needs ADDR:PORT ({})", spec, what, kForm);
  const auto port = port_of(s.substr(colon + 1));
  if (!port)
    return make_error("--guestfwd '{}': the {} port '{}' is not 1..65535 ({})", spec, what, s.substr(colon + 1), kForm);
  return std::pair{std::string(s.substr(0, colon)), *port};
}

bool write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

void shut_write(int fd) {
  if (shutdown(fd, SHUT_WR) != 0 && errno == ENOTSOCK) close(fd);
}

}  // namespace

Result<void> validate_guest_forward(const GuestForward& f) {
  const auto g = ipv4(f.guest_addr);
  if (!g || (*g >> 8) != 0x0A0002u)  // 10.0.2.0/24, QEMU user networking's default network
    return make_error("guest forward address '{}' must be an IPv4 address in QEMU's user network 10.0.2.0/24 "
                      "(e.g. 10.0.2.100)",
                      f.guest_addr);
  switch (*g & 0xff) {
    case 0: case 2: case 3: case 15: case 255:
      return make_error("guest forward address '{}' is taken (10.0.2.0 network, .2 host gateway, .3 DNS, .15 the "
                        "guest, .255 broadcast); use another, e.g. 10.0.2.100",
                        f.guest_addr);
    default: break;
  }
  const auto h = ipv4(f.host_addr);
  if (!h || (*h >> 24) != 127)
    return make_error("guest forward target '{}' is not a loopback address: a guest may only be forwarded to a "
                      "server on this host's loopback (127.0.0.1)",
                      f.host_addr);
  if (f.guest_port == 0 || f.host_port == 0) return make_error("guest forward ports must be 1..65535");
  return {};
}

Result<GuestForward> parse_guest_forward(std::string_view spec) {
  std::string_view s = spec;
  if (s.starts_with("tcp:")) s.remove_prefix(4);
  else if (s.starts_with("udp:")) return make_error("--guestfwd '{}': only TCP forwards are supported ({})", spec, kForm);
  const auto dash = s.find('-');
  if (dash == std::string_view::npos || s.find('-', dash + 1) != std::string_view::npos)
    return make_error("--guestfwd '{}': {}", spec, kForm);
  std::string_view host = s.substr(dash + 1);
  if (host.starts_with("tcp:")) host.remove_prefix(4);
  else if (host.find(':') != host.rfind(':') || host.starts_with("cmd:") || host.starts_with("unix:"))
    return make_error("--guestfwd '{}': the target must be a TCP server on this host's loopback ({})", spec, kForm);
  auto gp = addr_port(s.substr(0, dash), spec, "guest address");
  if (!gp) return std::move(gp).error();
  auto hp = addr_port(host, spec, "host target");
  if (!hp) return std::move(hp).error();
  GuestForward f;
  f.guest_addr = gp->first;
  f.guest_port = gp->second;
  f.host_addr = hp->first == "localhost" ? "127.0.0.1" : hp->first;
  f.host_port = hp->second;
  if (auto v = validate_guest_forward(f); !v) return make_error("--guestfwd '{}': {}", spec, v.error().message);
  return f;
}

std::string guest_forward_spec(const GuestForward& f) {
  return fmt::format("tcp:{}:{}-{}:{}", f.guest_addr, f.guest_port, f.host_addr, f.host_port);
}

int run_guest_forward_relay(std::string_view host_addr, std::uint16_t host_port) {
  // QEMU gives the relay the guest's connection as stdin, stdout and stderr: never write there
  // anything but the server's bytes.
  if (const int null = open("/dev/null", O_WRONLY | O_CLOEXEC); null >= 0) {
    dup2(null, STDERR_FILENO);
    close(null);
  }
  signal(SIGPIPE, SIG_IGN);
  const auto addr = ipv4(host_addr);
  if (!addr || (*addr >> 24) != 127 || host_port == 0) {
    shut_write(STDOUT_FILENO);
    return 1;
  }
  const int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(*addr);
  a.sin_port = htons(host_port);
  if (sock < 0 || connect(sock, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    shut_write(STDOUT_FILENO);
    return 1;
  }
  bool guest_open = true;   // guest -> server still flowing
  bool server_open = true;  // server -> guest still flowing
  char buf[65536];
  constexpr int kIdleMs = 3600 * 1000;  // a connection idle for an hour is dropped
  while (guest_open || server_open) {
    pollfd p[2] = {{guest_open ? STDIN_FILENO : -1, POLLIN, 0}, {server_open ? sock : -1, POLLIN, 0}};
    const int n = poll(p, 2, kIdleMs);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (guest_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      const ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0 || !write_all(sock, buf, static_cast<std::size_t>(r))) {
        guest_open = false;
        shutdown(sock, SHUT_WR);
      }
    }
    if (server_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      const ssize_t r = read(sock, buf, sizeof buf);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0 || !write_all(STDOUT_FILENO, buf, static_cast<std::size_t>(r))) {
        server_open = false;
        shut_write(STDOUT_FILENO);
      }
    }
  }
  close(sock);
  return 0;
}

}  // namespace hvtrace::vm
