// Which syscall arguments the monitor copies out of guest memory (x86-64 and i386 numbers), in the spirit
// of strace's table: one row per syscall. Entry captures run at the kernel entry point (the data
// is the caller's input); exit captures run on the return to user mode (the kernel's output).
#pragma once

#include "hvtrace/abi/events.h"

#include <cstdint>

namespace hvtrace::monitor {

// len_arg of a buffer whose length the call does not pass as a value: copy `fixed` bytes. For
// structures the kernel fills in through a pointer whose size sits behind another pointer
// (accept's sockaddr, its length at *arg2) or is implied by the request (ioctl, pipe's two fds).
// The copy is skipped when the pointer is NULL or the call failed (ret < 0; at entry ret is 0),
// is bounded by the snap length like any buffer, and a fault flags it as usual. true_len = fixed:
// the decoder knows the structure's real extent (e.g. from sa_family).
inline constexpr std::int8_t kFixedLen = -2;
// len_arg of writev's data: `arg` is an iovec array, its count the next argument; the buffers are
// copied in order into one kBuffer capture (captures.hpp copy_iovec, at most kMaxIovecs entries).
inline constexpr std::int8_t kIovecLen = -3;
// len_arg of a kArgv capture that only counts the entries (execve's envp: strace's "/* N vars */").
inline constexpr std::int8_t kCountOnly = -4;

struct CaptureSpec {
  std::uint8_t arg;              // pointer argument
  abi::CaptureKind kind;
  std::int8_t len_arg;           // buffer length: argument index, -1 = the return value, kFixedLen = `fixed`
  std::uint16_t fixed = 0;       // bytes to copy when len_arg == kFixedLen
};
inline constexpr std::uint16_t kSockaddrMax = 110;   // sizeof(struct sockaddr_un): covers sockaddr_in6 (28)

struct SyscallCaptures {
  std::uint8_t table;            // 0: x86-64 numbers, 1: i386 numbers
  std::uint16_t nr;
  bool at_exit;
  std::uint8_t n;
  CaptureSpec c[4];   // at most abi::kMaxCaptures
};

using K = abi::CaptureKind;
inline constexpr SyscallCaptures kCaptureTable[] = {
    {0, 0, true, 1, {{1, K::kBuffer, -1}}},                         // read: buf, ret bytes
    {0, 1, false, 1, {{1, K::kBuffer, 2}}},                         // write: buf, count
    {0, 2, false, 1, {{0, K::kString, 0}}},                         // open
    {0, 4, false, 1, {{0, K::kString, 0}}},                         // stat
    {0, 6, false, 1, {{0, K::kString, 0}}},                         // lstat
    {0, 17, true, 1, {{1, K::kBuffer, -1}}},                        // pread64
    {0, 18, false, 1, {{1, K::kBuffer, 2}}},                        // pwrite64
    {0, 21, false, 1, {{0, K::kString, 0}}},                        // access
    {0, 44, false, 1, {{1, K::kBuffer, 2}}},                        // sendto
    {0, 45, true, 1, {{1, K::kBuffer, -1}}},                        // recvfrom
    {0, 59, false, 3, {{0, K::kString, 0}, {1, K::kArgv, 0}, {2, K::kArgv, kCountOnly}}},      // execve
    {0, 76, false, 1, {{0, K::kString, 0}}},                        // truncate
    {0, 80, false, 1, {{0, K::kString, 0}}},                        // chdir
    {0, 82, false, 2, {{0, K::kString, 0}, {1, K::kString, 0}}},    // rename
    {0, 83, false, 1, {{0, K::kString, 0}}},                        // mkdir
    {0, 84, false, 1, {{0, K::kString, 0}}},                        // rmdir
    {0, 85, false, 1, {{0, K::kString, 0}}},                        // creat
    {0, 86, false, 2, {{0, K::kString, 0}, {1, K::kString, 0}}},    // link
    {0, 87, false, 1, {{0, K::kString, 0}}},                        // unlink
    {0, 88, false, 2, {{0, K::kString, 0}, {1, K::kString, 0}}},    // symlink
    {0, 89, false, 1, {{0, K::kString, 0}}},                        // readlink
    {0, 90, false, 1, {{0, K::kString, 0}}},                        // chmod
    {0, 92, false, 1, {{0, K::kString, 0}}},                        // chown
    {0, 161, false, 1, {{0, K::kString, 0}}},                       // chroot
    {0, 257, false, 1, {{1, K::kString, 0}}},                       // openat
    {0, 258, false, 1, {{1, K::kString, 0}}},                       // mkdirat
    {0, 262, false, 1, {{1, K::kString, 0}}},                       // newfstatat
    {0, 263, false, 1, {{1, K::kString, 0}}},                       // unlinkat
    {0, 264, false, 2, {{1, K::kString, 0}, {3, K::kString, 0}}},   // renameat
    {0, 267, false, 1, {{1, K::kString, 0}}},                       // readlinkat
    {0, 269, false, 1, {{1, K::kString, 0}}},                       // faccessat
    {0, 316, false, 2, {{1, K::kString, 0}, {3, K::kString, 0}}},   // renameat2
    {0, 322, false, 3, {{1, K::kString, 0}, {2, K::kArgv, 0}, {3, K::kArgv, kCountOnly}}},     // execveat
    {0, 332, false, 1, {{1, K::kString, 0}}},                       // statx
    {0, 439, false, 1, {{1, K::kString, 0}}},                       // faccessat2
    {0, 42, false, 1, {{1, K::kBuffer, 2}}},                     // connect: sockaddr, addrlen
    {0, 49, false, 1, {{1, K::kBuffer, 2}}},                     // bind: sockaddr, addrlen
    {0, 79, true, 1, {{0, K::kBuffer, -1}}},                     // getcwd: buf, ret bytes
    {0, 89, true, 1, {{1, K::kBuffer, -1}}},                     // readlink: buf, ret bytes (at exit)
    {0, 267, true, 1, {{2, K::kBuffer, -1}}},                    // readlinkat: buf, ret bytes (at exit)
    {0, 43, true, 1, {{1, K::kBuffer, kFixedLen, kSockaddrMax}}},   // accept: peer sockaddr (len at *arg2)
    {0, 288, true, 1, {{1, K::kBuffer, kFixedLen, kSockaddrMax}}},  // accept4: peer sockaddr
    {0, 51, true, 1, {{1, K::kBuffer, kFixedLen, kSockaddrMax}}},   // getsockname: own sockaddr
    {0, 52, true, 1, {{1, K::kBuffer, kFixedLen, kSockaddrMax}}},   // getpeername: peer sockaddr
    {0, 20, false, 1, {{1, K::kBuffer, kIovecLen}}},                 // writev: the iovecs' data, gathered
    {0, 16, false, 1, {{2, K::kBuffer, kFixedLen, 8}}},             // ioctl: 8 bytes at arg (TIOCSWINSZ's winsize; may be no pointer: a fault is flagged)
    {0, 22, true, 1, {{0, K::kBuffer, kFixedLen, 8}}},              // pipe: the two fds
    {0, 293, true, 1, {{0, K::kBuffer, kFixedLen, 8}}},             // pipe2: the two fds
    {0, 61, true, 1, {{1, K::kBuffer, kFixedLen, 4}}},              // wait4: the int status
    // i386 numbers (int $0x80, sysenter, compat syscall); pointers are 32-bit
    {1, 3, true, 1, {{1, K::kBuffer, -1}}},                      // read
    {1, 4, false, 1, {{1, K::kBuffer, 2}}},                      // write
    {1, 5, false, 1, {{0, K::kString, 0}}},                      // open
    {1, 8, false, 1, {{0, K::kString, 0}}},                      // creat
    {1, 9, false, 2, {{0, K::kString, 0}, {1, K::kString, 0}}},  // link
    {1, 10, false, 1, {{0, K::kString, 0}}},                     // unlink
    {1, 11, false, 3, {{0, K::kString, 0}, {1, K::kArgv, 0}, {2, K::kArgv, kCountOnly}}},   // execve
    {1, 12, false, 1, {{0, K::kString, 0}}},                     // chdir
    {1, 15, false, 1, {{0, K::kString, 0}}},                     // chmod
    {1, 33, false, 1, {{0, K::kString, 0}}},                     // access
    {1, 38, false, 2, {{0, K::kString, 0}, {1, K::kString, 0}}}, // rename
    {1, 39, false, 1, {{0, K::kString, 0}}},                     // mkdir
    {1, 40, false, 1, {{0, K::kString, 0}}},                     // rmdir
    {1, 83, false, 2, {{0, K::kString, 0}, {1, K::kString, 0}}}, // symlink
    {1, 85, false, 1, {{0, K::kString, 0}}},                     // readlink
    {1, 180, true, 1, {{1, K::kBuffer, -1}}},                    // pread64
    {1, 181, false, 1, {{1, K::kBuffer, 2}}},                    // pwrite64
    {1, 195, false, 1, {{0, K::kString, 0}}},                    // stat64
    {1, 196, false, 1, {{0, K::kString, 0}}},                    // lstat64
    {1, 295, false, 1, {{1, K::kString, 0}}},                    // openat
    {1, 296, false, 1, {{1, K::kString, 0}}},                    // mkdirat
    {1, 300, false, 1, {{1, K::kString, 0}}},                    // fstatat64
    {1, 301, false, 1, {{1, K::kString, 0}}},                    // unlinkat
    {1, 302, false, 2, {{1, K::kString, 0}, {3, K::kString, 0}}},// renameat
    {1, 305, false, 1, {{1, K::kString, 0}}},                    // readlinkat
    {1, 307, false, 1, {{1, K::kString, 0}}},                    // faccessat
    {1, 353, false, 2, {{1, K::kString, 0}, {3, K::kString, 0}}},// renameat2
    {1, 358, false, 3, {{1, K::kString, 0}, {2, K::kArgv, 0}, {3, K::kArgv, kCountOnly}}},  // execveat
    {1, 383, false, 1, {{1, K::kString, 0}}},                    // statx
    {1, 439, false, 1, {{1, K::kString, 0}}},                    // faccessat2
    {1, 7, true, 1, {{1, K::kBuffer, kFixedLen, 4}}},            // waitpid: the int status
    {1, 114, true, 1, {{1, K::kBuffer, kFixedLen, 4}}},          // wait4: the int status
    {1, 42, true, 1, {{0, K::kBuffer, kFixedLen, 8}}},           // pipe: the two fds
    {1, 331, true, 1, {{0, K::kBuffer, kFixedLen, 8}}},          // pipe2: the two fds
    {1, 54, false, 1, {{2, K::kBuffer, kFixedLen, 8}}},          // ioctl: 8 bytes at arg (TIOCSWINSZ)
    {1, 361, false, 1, {{1, K::kBuffer, 2}}},                    // bind: sockaddr, addrlen
    {1, 362, false, 1, {{1, K::kBuffer, 2}}},                    // connect: sockaddr, addrlen
    {1, 364, true, 1, {{1, K::kBuffer, kFixedLen, kSockaddrMax}}},   // accept4: peer sockaddr
    {1, 367, true, 1, {{1, K::kBuffer, kFixedLen, kSockaddrMax}}},   // getsockname
    {1, 368, true, 1, {{1, K::kBuffer, kFixedLen, kSockaddrMax}}},   // getpeername
    {1, 369, false, 1, {{1, K::kBuffer, 2}}},                    // sendto: buf, len
    {1, 371, true, 1, {{1, K::kBuffer, -1}}},                    // recvfrom: buf, ret bytes
};

constexpr const SyscallCaptures* find_captures(unsigned table, std::uint64_t nr, bool at_exit) {
  for (const auto& row : kCaptureTable)
    if (row.table == table && row.nr == nr && row.at_exit == at_exit) return &row;
  return nullptr;
}

}  // namespace hvtrace::monitor
