// Which syscall arguments the monitor copies out of guest memory (x86-64 numbers), in the spirit
// of strace's table: one row per syscall. Entry captures run at the kernel entry point (the data
// is the caller's input); exit captures run on the return to user mode (the kernel's output).
#pragma once

#include "hvtrace/abi/events.h"

#include <cstdint>

namespace hvtrace::monitor {

struct CaptureSpec {
  std::uint8_t arg;              // pointer argument
  abi::CaptureKind kind;
  std::int8_t len_arg;           // buffer length: argument index, or -1 = the return value
};

struct SyscallCaptures {
  std::uint16_t nr;
  bool at_exit;
  std::uint8_t n;
  CaptureSpec c[2];
};

using K = abi::CaptureKind;
inline constexpr SyscallCaptures kCaptureTable[] = {
    {0, true, 1, {{1, K::kBuffer, -1}}},                         // read: buf, ret bytes
    {1, false, 1, {{1, K::kBuffer, 2}}},                         // write: buf, count
    {2, false, 1, {{0, K::kString, 0}}},                         // open
    {4, false, 1, {{0, K::kString, 0}}},                         // stat
    {6, false, 1, {{0, K::kString, 0}}},                         // lstat
    {17, true, 1, {{1, K::kBuffer, -1}}},                        // pread64
    {18, false, 1, {{1, K::kBuffer, 2}}},                        // pwrite64
    {21, false, 1, {{0, K::kString, 0}}},                        // access
    {44, false, 1, {{1, K::kBuffer, 2}}},                        // sendto
    {45, true, 1, {{1, K::kBuffer, -1}}},                        // recvfrom
    {59, false, 2, {{0, K::kString, 0}, {1, K::kArgv, 0}}},      // execve
    {76, false, 1, {{0, K::kString, 0}}},                        // truncate
    {80, false, 1, {{0, K::kString, 0}}},                        // chdir
    {82, false, 2, {{0, K::kString, 0}, {1, K::kString, 0}}},    // rename
    {83, false, 1, {{0, K::kString, 0}}},                        // mkdir
    {84, false, 1, {{0, K::kString, 0}}},                        // rmdir
    {85, false, 1, {{0, K::kString, 0}}},                        // creat
    {86, false, 2, {{0, K::kString, 0}, {1, K::kString, 0}}},    // link
    {87, false, 1, {{0, K::kString, 0}}},                        // unlink
    {88, false, 2, {{0, K::kString, 0}, {1, K::kString, 0}}},    // symlink
    {89, false, 1, {{0, K::kString, 0}}},                        // readlink
    {90, false, 1, {{0, K::kString, 0}}},                        // chmod
    {92, false, 1, {{0, K::kString, 0}}},                        // chown
    {161, false, 1, {{0, K::kString, 0}}},                       // chroot
    {257, false, 1, {{1, K::kString, 0}}},                       // openat
    {258, false, 1, {{1, K::kString, 0}}},                       // mkdirat
    {262, false, 1, {{1, K::kString, 0}}},                       // newfstatat
    {263, false, 1, {{1, K::kString, 0}}},                       // unlinkat
    {264, false, 2, {{1, K::kString, 0}, {3, K::kString, 0}}},   // renameat
    {267, false, 1, {{1, K::kString, 0}}},                       // readlinkat
    {269, false, 1, {{1, K::kString, 0}}},                       // faccessat
    {316, false, 2, {{1, K::kString, 0}, {3, K::kString, 0}}},   // renameat2
    {322, false, 2, {{1, K::kString, 0}, {2, K::kArgv, 0}}},     // execveat
    {332, false, 1, {{1, K::kString, 0}}},                       // statx
    {439, false, 1, {{1, K::kString, 0}}},                       // faccessat2
};

constexpr const SyscallCaptures* find_captures(std::uint64_t nr, bool at_exit) {
  for (const auto& row : kCaptureTable)
    if (row.nr == nr && row.at_exit == at_exit) return &row;
  return nullptr;
}

}  // namespace hvtrace::monitor
