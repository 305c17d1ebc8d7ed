#include "bench/gdb_rsp.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <thread>

namespace hvtrace::bench {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kMaxPacket = 1u << 20;   // a stub sending more than this is broken

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_stop_reply(std::string_view p) { return !p.empty() && (p[0] == 'T' || p[0] == 'S'); }

std::string xml_attr(std::string_view tag, std::string_view name) {
  const std::string key = std::string(name) + "=";
  for (std::size_t p = tag.find(key); p != std::string_view::npos; p = tag.find(key, p + 1)) {
    if (p > 0 && tag[p - 1] != ' ' && tag[p - 1] != '\t' && tag[p - 1] != '\n') continue;
    const std::size_t q = p + key.size();
    if (q >= tag.size() || (tag[q] != '"' && tag[q] != '\'')) continue;
    const std::size_t e = tag.find(tag[q], q + 1);
    if (e == std::string_view::npos) return {};
    return std::string(tag.substr(q + 1, e - q - 1));
  }
  return {};
}

// The document without its <!-- comments --> (QEMU's i386-64bit.xml comments out cs_base..es_base).
std::string strip_xml_comments(std::string_view xml) {
  std::string out;
  std::size_t p = 0;
  while (p < xml.size()) {
    const std::size_t b = xml.find("<!--", p);
    if (b == std::string_view::npos) break;
    out.append(xml.substr(p, b - p));
    const std::size_t e = xml.find("-->", b + 4);
    if (e == std::string_view::npos) return out;
    p = e + 3;
  }
  if (p < xml.size()) out.append(xml.substr(p));
  return out;
}

}  // namespace

std::vector<RspRegister> parse_target_registers(std::string_view xml_in, unsigned first_regnum) {
  const std::string doc = strip_xml_comments(xml_in);
  const std::string_view xml = doc;
  std::vector<RspRegister> regs;
  unsigned next = first_regnum;
  for (std::size_t p = xml.find("<reg "); p != std::string_view::npos; p = xml.find("<reg ", p + 1)) {
    const std::size_t e = xml.find('>', p);
    if (e == std::string_view::npos) break;
    const std::string_view tag = xml.substr(p, e - p);
    RspRegister r;
    r.name = xml_attr(tag, "name");
    const std::string bits = xml_attr(tag, "bitsize");
    const std::string num = xml_attr(tag, "regnum");
    if (r.name.empty() || bits.empty()) continue;
    try {
      r.bits = static_cast<unsigned>(std::stoul(bits));
      r.regnum = num.empty() ? next : static_cast<unsigned>(std::stoul(num));
    } catch (const std::exception&) {
      continue;
    }
    next = r.regnum + 1;
    regs.push_back(std::move(r));
  }
  return regs;
}

std::vector<std::string> parse_target_includes(std::string_view xml_in) {
  const std::string doc = strip_xml_comments(xml_in);
  const std::string_view xml = doc;
  std::vector<std::string> out;
  for (std::size_t p = xml.find("<xi:include"); p != std::string_view::npos; p = xml.find("<xi:include", p + 1)) {
    const std::size_t e = xml.find('>', p);
    if (e == std::string_view::npos) break;
    if (auto h = xml_attr(xml.substr(p, e - p), "href"); !h.empty()) out.push_back(h);
  }
  return out;
}

std::string rsp_frame(std::string_view payload) {
  std::string body;
  body.reserve(payload.size() + 8);
  for (char c : payload) {
    if (c == '#' || c == '$' || c == '}' || c == '*') {
      body += '}';
      body += static_cast<char>(c ^ 0x20);
    } else {
      body += c;
    }
  }
  unsigned sum = 0;
  for (char c : body) sum += static_cast<unsigned char>(c);
  return fmt::format("${}#{:02x}", body, sum & 0xffu);
}

std::string rsp_unescape(std::string_view payload) {
  std::string out;
  out.reserve(payload.size());
  for (std::size_t i = 0; i < payload.size(); ++i) {
    const char c = payload[i];
    if (c == '}' && i + 1 < payload.size()) {
      out += static_cast<char>(payload[++i] ^ 0x20);
    } else if (c == '*' && i + 1 < payload.size() && !out.empty()) {
      const int n = static_cast<unsigned char>(payload[++i]) - 29;   // run length: repeat the last char n times
      if (n > 0 && out.size() + static_cast<std::size_t>(n) <= kMaxPacket) out.append(static_cast<std::size_t>(n), out.back());
    } else {
      out += c;
    }
  }
  return out;
}

std::optional<std::uint64_t> rsp_le_hex(std::string_view hex, std::size_t byte_offset, std::size_t bytes) {
  if (bytes == 0 || bytes > 8 || (byte_offset + bytes) * 2 > hex.size()) return std::nullopt;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < bytes; ++i) {
    const int hi = hex_digit(hex[(byte_offset + i) * 2]), lo = hex_digit(hex[(byte_offset + i) * 2 + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;   // "xx": unavailable
    v |= static_cast<std::uint64_t>(hi * 16 + lo) << (8 * i);
  }
  return v;
}

Result<RspClient> RspClient::connect(const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1) return make_error("gdb stub address {}: not an IPv4 address", host);
  const auto deadline = Clock::now() + timeout;
  std::string last = "timed out";
  while (Clock::now() < deadline) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return make_error("socket: {}", std::strerror(errno));
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0) {
      const int one = 1;
      (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      return RspClient(fd);
    }
    last = std::strerror(errno);
    close(fd);
    std::this_thread::sleep_for(50ms);
  }
  return make_error("gdb stub at {}:{}: {}", host, port, last);
}

RspClient::RspClient(RspClient&& o) noexcept
    : fd_(o.fd_), no_ack_(o.no_ack_), buf_(std::move(o.buf_)), pos_(o.pos_), timeout_(o.timeout_), round_trips_(o.round_trips_) {
  o.fd_ = -1;
}

RspClient& RspClient::operator=(RspClient&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
    no_ack_ = o.no_ack_;
    buf_ = std::move(o.buf_);
    pos_ = o.pos_;
    timeout_ = o.timeout_;
    round_trips_ = o.round_trips_;
  }
  return *this;
}

RspClient::~RspClient() {
  if (fd_ >= 0) close(fd_);
}

Result<char> RspClient::read_byte(std::chrono::milliseconds timeout) {
  if (pos_ < buf_.size()) return buf_[pos_++];
  buf_.clear();
  pos_ = 0;
  pollfd p{fd_, POLLIN, 0};
  const int r = poll(&p, 1, static_cast<int>(timeout.count()));
  if (r < 0) return make_error("gdb stub: poll: {}", std::strerror(errno));
  if (r == 0) return make_error("gdb stub: no answer within {} ms", timeout.count());
  char tmp[4096];
  const ssize_t n = recv(fd_, tmp, sizeof tmp, 0);
  if (n == 0) return make_error("gdb stub closed the connection");
  if (n < 0) return make_error("gdb stub: recv: {}", std::strerror(errno));
  buf_.assign(tmp, static_cast<std::size_t>(n));
  return buf_[pos_++];
}

Result<void> RspClient::send_packet(std::string_view payload) {
  const std::string f = rsp_frame(payload);
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::size_t off = 0;
    while (off < f.size()) {
      const ssize_t n = send(fd_, f.data() + off, f.size() - off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return make_error("gdb stub: send: {}", std::strerror(errno));
      }
      off += static_cast<std::size_t>(n);
    }
    if (no_ack_) return {};
    auto a = read_byte(timeout_);
    if (!a) return std::move(a).error();
    if (*a == '+') return {};
    if (*a != '-') return make_error("gdb stub: expected an ack, got 0x{:02x}", static_cast<unsigned char>(*a));
  }
  return make_error("gdb stub rejected packet '{}' three times", payload.substr(0, 32));
}

Result<std::string> RspClient::read_packet(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const auto left = [&] {
    return std::max(1ms, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
  };
  for (;;) {
    auto c = read_byte(left());
    if (!c) return std::move(c).error();
    if (*c == '$') break;   // acks ('+') and stray bytes before a packet are skipped
    if (Clock::now() >= deadline) return make_error("gdb stub: no packet within {} ms", timeout.count());
  }
  std::string body;
  for (;;) {
    auto c = read_byte(left());
    if (!c) return std::move(c).error();
    if (*c == '#') break;
    body += *c;
    if (body.size() > kMaxPacket) return make_error("gdb stub: packet longer than {} bytes", kMaxPacket);
  }
  char sum[2];
  for (char& s : sum) {
    auto c = read_byte(left());
    if (!c) return std::move(c).error();
    s = *c;
  }
  unsigned want = 0;
  for (char c : body) want += static_cast<unsigned char>(c);
  const int hi = hex_digit(sum[0]), lo = hex_digit(sum[1]);
  const bool good = hi >= 0 && lo >= 0 && static_cast<unsigned>(hi * 16 + lo) == (want & 0xffu);
  if (!no_ack_) {
    const char a = good ? '+' : '-';
    if (send(fd_, &a, 1, MSG_NOSIGNAL) != 1) return make_error("gdb stub: send ack: {}", std::strerror(errno));
  }
  if (!good) return make_error("gdb stub: bad checksum on a packet");
  return rsp_unescape(body);
}

Result<std::string> RspClient::command(std::string_view payload) {
  HVTRACE_TRY(send_packet(payload));
  ++round_trips_;
  for (int skipped = 0; skipped < 16; ++skipped) {
    auto p = read_packet(timeout_);
    if (!p) return std::move(p).error();
    if (!is_stop_reply(*p)) return p;
  }
  return make_error("gdb stub: only stop replies in answer to '{}'", payload.substr(0, 32));
}

Result<void> RspClient::handshake() {
  auto sup = command("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386");
  if (!sup) return std::move(sup).error();
  if (sup->find("QStartNoAckMode+") != std::string::npos) {
    auto r = command("QStartNoAckMode");
    if (!r) return std::move(r).error();
    if (*r == "OK") no_ack_ = true;
  }
  return {};
}

Result<std::vector<RspRegister>> RspClient::target_registers() {
  std::vector<RspRegister> regs;
  std::vector<std::string> todo = {"target.xml"};
  for (std::size_t k = 0; k < todo.size() && k < 16; ++k) {
    std::string doc;
    for (std::size_t off = 0;;) {
      auto r = command(fmt::format("qXfer:features:read:{}:{:x},{:x}", todo[k], off, 0xff0));
      if (!r) return std::move(r).error();
      if (r->empty() || (r->front() != 'm' && r->front() != 'l'))
        return make_error("gdb stub: qXfer:features:read:{}: '{}'", todo[k], r->substr(0, 16));
      doc += r->substr(1);
      off += r->size() - 1;
      if (r->front() == 'l') break;
      if (doc.size() > kMaxPacket) return make_error("gdb stub: {} larger than {} bytes", todo[k], kMaxPacket);
    }
    auto part = parse_target_registers(doc, regs.empty() ? 0 : regs.back().regnum + 1);
    regs.insert(regs.end(), part.begin(), part.end());
    for (auto& inc : parse_target_includes(doc)) todo.push_back(inc);
  }
  std::sort(regs.begin(), regs.end(), [](const RspRegister& a, const RspRegister& b) { return a.regnum < b.regnum; });
  std::size_t off = 0;
  for (auto& r : regs) {
    r.offset = off;
    off += r.bits / 8;
  }
  if (regs.empty()) return make_error("gdb stub: its target description lists no registers");
  return regs;
}

Result<void> RspClient::insert_breakpoint(std::uint64_t addr) {
  auto r = command(fmt::format("Z0,{:x},1", addr));
  if (!r) return std::move(r).error();
  if (*r != "OK") return make_error("gdb stub refused a breakpoint at 0x{:x}: '{}'", addr, *r);
  return {};
}

Result<void> RspClient::remove_breakpoint(std::uint64_t addr) {
  auto r = command(fmt::format("z0,{:x},1", addr));
  if (!r) return std::move(r).error();
  if (*r != "OK") return make_error("gdb stub refused to remove the breakpoint at 0x{:x}: '{}'", addr, *r);
  return {};
}

Result<std::string> RspClient::read_registers() {
  auto r = command("g");
  if (!r) return r;
  if (r->empty() || r->front() == 'E') return make_error("gdb stub: g: '{}'", r->substr(0, 8));
  return r;
}

Result<std::uint64_t> RspClient::read_register(unsigned regnum) {
  auto r = command(fmt::format("p{:x}", regnum));
  if (!r) return std::move(r).error();
  auto v = rsp_le_hex(*r, 0, std::min<std::size_t>(8, r->size() / 2));
  if (!v) return make_error("gdb stub: p{:x}: '{}'", regnum, r->substr(0, 16));
  return *v;
}

Result<std::string> RspClient::cont(const std::function<bool()>& keep_waiting, std::chrono::milliseconds slice) {
  HVTRACE_TRY(send_packet("c"));
  ++round_trips_;
  for (;;) {
    auto p = read_packet(slice);
    if (p) {
      if (is_stop_reply(*p) || (!p->empty() && (p->front() == 'W' || p->front() == 'X'))) return p;
      continue;   // console output (O...) and the like
    }
    if (p.error().message.find("no answer") == std::string::npos &&
        p.error().message.find("no packet") == std::string::npos)
      return p;
    if (!keep_waiting()) return interrupt();
  }
}

Result<std::string> RspClient::step() {
  HVTRACE_TRY(send_packet("s"));
  ++round_trips_;
  for (;;) {
    auto p = read_packet(timeout_);
    if (!p) return p;
    if (is_stop_reply(*p) || (!p->empty() && (p->front() == 'W' || p->front() == 'X'))) return p;
  }
}

Result<std::string> RspClient::interrupt() {
  const char brk = 0x03;
  if (send(fd_, &brk, 1, MSG_NOSIGNAL) != 1) return make_error("gdb stub: send break: {}", std::strerror(errno));
  for (;;) {
    auto p = read_packet(timeout_);
    if (!p) return p;
    if (is_stop_reply(*p) || (!p->empty() && (p->front() == 'W' || p->front() == 'X'))) return p;
  }
}

Result<void> RspClient::detach() {
  // With multiprocess+ (offered in the handshake) QEMU wants the process: D;1.
  auto r = command("D;1");
  if (r && *r != "OK") r = command("D");
  if (!r) return std::move(r).error();
  if (*r != "OK") return make_error("gdb stub: D: '{}'", *r);
  return {};
}

}  // namespace hvtrace::bench
