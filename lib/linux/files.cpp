// Open files from guest memory; see files.hpp for what is read and the bounds.
#include "linux/files.hpp"

#include "linux/field_at.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <initializer_list>

namespace hvtrace::linux_os {
namespace {

constexpr std::uint32_t kIfmt = 0170000, kIfsock = 0140000, kIfreg = 0100000, kIfdir = 0040000, kIfchr = 0020000,
                        kIfifo = 0010000;
constexpr std::uint32_t kFmodeRead = 0x1, kFmodeWrite = 0x2;
constexpr std::uint16_t kAfUnix = 1, kAfInet = 2, kAfInet6 = 10;
constexpr std::uint64_t kStructLimit = 1U << 16;   // an offset beyond this is a corrupt profile
constexpr std::size_t kFdChunk = 512;              // fd pointers read at once (one 4 KiB page)

bool kernel_pointer(const Linux& lx, std::uint64_t v) {
  return (v >> 63) != 0 && arch::is_canonical(GVA{v}, lx.kernel().layout().paging);
}

// One read covering every offset in `offs` (each with the size after it), from the lowest.
Result<std::vector<std::byte>> read_span(const Linux& lx, GVA base, std::initializer_list<std::pair<std::uint64_t, std::uint64_t>> offs,
                                         std::uint64_t& lo) {
  lo = UINT64_MAX;
  std::uint64_t hi = 0;
  for (const auto& [off, size] : offs) {
    lo = std::min(lo, off);
    hi = std::max(hi, off + size);
  }
  std::vector<std::byte> buf(hi - lo);
  HVTRACE_TRY(lx.kernel().read(GVA{base.value + lo}, buf));
  return buf;
}

std::string ipv4_text(std::uint32_t be) {
  char t[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &be, t, sizeof t);
  return t;
}

std::string ipv6_text(const std::array<std::uint8_t, 16>& a) {
  static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::equal(a.begin(), a.begin() + 12, kMapped)) {
    std::uint32_t be = 0;
    std::memcpy(&be, a.data() + 12, 4);
    return ipv4_text(be);
  }
  char t[INET6_ADDRSTRLEN] = {};
  inet_ntop(AF_INET6, a.data(), t, sizeof t);
  return t;
}

// The socket behind a file whose inode is a socket: file.private_data -> struct socket -> sk.
SocketInfo read_socket(const Linux& lx, const FileLayout::Sock& l, std::uint64_t socket_ptr) {
  SocketInfo si;
  if (!kernel_pointer(lx, socket_ptr)) {
    si.error = fmt::format("struct socket pointer {:#x} is not a kernel address", socket_ptr);
    return si;
  }
  std::uint64_t lo = 0;
  auto sb = read_span(lx, GVA{socket_ptr}, {{l.socket_type, 2}, {l.socket_sk, 8}}, lo);
  if (!sb) {
    si.error = fmt::format("reading struct socket at {:#x}: {}", socket_ptr, sb.error().message);
    return si;
  }
  si.type = field_at<std::uint16_t>(*sb, l.socket_type - lo);
  const std::uint64_t sk = field_at<std::uint64_t>(*sb, l.socket_sk - lo);
  if (sk == 0) return si;   // not yet (or no longer) attached to a sock
  if (!kernel_pointer(lx, sk)) {
    si.error = fmt::format("sock pointer {:#x} is not a kernel address", sk);
    return si;
  }
  const GVA common{sk + l.sk_common};
  const std::uint64_t v6d = l.v6_daddr.value_or(l.family), v6s = l.v6_rcv_saddr.value_or(l.family);
  auto cb = read_span(lx, common,
                      {{l.family, 2}, {l.state, 1}, {l.daddr, 4}, {l.rcv_saddr, 4}, {l.dport, 2}, {l.num, 2},
                       {v6d, l.v6_daddr ? 16 : 2}, {v6s, l.v6_rcv_saddr ? 16 : 2}},
                      lo);
  if (!cb) {
    si.error = fmt::format("reading sock at {:#x}: {}", sk, cb.error().message);
    return si;
  }
  const auto& c = *cb;
  si.family = field_at<std::uint16_t>(c, l.family - lo);
  si.state = field_at<std::uint8_t>(c, l.state - lo);
  const std::uint16_t dport = ntohs(field_at<std::uint16_t>(c, l.dport - lo));
  const std::uint16_t num = field_at<std::uint16_t>(c, l.num - lo);   // host order
  if (si.family == kAfInet) {
    si.local = SocketEnd{ipv4_text(field_at<std::uint32_t>(c, l.rcv_saddr - lo)), num};
    if (dport != 0) si.peer = SocketEnd{ipv4_text(field_at<std::uint32_t>(c, l.daddr - lo)), dport};
  } else if (si.family == kAfInet6 && l.v6_daddr && l.v6_rcv_saddr) {
    si.local = SocketEnd{ipv6_text(field_at<std::array<std::uint8_t, 16>>(c, v6s - lo)), num};
    if (dport != 0) si.peer = SocketEnd{ipv6_text(field_at<std::array<std::uint8_t, 16>>(c, v6d - lo)), dport};
  }
  return si;
}

OpenFile read_file(const Linux& lx, const FileLayout& l, int fd, std::uint64_t file_ptr) {
  OpenFile f;
  f.fd = fd;
  f.file = GVA{file_ptr};
  f.kind = FileKind::kUnreadable;
  if (!kernel_pointer(lx, file_ptr)) {
    f.error = fmt::format("struct file pointer {:#x} is not a kernel address", file_ptr);
    return f;
  }
  std::uint64_t lo = 0;
  auto fb = read_span(lx, f.file, {{l.file_inode, 8}, {l.file_mode, 4}, {l.file_private, 8}}, lo);
  if (!fb) {
    f.error = fmt::format("reading struct file at {:#x}: {}", file_ptr, fb.error().message);
    return f;
  }
  const std::uint32_t fmode = field_at<std::uint32_t>(*fb, l.file_mode - lo);
  f.readable = (fmode & kFmodeRead) != 0;
  f.writable = (fmode & kFmodeWrite) != 0;
  const std::uint64_t priv = field_at<std::uint64_t>(*fb, l.file_private - lo);
  f.inode = GVA{field_at<std::uint64_t>(*fb, l.file_inode - lo)};
  if (!kernel_pointer(lx, f.inode.value)) {
    f.error = fmt::format("inode pointer {:#x} of struct file {:#x} is not a kernel address", f.inode.value, file_ptr);
    return f;
  }
  const std::uint64_t ino_off = l.inode_ino.value_or(l.inode_mode);
  auto ib = read_span(lx, f.inode, {{l.inode_mode, 2}, {l.inode_rdev, 4}, {ino_off, l.inode_ino ? 8 : 2}}, lo);
  if (!ib) {
    f.error = fmt::format("reading inode at {:#x}: {}", f.inode.value, ib.error().message);
    return f;
  }
  f.mode = field_at<std::uint16_t>(*ib, l.inode_mode - lo);
  const std::uint32_t rdev = field_at<std::uint32_t>(*ib, l.inode_rdev - lo);
  if (l.inode_ino) f.ino = field_at<std::uint64_t>(*ib, *l.inode_ino - lo);
  switch (f.mode & kIfmt) {
    case kIfchr:
      f.major = rdev >> 20;   // the kernel's dev_t: MINORBITS 20
      f.minor = rdev & 0xfffff;
      if (f.major == 5 && f.minor == 2) f.kind = FileKind::kPtyMaster;
      else if (f.major >= 136 && f.major <= 143) f.kind = FileKind::kPtySlave;
      else f.kind = FileKind::kCharDev;
      break;
    case kIfsock:
      f.kind = FileKind::kSocket;
      if (l.sock) f.socket = read_socket(lx, *l.sock, priv);
      else f.socket = SocketInfo{.error = "the kernel's BTF lacks the socket layout (socket.sk, sock_common.*)"};
      break;
    case kIfifo: f.kind = FileKind::kPipe; break;
    case kIfreg: f.kind = FileKind::kFile; break;
    case kIfdir: f.kind = FileKind::kDir; break;
    default: f.kind = FileKind::kOther; break;
  }
  return f;
}

}  // namespace

Result<FileLayout> FileLayout::from(const kernel::Kernel& k) {
  FileLayout l{};
  std::string missing;
  auto get = [&](const char* name, std::uint64_t& out) {
    if (auto f = k.profile().field(name)) out = f->offset;
    else missing += std::string(missing.empty() ? "" : ", ") + name;
  };
  get("task_struct.files", l.task_files);
  get("files_struct.fdt", l.files_fdt);
  get("fdtable.max_fds", l.fdt_max_fds);
  get("fdtable.fd", l.fdt_fd);
  get("file.f_inode", l.file_inode);
  get("file.f_mode", l.file_mode);
  get("file.private_data", l.file_private);
  get("inode.i_mode", l.inode_mode);
  get("inode.i_rdev", l.inode_rdev);
  if (!missing.empty())
    return make_error("open files not available: the kernel's profile lacks {} (BTF without them, or a profile "
                      "from a System.map/ISF that does not have them)",
                      missing);
  if (auto f = k.profile().field("inode.i_ino")) l.inode_ino = f->offset;
  std::vector<std::uint64_t> all = {l.task_files, l.files_fdt, l.fdt_max_fds, l.fdt_fd, l.file_inode,
                                    l.file_mode, l.file_private, l.inode_mode, l.inode_rdev, l.inode_ino.value_or(0)};
  Sock s{};
  const std::string before = missing;
  get("socket.type", s.socket_type);
  get("socket.sk", s.socket_sk);
  get("sock.__sk_common", s.sk_common);
  get("sock_common.skc_family", s.family);
  get("sock_common.skc_state", s.state);
  get("sock_common.skc_daddr", s.daddr);
  get("sock_common.skc_rcv_saddr", s.rcv_saddr);
  get("sock_common.skc_dport", s.dport);
  get("sock_common.skc_num", s.num);
  if (missing == before) {
    if (auto f = k.profile().field("sock_common.skc_v6_daddr")) s.v6_daddr = f->offset;
    if (auto f = k.profile().field("sock_common.skc_v6_rcv_saddr")) s.v6_rcv_saddr = f->offset;
    for (std::uint64_t off : {s.socket_type, s.socket_sk, s.sk_common, s.family, s.state, s.daddr, s.rcv_saddr, s.dport,
                              s.num, s.v6_daddr.value_or(0), s.v6_rcv_saddr.value_or(0)})
      all.push_back(off);
    l.sock = s;
  }
  for (std::uint64_t off : all)
    if (off > kStructLimit) return make_error("profile offset {:#x} for open files is implausible", off);
  return l;
}

Result<FdTable> open_files(const Linux& lx, const Process& p, const FdLimits& limits) {
  auto layout = FileLayout::from(lx.kernel());
  if (!layout) return std::move(layout).error();
  const FileLayout& l = *layout;
  const kernel::Kernel& k = lx.kernel();
  const auto ctx = [&](std::string_view what) { return fmt::format("open files of pid {}: {}", p.pid.value, what); };
  FdTable t;
  auto files = k.read_as<std::uint64_t>(GVA{p.task.value + l.task_files});
  if (!files) return std::move(files).with_context(ctx(fmt::format("reading task_struct.files at {:#x}", p.task.value))).error();
  if (*files == 0) return t;   // exited (exit_files) or a zombie: nothing open
  if (!kernel_pointer(lx, *files)) return make_error("{}", ctx(fmt::format("files_struct pointer {:#x} is not a kernel address", *files)));
  auto fdt = k.read_as<std::uint64_t>(GVA{*files + l.files_fdt});
  if (!fdt) return std::move(fdt).with_context(ctx(fmt::format("reading files_struct at {:#x}", *files))).error();
  if (!kernel_pointer(lx, *fdt)) return make_error("{}", ctx(fmt::format("fdtable pointer {:#x} is not a kernel address", *fdt)));
  std::uint64_t lo = 0;
  auto tb = read_span(lx, GVA{*fdt}, {{l.fdt_max_fds, 4}, {l.fdt_fd, 8}}, lo);
  if (!tb) return std::move(tb).with_context(ctx(fmt::format("reading fdtable at {:#x}", *fdt))).error();
  t.max_fds = field_at<std::uint32_t>(*tb, l.fdt_max_fds - lo);
  const std::uint64_t array = field_at<std::uint64_t>(*tb, l.fdt_fd - lo);
  if (!kernel_pointer(lx, array)) return make_error("{}", ctx(fmt::format("fd array pointer {:#x} is not a kernel address", array)));
  const std::uint32_t slots = std::min(t.max_fds, limits.max_fds);
  if (slots < t.max_fds) t.cut = true;
  std::vector<std::byte> chunk;
  for (std::uint32_t first = 0; first < slots && !(t.cut && t.files.size() >= limits.max_open); first += kFdChunk) {
    const std::uint32_t n = std::min<std::uint32_t>(kFdChunk, slots - first);
    chunk.assign(static_cast<std::size_t>(n) * 8, std::byte{0});
    if (auto r = k.read(GVA{array + 8ULL * first}, chunk); !r)
      return std::move(r).with_context(ctx(fmt::format("reading fd slots {}..{} at {:#x} (max_fds {})", first, first + n - 1,
                                                       array + 8ULL * first, t.max_fds))).error();
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::uint64_t fp = field_at<std::uint64_t>(chunk, 8ULL * i);
      if (fp == 0) continue;
      if (t.files.size() >= limits.max_open) {
        t.cut = true;
        break;
      }
      t.files.push_back(read_file(lx, l, static_cast<int>(first + i), fp));
    }
  }
  return t;
}

std::string_view kind_name(FileKind k) {
  switch (k) {
    case FileKind::kPtyMaster: return "pty-master";
    case FileKind::kPtySlave: return "pty-slave";
    case FileKind::kSocket: return "socket";
    case FileKind::kPipe: return "pipe";
    case FileKind::kFile: return "file";
    case FileKind::kDir: return "dir";
    case FileKind::kCharDev: return "chardev";
    case FileKind::kOther: return "other";
    case FileKind::kUnreadable: return "unreadable";
  }
  return "?";
}

std::string describe(const OpenFile& f) {
  const auto end = [](const SocketEnd& e, bool v6) { return v6 ? fmt::format("[{}]:{}", e.ip, e.port) : fmt::format("{}:{}", e.ip, e.port); };
  switch (f.kind) {
    case FileKind::kPtyMaster: return "pty-master /dev/ptmx";
    case FileKind::kPtySlave: return fmt::format("pty-slave /dev/pts/{}", (f.major - 136) * 256 + f.minor);
    case FileKind::kCharDev: return fmt::format("chardev {}:{}", f.major, f.minor);
    case FileKind::kPipe: return fmt::format("pipe {}{} inode {:#x}", f.readable ? "r" : "", f.writable ? "w" : "", f.inode.value);
    case FileKind::kUnreadable: return "unreadable: " + f.error;
    case FileKind::kSocket: {
      if (!f.socket) return "socket";
      const SocketInfo& s = *f.socket;
      if (!s.error.empty()) return "socket: " + s.error;
      if (s.family == kAfUnix) return "unix socket";
      if (s.family != kAfInet && s.family != kAfInet6) return fmt::format("socket family {}", s.family);
      const bool v6 = s.family == kAfInet6 && s.local && s.local->ip.find(':') != std::string::npos;
      std::string out = fmt::format("{}{}", s.type == 2 ? "udp" : s.type == 1 ? "tcp" : "inet", s.family == kAfInet6 ? "6" : "");
      if (s.local) out += " " + end(*s.local, v6);
      if (s.peer) out += " -> " + end(*s.peer, s.peer->ip.find(':') != std::string::npos);
      if (s.type == 1 && s.state == 10) out += " (listen)";
      return out;
    }
    default: return fmt::format("{} inode {:#x} ino {}", kind_name(f.kind), f.inode.value, f.ino);
  }
}

}  // namespace hvtrace::linux_os
