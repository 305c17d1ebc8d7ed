#include "bench/host.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

namespace hvtrace::bench {

double process_cpu_seconds(pid_t pid) {
  std::ifstream f(fmt::format("/proc/{}/stat", pid));
  const std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
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

unsigned long process_rss_kib(pid_t pid) {
  std::ifstream f(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) {
      try {
        return std::stoul(line.substr(6));
      } catch (const std::exception&) {
        return 0;
      }
    }
  return 0;
}

std::vector<pid_t> child_processes(pid_t parent, const std::string& comm) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream st(e.path() / "stat");
    const std::string s((std::istreambuf_iterator<char>(st)), std::istreambuf_iterator<char>());
    const auto lp = s.find('('), rp = s.rfind(')');
    if (lp == std::string::npos || rp == std::string::npos || rp + 4 > s.size()) continue;
    if (s.substr(lp + 1, rp - lp - 1) != comm) continue;
    std::istringstream in(s.substr(rp + 2));
    std::string state;
    long ppid = 0;
    if (in >> state >> ppid && ppid == parent && state != "Z") out.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return out;
}

}  // namespace hvtrace::bench
