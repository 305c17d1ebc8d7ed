#include "bench/host.hpp"

#include <fmt/format.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

namespace hvtrace::bench {

namespace {
// A /proc file read with plain read(2): a process can vanish between open and read (ESRCH), which
// makes std::ifstream's stream buffer throw; here it is an empty result.
std::string read_proc(const std::string& path) {
  std::string out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0 || out.size() > (1u << 20)) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}
}  // namespace

double process_cpu_seconds(pid_t pid) {
  const std::string s = read_proc(fmt::format("/proc/{}/stat", pid));
  const auto rp = s.rfind(')');   // the command name may hold spaces and parentheses
  if (rp == std::string::npos || rp + 2 > s.size()) return std::nan("");
  std::istringstream in(s.substr(rp + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    try {
      if (i == 14) utime = std::stoull(field);
      if (i == 15) stime = std::stoull(field);
    } catch (const std::exception&) {
      return std::nan("");
    }
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

unsigned long process_status_kib(pid_t pid, const std::string& field) {
  std::istringstream f(read_proc(fmt::format("/proc/{}/status", pid)));
  const std::string key = field + ":";
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) {
      try {
        return std::stoul(line.substr(key.size()));
      } catch (const std::exception&) {
        return 0;
      }
    }
  return 0;
}

unsigned long process_rss_kib(pid_t pid) { return process_status_kib(pid, "VmRSS"); }

std::vector<pid_t> child_processes(pid_t parent, const std::string& comm) {
  std::vector<pid_t> out;
  std::error_code ec;
  std::filesystem::directory_iterator it("/proc", ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const auto& e = *it;
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string s = read_proc((e.path() / "stat").string());
    const auto lp = s.find('('), rp = s.rfind(')');
    if (lp == std::string::npos || rp == std::string::npos || rp + 4 > s.size()) continue;
    if (s.substr(lp + 1, rp - lp - 1) != comm) continue;
    std::istringstream in(s.substr(rp + 2));
    std::string state;
    long ppid = 0;
    if (in >> state >> ppid && ppid == parent && state != "Z") out.push_back(static_cast<pid_t>(std::strtol(name.c_str(), nullptr, 10)));
  }
  return out;
}

}  // namespace hvtrace::bench
