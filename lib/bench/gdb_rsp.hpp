// A small client of the GDB remote serial protocol (RSP), enough to trace system calls through
// QEMU's gdb stub the way a VMI tool does where the hypervisor offers only a debugger interface:
// connect, learn the register layout from target.xml, set a breakpoint, continue, read registers
// at each stop, step over the breakpoint, detach. Every wait is bounded by a timeout; a stub that
// stops answering is an error, never a hang.
#pragma once

#include "common/result.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::bench {

// One register of the target description: its number in p/P packets and its place in the g packet.
struct RspRegister {
  std::string name;
  unsigned regnum = 0;
  unsigned bits = 0;
  std::size_t offset = 0;   // byte offset in the g packet (registers in regnum order)
};

// Registers listed by a target description, in document order (xi:include followed by the caller).
// Numbers run on from the previous register unless a regnum attribute sets them.
[[nodiscard]] std::vector<RspRegister> parse_target_registers(std::string_view xml, unsigned first_regnum = 0);
// The href of every <xi:include> in a target description.
[[nodiscard]] std::vector<std::string> parse_target_includes(std::string_view xml);

// Framing: "$data#xx" with the modulo-256 checksum; '#', '$', '}' and '*' escaped with '}'.
[[nodiscard]] std::string rsp_frame(std::string_view payload);
// Decode a run-length encoded / escaped payload (what a stub may send).
[[nodiscard]] std::string rsp_unescape(std::string_view payload);
// A little-endian register value from hex text (the g packet's byte order on x86).
[[nodiscard]] std::optional<std::uint64_t> rsp_le_hex(std::string_view hex, std::size_t byte_offset, std::size_t bytes);

class RspClient {
 public:
  // Connect to host:port (TCP), waiting up to `timeout` for the stub to accept.
  [[nodiscard]] static Result<RspClient> connect(const std::string& host, std::uint16_t port,
                                                 std::chrono::milliseconds timeout);
  RspClient(RspClient&& o) noexcept;
  RspClient& operator=(RspClient&& o) noexcept;
  RspClient(const RspClient&) = delete;
  RspClient& operator=(const RspClient&) = delete;
  ~RspClient();

  // Send one packet and return the next reply that is not a stop reply (T.., S..). Errors on timeout
  // or on a closed connection.
  [[nodiscard]] Result<std::string> command(std::string_view payload);
  // qSupported, then QStartNoAckMode if offered (gdb does the same with QEMU).
  [[nodiscard]] Result<void> handshake();
  // The register layout from qXfer:features:read (target.xml and what it includes).
  [[nodiscard]] Result<std::vector<RspRegister>> target_registers();
  // Z0/z0 (software breakpoint; QEMU's TCG implements it without touching guest memory).
  [[nodiscard]] Result<void> insert_breakpoint(std::uint64_t addr);
  [[nodiscard]] Result<void> remove_breakpoint(std::uint64_t addr);
  // All registers (g), as hex text.
  [[nodiscard]] Result<std::string> read_registers();
  [[nodiscard]] Result<std::uint64_t> read_register(unsigned regnum);   // p, little-endian
  // Resume (c) and return the stop reply; `keep_waiting` is asked every slice of the wait and
  // returning false ends the wait with the stop caused by interrupt() instead.
  [[nodiscard]] Result<std::string> cont(const std::function<bool()>& keep_waiting,
                                         std::chrono::milliseconds slice = std::chrono::milliseconds{100});
  // One instruction (s) and its stop reply.
  [[nodiscard]] Result<std::string> step();
  // Stop a running target (the 0x03 byte) and return its stop reply.
  [[nodiscard]] Result<std::string> interrupt();
  // D: the target runs on, free of us.
  [[nodiscard]] Result<void> detach();
  [[nodiscard]] std::uint64_t round_trips() const { return round_trips_; }

  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

 private:
  explicit RspClient(int fd) : fd_(fd) {}
  Result<void> send_packet(std::string_view payload);
  Result<std::string> read_packet(std::chrono::milliseconds timeout);   // unescaped payload
  Result<char> read_byte(std::chrono::milliseconds timeout);
  int fd_ = -1;
  bool no_ack_ = false;
  std::string buf_;          // bytes received and not yet consumed
  std::size_t pos_ = 0;
  std::chrono::milliseconds timeout_{5000};
  std::uint64_t round_trips_ = 0;
};

}  // namespace hvtrace::bench
