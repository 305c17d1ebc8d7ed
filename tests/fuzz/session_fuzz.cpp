// The session engine over arbitrary call streams: a server and a handful of pids making any of the
// calls the engine reads, with random arguments, return values and captures (sockaddrs, buffers,
// argv, paths), credentials in between, and small caps so every limit is reached. No crash, no
// hang, every output line valid JSON (checked by the asan/ubsan build's aborts and the parser).
#include "session/tracker.hpp"

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

using namespace hvtrace;
namespace fs = std::filesystem;

namespace {

constexpr const char* kCalls[] = {"read", "write", "openat", "open", "creat", "close", "dup", "dup2", "dup3",
                                  "fcntl", "pipe", "pipe2", "socket", "connect", "bind", "accept", "accept4",
                                  "getpeername", "getsockname", "fork", "vfork", "clone", "clone3", "execve",
                                  "exit_group", "exit", "setuid", "setresuid", "ioctl", "wait4", "chdir", "pwrite64"};

struct Input {
  const std::uint8_t* p;
  std::size_t n;
  std::uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::string bytes(std::size_t max) {
    const std::size_t len = std::min<std::size_t>(byte() % (max + 1), n);
    std::string s(reinterpret_cast<const char*>(p), len);
    p += len;
    n -= len;
    return s;
  }
};

const fs::path& scratch() {
  static const fs::path dir = [] {
    fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    return base / ("hvtrace-session-fuzz-" + std::to_string(::getpid()));
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fs::remove_all(scratch());
  session::TrackerConfig cfg;
  cfg.dir = scratch();
  cfg.max_line_bytes = 64;
  cfg.max_output_bytes = 512;
  cfg.max_file_bytes = 256;
  cfg.max_processes = 6;
  cfg.max_open_sessions = 4;
  cfg.max_fds = 8;
  cfg.max_process_events = 32;
  cfg.follow = [](const std::string&, std::uint64_t) {};
  Input in{data, size};
  std::uint64_t now = 1'000'000;
  {
    session::Tracker t(cfg);
    t.add_server(100);
    const auto& table = syscalls::Table::get(abi::SyscallAbi::kX86_64);
    for (int steps = 0; in.n > 0 && steps < 2000; ++steps) {
      const std::uint8_t op = in.byte();
      const std::uint32_t pid = (in.byte() & 1) != 0 ? 100 : 200 + (in.byte() % 8);
      now += in.byte() * 1000u;
      if (op >= 0xf8) {
        const auto kind = (op & 1) != 0 ? session::Credential::kPassword : session::Credential::kUser;
        t.on_credential(pid, kind, in.bytes(80), now);
        continue;
      }
      if (op == 0xf6) {   // a fork announced at the fork breakpoint, before (or without) its return
        t.on_fork(200 + in.byte() % 8, (in.byte() & 1) != 0 ? 100 : 200 + in.byte() % 8);
        continue;
      }
      if (op == 0xf5) {   // an entry seen before its call completes (a shell's wait, a key's write)
        syscalls::Call c;
        c.nr = syscalls::Table::get(abi::SyscallAbi::kX86_64).by_name((in.byte() & 1) != 0 ? "wait4" : "write").value_or(0);
        for (auto& a : c.args) a = in.byte();
        events::Capture cp;
        cp.arg = 1;
        cp.kind = abi::CaptureKind::kBuffer;
        cp.data = in.bytes(40);
        cp.true_len = cp.data.size();
        c.entry_caps.push_back(std::move(cp));
        t.on_entry(pid, c, now);
        continue;
      }
      if (op == 0xf7) {
        // A process picked up with open files as its fd table could say (any fd, kind, pipe, address).
        std::vector<session::ExistingFd> fds(in.byte() % 12);
        for (auto& f : fds) {
          f.fd = static_cast<int>(static_cast<std::int8_t>(in.byte()));
          f.kind = static_cast<session::ExistingFd::Kind>(in.byte() % 4);
          f.pipe = in.byte() % 4;
          if ((in.byte() & 1) != 0) f.peer = session::decode_sockaddr(in.bytes(28));
          if ((in.byte() & 1) != 0) f.local = session::decode_sockaddr(in.bytes(28));
        }
        t.add_existing(pid, 100 + in.byte() % 110, "sh", now, fds);
        continue;
      }
      session::CallEvent e;
      e.pid = pid;
      e.tid = (in.byte() & 7) == 0 ? pid + 1 : pid;
      e.comm = "fz";
      const char* name = kCalls[op % std::size(kCalls)];
      e.call.nr = table.by_name(name).value_or(0);
      for (auto& a : e.call.args) {
        const std::uint8_t b = in.byte();
        a = (b & 0x80) != 0 ? static_cast<std::uint64_t>(-static_cast<std::int64_t>(b & 0x7f)) : b;
      }
      if (std::string_view(name) == "ioctl" && (in.byte() & 1) != 0) e.call.args[1] = 0x5414;
      const std::uint8_t r = in.byte();
      if (r != 0xff) e.call.ret = (r & 0x80) != 0 ? -static_cast<std::int64_t>(r & 0x7f) : static_cast<std::int64_t>(r) + 190;
      if ((r & 0x40) != 0 && e.call.ret) e.call.ret = *e.call.ret - 190;   // small fds and lengths too
      const unsigned ncaps = in.byte() % 4;
      for (unsigned i = 0; i < ncaps; ++i) {
        events::Capture c;
        c.arg = in.byte() % 6;
        c.kind = static_cast<abi::CaptureKind>(1 + in.byte() % 3);
        c.flags = in.byte() & 7;
        c.data = in.bytes(200);
        c.true_len = c.data.size() + in.byte();
        ((in.byte() & 1) != 0 ? e.call.exit_caps : e.call.entry_caps).push_back(std::move(c));
      }
      e.entry_ns = now;
      e.exit_ns = now + 10;
      t.on_call(e);
    }
    t.finish(now + 1);
  }
  // Every events.jsonl and session.cast line is JSON.
  std::error_code ec;
  for (const auto& d : fs::directory_iterator(scratch(), ec)) {
    for (const char* f : {"events.jsonl", "session.cast"}) {
      std::ifstream is(d.path() / f);
      std::string line;
      while (std::getline(is, line))
        if (nlohmann::json::accept(line) == false) __builtin_trap();
    }
  }
  return 0;
}
