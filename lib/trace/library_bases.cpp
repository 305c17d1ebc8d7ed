#include "trace/library_bases.hpp"

#include "trace/tracer.hpp"

#include <algorithm>

namespace hvtrace::trace {
namespace {

constexpr std::uint64_t kOpen = 2, kClose = 3, kMmap = 9, kMunmap = 11, kOpenat = 257, kClone = 56;
constexpr std::uint64_t kCloneThread = 0x10000;
constexpr std::uint64_t kUserTop = 1ULL << 56;

const events::Capture* string_arg(const syscalls::Call& c, unsigned arg) {
  for (const auto& cp : c.entry_caps)
    if (cp.arg == arg && cp.kind == abi::CaptureKind::kString) return &cp;
  return nullptr;
}

}  // namespace

LibraryBases::LibraryBases(std::vector<std::string> names, std::size_t max_procs)
    : names_(std::move(names)), max_procs_(max_procs) {}

std::optional<std::string> LibraryBases::watched(const std::string& path) const {
  const std::string_view p(path.data(), std::min(path.find('\0'), path.size()));
  const auto slash = p.rfind('/');
  const std::string_view base = slash == std::string_view::npos ? p : p.substr(slash + 1);
  for (const auto& n : names_)
    if (base == n) return n;
  return std::nullopt;
}

std::vector<LibraryBases::Change> LibraryBases::on_call(std::uint32_t pid, const syscalls::Call& c) {
  std::vector<Change> out;
  if (is_exit_group(c.abi, c.nr)) return forget(pid);   // does not return
  if (c.abi != abi::SyscallAbi::kX86_64 || !c.ret) return out;   // 64-bit processes only
  const std::int64_t ret = *c.ret;
  const bool ok = ret >= 0 || ret < -4095;
  if (is_execve(c.abi, c.nr) && ret == 0) return forget(pid);
  if (is_clone_family(c.abi, c.nr) && ret > 0 && ok) {
    if (c.nr == kClone && (c.args[0] & kCloneThread) != 0) return out;   // a thread: same process
    const auto cpid = static_cast<std::uint32_t>(ret);
    if (forked_.erase(cpid) != 0) return out;   // announced at the fork already
    return inherit(pid, cpid);
  }
  switch (c.nr) {
    case kOpen:
    case kOpenat: {
      if (ret < 0) break;
      const auto* path = string_arg(c, c.nr == kOpen ? 0 : 1);
      if (path == nullptr) break;
      auto lib = watched(path->data);
      auto it = procs_.find(pid);
      if (!lib) {   // the fd now names another file
        if (it != procs_.end()) it->second.fds.erase(ret);
        break;
      }
      if (it == procs_.end()) {
        if (procs_.size() >= max_procs_) break;
        it = procs_.emplace(pid, Proc{}).first;
      }
      if (it->second.fds.size() < 64) it->second.fds[ret] = *lib;
      break;
    }
    case kClose: {
      if (auto it = procs_.find(pid); it != procs_.end()) it->second.fds.erase(static_cast<std::int64_t>(static_cast<std::int32_t>(c.args[0])));
      break;
    }
    case kMmap: {
      auto it = procs_.find(pid);
      if (it == procs_.end() || ret <= 0 || static_cast<std::uint64_t>(ret) >= kUserTop || (ret & 0xfff) != 0) break;
      const auto fd = static_cast<std::int64_t>(static_cast<std::int32_t>(c.args[4]));
      auto f = it->second.fds.find(fd);
      if (f == it->second.fds.end() || c.args[5] != 0) break;
      const std::string lib = f->second;
      it->second.fds.erase(f);   // later mmaps of the same fd are its other segments
      it->second.loaded[lib] = static_cast<std::uint64_t>(ret);
      out.push_back({Change::Kind::kLoaded, pid, lib, static_cast<std::uint64_t>(ret)});
      break;
    }
    case kMunmap: {
      auto it = procs_.find(pid);
      if (it == procs_.end() || ret != 0) break;
      for (auto l = it->second.loaded.begin(); l != it->second.loaded.end();) {
        if (l->second >= c.args[0] && l->second - c.args[0] < c.args[1]) {
          out.push_back({Change::Kind::kUnloaded, pid, l->first, l->second});
          l = it->second.loaded.erase(l);
        } else {
          ++l;
        }
      }
      break;
    }
    default: break;
  }
  return out;
}

std::vector<LibraryBases::Change> LibraryBases::set_loaded(std::uint32_t pid, const std::string& lib, std::uint64_t base) {
  auto it = procs_.find(pid);
  if (it == procs_.end()) {
    if (procs_.size() >= max_procs_) return {};
    it = procs_.emplace(pid, Proc{}).first;
  }
  auto [l, added] = it->second.loaded.try_emplace(lib, base);
  if (!added && l->second == base) return {};
  l->second = base;
  return {Change{Change::Kind::kLoaded, pid, lib, base}};
}

std::vector<LibraryBases::Change> LibraryBases::fork(std::uint32_t parent, std::uint32_t child) {
  if (forked_.size() >= max_procs_) forked_.clear();   // returns never seen (lost events): forget them
  forked_.insert(child);
  return inherit(parent, child);
}

std::vector<LibraryBases::Change> LibraryBases::inherit(std::uint32_t parent, std::uint32_t child) {
  std::vector<Change> out;
  auto it = procs_.find(parent);
  if (it == procs_.end() || it->second.loaded.empty() || parent == child) return out;
  if (procs_.count(child) == 0 && procs_.size() >= max_procs_) return out;
  Proc p;
  p.loaded = it->second.loaded;   // fork: the same mappings, in a new address space
  for (const auto& [lib, b] : p.loaded) out.push_back({Change::Kind::kLoaded, child, lib, b});
  procs_[child] = std::move(p);
  return out;
}

std::vector<LibraryBases::Change> LibraryBases::forget(std::uint32_t pid) {
  std::vector<Change> out;
  auto it = procs_.find(pid);
  if (it == procs_.end()) return out;
  for (const auto& [lib, b] : it->second.loaded) out.push_back({Change::Kind::kUnloaded, pid, lib, b});
  procs_.erase(it);
  return out;
}

std::optional<std::uint64_t> LibraryBases::base(std::uint32_t pid, const std::string& lib) const {
  const auto* b = bases(pid);
  if (b == nullptr) return std::nullopt;
  auto it = b->find(lib);
  if (it == b->end()) return std::nullopt;
  return it->second;
}

const std::map<std::string, std::uint64_t>* LibraryBases::bases(std::uint32_t pid) const {
  auto it = procs_.find(pid);
  return it == procs_.end() ? nullptr : &it->second.loaded;
}

syscalls::TraceSet LibraryBases::syscall_set() {
  syscalls::TraceSet set;
  for (const std::uint64_t nr : {kOpen, kOpenat, kClose, kMmap, kMunmap}) set.nrs[0].set(nr);
  for (std::size_t nr = 0; nr < syscalls::Table::kMaxNr; ++nr) {
    if (is_execve(abi::SyscallAbi::kX86_64, nr) || is_clone_family(abi::SyscallAbi::kX86_64, nr) ||
        is_exit_group(abi::SyscallAbi::kX86_64, nr))
      set.nrs[0].set(nr);
    if (is_exit_group(abi::SyscallAbi::kI386, nr)) set.nrs[1].set(nr);
  }
  return set;
}

}  // namespace hvtrace::trace
