// A synthetic Linux guest in FakeMem, for unit tests, fuzz seeds and benchmarks: a kernel image
// at chosen KASLR slides with real-format kallsyms tables, a BTF blob made with libbpf, kernel
// page tables (4- or 5-level) that map the image and the direct map, and a task list that tests
// grow and corrupt. Everything discovery and the Linux model read is here, nothing else.
#pragma once

#include "arch/page_table_builder.hpp"
#include "common/types.hpp"
#include "kernel/kallsyms.hpp"
#include "mem/phys_mem.hpp"

#include <array>
#include <memory>
#include <string>
#include <vector>

namespace hvtrace::fake {

struct FakeGuestOptions {
  arch::PagingMode paging = arch::PagingMode::k4Level;
  std::uint64_t ram = 256ULL << 20;
  std::uint64_t text_pa = 0x3a00000;                 // 2 MiB aligned
  std::uint64_t text_va = 0xffffffff9e200000ULL;     // 2 MiB aligned
  std::uint64_t page_offset_base = 0xffff9d4c40000000ULL;  // 1 GiB aligned
  bool with_seqs = true;       // kallsyms_seqs_of_names, as Debian's 6.1.192 has
  bool with_btf = true;
  std::string banner = "Linux version 6.1.0-fake-amd64 (hvtrace@tests) #1 SMP PREEMPT_DYNAMIC";
  std::size_t filler_symbols = 600;  // more than 256, so markers matter
};

// Offsets the fake task_struct uses (the BTF says the same).
struct FakeLayout {
  static constexpr std::uint64_t kTaskSize = 0x1000, kState = 0x18, kFlags = 0x2c, kTasks = 0x400, kMm = 0x450,
                                 kActiveMm = 0x458, kExitState = 0x460, kPid = 0x500, kTgid = 0x504,
                                 kRealParent = 0x510, kParent = 0x518, kGroupLeader = 0x520, kStartTime = 0x5a0,
                                 kStartBoottime = 0x5a8, kRealCred = 0x700, kCred = 0x708, kComm = 0x718;
  static constexpr std::uint64_t kMmArgStart = 0x138, kMmArgEnd = 0x140, kArgvVa = 0x7ffd12340000ULL;
  static constexpr std::uint64_t kMmSize = 0x400, kMmPgd = 0x48, kCredSize = 0xa0, kCredUid = 4, kCredGid = 8,
                                 kCredEuid = 0x14;
  static constexpr std::uint64_t kCurrentTask = 0x1fbc0;  // per-CPU offset of current_task
  // Open files: task_struct.files -> files_struct.fdt -> fdtable -> file -> inode / socket -> sock.
  static constexpr std::uint64_t kFiles = 0x780, kFilesFdt = 0x20, kFdtMaxFds = 0, kFdtFd = 8, kFileMode = 0x14,
                                 kFileInode = 0x20, kFilePrivate = 0xc8, kInodeMode = 0, kInodeIno = 0x40,
                                 kInodeRdev = 0x4c, kSocketType = 4, kSocketSk = 0x18, kSkcDaddr = 0,
                                 kSkcRcvSaddr = 4, kSkcDport = 0xc, kSkcNum = 0xe, kSkcFamily = 0x10,
                                 kSkcState = 0x12, kSkcV6Daddr = 0x38, kSkcV6RcvSaddr = 0x48;
};

// One open file of a fake task (set_files). Addresses in network byte order as the kernel keeps
// them; IPv4 in the first 4 bytes of the address arrays.
struct FakeFile {
  int fd = 0;
  std::uint32_t mode = 0100644;            // inode.i_mode (S_IFCHR, S_IFSOCK, S_IFIFO, ... | perms)
  std::uint32_t major = 0, minor = 0;      // inode.i_rdev
  std::uint32_t f_mode = 3;                // FMODE_READ | FMODE_WRITE
  std::uint64_t ino = 0;
  GVA inode{};                             // non-zero: share this inode (a pipe's other end)
  std::uint16_t family = 0, type = 1;      // sockets: AF_*, SOCK_*
  std::uint8_t state = 0;
  std::array<std::uint8_t, 16> local_ip{}, peer_ip{};
  std::uint16_t local_port = 0, peer_port = 0;   // host order (the fake stores dport big-endian)
};

struct FakeFdTable {
  GVA files_struct, fdtable, fd_array;
  std::vector<GVA> files, inodes;          // in the order given
};

struct FakeTask {
  int pid = 1, tgid = 0;  // tgid 0: same as pid
  std::string comm = "init";
  std::uint32_t uid = 0;
  bool kernel_thread = false;
  std::uint32_t state = 1;  // TASK_INTERRUPTIBLE
  std::uint64_t start_time = 0;
  GVA parent;               // 0: init_task
  std::vector<std::string> argv = {};  // user tasks: mapped at kArgvVa; empty: {comm}
};

class FakeGuest {
 public:
  [[nodiscard]] static Result<std::unique_ptr<FakeGuest>> build(const FakeGuestOptions& o = {});
  [[nodiscard]] mem::FakeMem& mem() { return *mem_; }
  [[nodiscard]] const FakeGuestOptions& options() const { return o_; }
  [[nodiscard]] const std::vector<kernel::Symbol>& symbols() const { return symbols_; }
  [[nodiscard]] GVA init_task() const { return init_task_; }
  [[nodiscard]] Dtb kernel_dtb() const { return Dtb{o_.text_pa + kInitTopPgtOff}; }
  // Appends a task to the task list; user tasks get their own page-table root. Returns the task.
  Result<GVA> add_task(const FakeTask& t);
  [[nodiscard]] std::optional<Dtb> dtb_of_task(GVA task) const;
  // Direct-map address of a physical address, and back.
  [[nodiscard]] GVA va_of(GPA pa) const { return GVA{o_.page_offset_base + pa.value}; }
  [[nodiscard]] GPA pa_of(GVA va) const { return GPA{va.value - o_.page_offset_base}; }
  // Give `task` an fd table of max_fds slots holding `files` (fds must be < max_fds).
  Result<FakeFdTable> set_files(GVA task, const std::vector<FakeFile>& files, std::uint32_t max_fds = 64);
  // Make cpu's per-CPU area say `task` is current; returns the cpu's kernel GS base.
  Result<GVA> set_current(unsigned cpu, GVA task);

  // Layout of the image (offsets from _text).
  static constexpr std::uint64_t kKallsymsOff = 0x100000, kBtfOff = 0x400000, kBannerOff = 0x500000,
                                 kPageOffsetBaseOff = 0x501000, kPerCpuOffsetOff = 0x502000,
                                 kInitTaskOff = 0x510000, kInitTopPgtOff = 0x600000, kImageSize = 0x800000;
  static constexpr std::uint64_t kPtPoolPages = 256;

 private:
  FakeGuest() = default;
  Result<GPA> alloc(std::uint64_t bytes);
  FakeGuestOptions o_;
  std::unique_ptr<mem::FakeMem> mem_;
  std::unique_ptr<arch::PageTableBuilder> kernel_pt_;
  std::vector<kernel::Symbol> symbols_;
  GVA init_task_;
  std::uint64_t next_free_ = 0x8000000;  // bump allocator for tasks, mms, creds, page tables (128 MiB up)
  std::uint64_t last_task_ = 0;
};

}  // namespace hvtrace::fake
