// A process's open files, read from guest memory as lsof would read them from inside:
// task_struct.files -> files_struct.fdt -> fdtable.{max_fds, fd[]} -> struct file -> f_inode
// (i_mode, i_rdev) and, for sockets, file.private_data (struct socket) -> sk -> sock_common
// (family, addresses, ports, state). Each fd is classified: pty master (/dev/ptmx, char 5:2), pty
// slave (char 136-143:*), socket (with addresses for IPv4/IPv6), pipe (both ends share the pipe's
// inode), regular file, directory, other character device, other.
// The guest is hostile: at most FdLimits::max_fds slots are looked at and max_open files kept (the
// table says it was cut); every pointer must be a kernel address and every read succeed. A table
// that cannot be read is an error; one file that cannot be read is an entry of kind kUnreadable
// with the reason, and the walk goes on. Offsets come from the profile (BTF); a kernel whose BTF
// lacks one of them gives an error naming the field ("open files not available").
#pragma once

#include "common/result.hpp"
#include "common/types.hpp"
#include "linux/processes.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::linux_os {

enum class FileKind : std::uint8_t { kPtyMaster, kPtySlave, kSocket, kPipe, kFile, kDir, kCharDev, kOther, kUnreadable };

struct SocketEnd {
  std::string ip;   // text; an IPv4-mapped IPv6 address as IPv4
  std::uint16_t port = 0;
};

struct SocketInfo {
  std::uint16_t family = 0;   // AF_*: 1 unix, 2 inet, 10 inet6
  std::uint16_t type = 0;     // SOCK_STREAM 1, SOCK_DGRAM 2, ...
  std::uint8_t state = 0;     // sock_common.skc_state (TCP: 1 established, 10 listen)
  std::optional<SocketEnd> local{}, peer{};   // inet families; peer only when connected (port != 0)
  std::string error;          // non-empty: the struct socket / sock could not be read (why)
};

struct OpenFile {
  int fd = -1;
  FileKind kind = FileKind::kOther;
  GVA file, inode;            // the struct file and its inode (pipes: both ends have the same inode)
  std::uint32_t mode = 0;     // inode.i_mode
  std::uint32_t major = 0, minor = 0;   // inode.i_rdev (device files)
  std::uint64_t ino = 0;      // inode.i_ino (0 if the profile lacks it)
  bool readable = false, writable = false;   // file.f_mode FMODE_READ / FMODE_WRITE
  std::optional<SocketInfo> socket;
  std::string error;          // kUnreadable: why
};

struct FdLimits {
  std::uint32_t max_fds = 1U << 16;   // fd slots looked at (fdtable.max_fds beyond this: cut)
  std::size_t max_open = 4096;        // open files kept
};

struct FdTable {
  std::vector<OpenFile> files;   // by fd, ascending
  std::uint32_t max_fds = 0;     // fdtable.max_fds as the guest says it
  bool cut = false;              // a limit stopped the walk: more fds may be open
};

// Offsets resolved once from the profile.
struct FileLayout {
  std::uint64_t task_files, files_fdt, fdt_max_fds, fdt_fd, file_inode, file_mode, file_private, inode_mode, inode_rdev;
  std::optional<std::uint64_t> inode_ino;
  struct Sock {
    std::uint64_t socket_type, socket_sk, sk_common, family, state, daddr, rcv_saddr, dport, num;
    std::optional<std::uint64_t> v6_daddr, v6_rcv_saddr;
  };
  std::optional<Sock> sock;   // none: sockets are classified without their addresses
  [[nodiscard]] static Result<FileLayout> from(const kernel::Kernel& k);
};

// The open files of a process (its thread-group leader's table; threads share it). A process
// with no files_struct (exited, a zombie) has none.
[[nodiscard]] Result<FdTable> open_files(const Linux& lx, const Process& p, const FdLimits& limits = {});

[[nodiscard]] std::string_view kind_name(FileKind k);   // "pty-master", "socket", ...
// One line for a person: "pty-master /dev/ptmx", "tcp 10.0.2.15:22 -> 10.0.2.2:51234", "pipe inode 0x...".
[[nodiscard]] std::string describe(const OpenFile& f);

}  // namespace hvtrace::linux_os
