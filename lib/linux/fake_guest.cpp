// See fake_guest.hpp. Everything is written through FakeMem, so the bytes are exactly what the
// real readers parse; the BTF blob comes from libbpf's own writer.
#include "linux/fake_guest.hpp"

#include <bpf/btf.h>

#include <algorithm>

namespace hvtrace::fake {
namespace {

using L = FakeLayout;

Result<std::vector<std::byte>> make_btf() {
  btf* b = btf__new_empty();
  if (b == nullptr) return make_error("btf__new_empty failed");
  const int i32 = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  const int u32 = btf__add_int(b, "unsigned int", 4, 0);
  const int u64 = btf__add_int(b, "long long unsigned int", 8, 0);
  const int chr = btf__add_int(b, "char", 1, BTF_INT_CHAR);
  const int vptr = btf__add_ptr(b, 0);
  const int comm = btf__add_array(b, i32, chr, 16);
  const int list = btf__add_struct(b, "list_head", 16);
  btf__add_field(b, "next", vptr, 0, 0);
  btf__add_field(b, "prev", vptr, 64, 0);
  const int kuid = btf__add_struct(b, nullptr, 4);
  btf__add_field(b, "val", u32, 0, 0);
  const int kuid_t = btf__add_typedef(b, "kuid_t", kuid);
  const int cred = btf__add_struct(b, "cred", L::kCredSize);
  btf__add_field(b, "usage", i32, 0, 0);
  btf__add_field(b, "uid", kuid_t, L::kCredUid * 8, 0);
  btf__add_field(b, "gid", kuid_t, L::kCredGid * 8, 0);
  btf__add_field(b, "euid", kuid_t, L::kCredEuid * 8, 0);
  (void)cred;
  // mm_struct wraps its fields in an unnamed struct, as the real one does.
  const int mm_inner = btf__add_struct(b, nullptr, 0x200);
  btf__add_field(b, "mmap_base", u64, 0, 0);
  btf__add_field(b, "pgd", vptr, L::kMmPgd * 8, 0);
  btf__add_field(b, "arg_start", u64, L::kMmArgStart * 8, 0);
  btf__add_field(b, "arg_end", u64, L::kMmArgEnd * 8, 0);
  btf__add_struct(b, "mm_struct", L::kMmSize);
  btf__add_field(b, nullptr, mm_inner, 0, 0);
  // pid and tgid sit in an unnamed struct here, to exercise the recursive member search.
  const int ids = btf__add_struct(b, nullptr, 8);
  btf__add_field(b, "pid", i32, 0, 0);
  btf__add_field(b, "tgid", i32, 32, 0);
  btf__add_struct(b, "task_struct", L::kTaskSize);
  btf__add_field(b, "__state", u32, L::kState * 8, 0);
  btf__add_field(b, "flags", u32, L::kFlags * 8, 0);
  btf__add_field(b, "tasks", list, L::kTasks * 8, 0);
  btf__add_field(b, "mm", vptr, L::kMm * 8, 0);
  btf__add_field(b, "active_mm", vptr, L::kActiveMm * 8, 0);
  btf__add_field(b, "exit_state", i32, L::kExitState * 8, 0);
  btf__add_field(b, nullptr, ids, L::kPid * 8, 0);
  btf__add_field(b, "real_parent", vptr, L::kRealParent * 8, 0);
  btf__add_field(b, "parent", vptr, L::kParent * 8, 0);
  btf__add_field(b, "group_leader", vptr, L::kGroupLeader * 8, 0);
  btf__add_field(b, "start_time", u64, L::kStartTime * 8, 0);
  btf__add_field(b, "start_boottime", u64, L::kStartBoottime * 8, 0);
  btf__add_field(b, "real_cred", vptr, L::kRealCred * 8, 0);
  btf__add_field(b, "cred", vptr, L::kCred * 8, 0);
  btf__add_field(b, "comm", comm, L::kComm * 8, 0);
  btf__add_field(b, "files", vptr, L::kFiles * 8, 0);
  // Open files, with the socket's addresses inside unnamed unions and structs as in sock_common.
  const int u16 = btf__add_int(b, "short unsigned int", 2, 0);
  const int u8 = btf__add_int(b, "unsigned char", 1, 0);
  const int i16 = btf__add_int(b, "short int", 2, BTF_INT_SIGNED);
  btf__add_struct(b, "files_struct", 0x100);
  btf__add_field(b, "count", i32, 0, 0);
  btf__add_field(b, "fdt", vptr, L::kFilesFdt * 8, 0);
  btf__add_struct(b, "fdtable", 0x40);
  btf__add_field(b, "max_fds", u32, L::kFdtMaxFds * 8, 0);
  btf__add_field(b, "fd", vptr, L::kFdtFd * 8, 0);
  btf__add_struct(b, "file", 0x100);
  btf__add_field(b, "f_mode", u32, L::kFileMode * 8, 0);
  btf__add_field(b, "f_inode", vptr, L::kFileInode * 8, 0);
  btf__add_field(b, "private_data", vptr, L::kFilePrivate * 8, 0);
  btf__add_struct(b, "inode", 0x260);
  btf__add_field(b, "i_mode", u16, L::kInodeMode * 8, 0);
  btf__add_field(b, "i_ino", u64, L::kInodeIno * 8, 0);
  btf__add_field(b, "i_rdev", u32, L::kInodeRdev * 8, 0);
  btf__add_struct(b, "socket", 0x80);
  btf__add_field(b, "state", i32, 0, 0);
  btf__add_field(b, "type", i16, L::kSocketType * 8, 0);
  btf__add_field(b, "sk", vptr, L::kSocketSk * 8, 0);
  const int addrs = btf__add_struct(b, nullptr, 8);
  btf__add_field(b, "skc_daddr", u32, 0, 0);
  btf__add_field(b, "skc_rcv_saddr", u32, 32, 0);
  const int addr_u = btf__add_union(b, nullptr, 8);
  btf__add_field(b, "skc_addrpair", u64, 0, 0);
  btf__add_field(b, nullptr, addrs, 0, 0);
  const int ports = btf__add_struct(b, nullptr, 4);
  btf__add_field(b, "skc_dport", u16, 0, 0);
  btf__add_field(b, "skc_num", u16, 16, 0);
  const int port_u = btf__add_union(b, nullptr, 4);
  btf__add_field(b, "skc_portpair", u32, 0, 0);
  btf__add_field(b, nullptr, ports, 0, 0);
  const int in6 = btf__add_array(b, i32, u8, 16);
  const int common = btf__add_struct(b, "sock_common", 0x88);
  btf__add_field(b, nullptr, addr_u, L::kSkcDaddr * 8, 0);
  btf__add_field(b, "skc_hash", u32, 0x8 * 8, 0);
  btf__add_field(b, nullptr, port_u, L::kSkcDport * 8, 0);
  btf__add_field(b, "skc_family", u16, L::kSkcFamily * 8, 0);
  btf__add_field(b, "skc_state", u8, L::kSkcState * 8, 0);
  btf__add_field(b, "skc_v6_daddr", in6, L::kSkcV6Daddr * 8, 0);
  btf__add_field(b, "skc_v6_rcv_saddr", in6, L::kSkcV6RcvSaddr * 8, 0);
  btf__add_struct(b, "sock", 0x400);
  const int last = btf__add_field(b, "__sk_common", common, 0, 0);
  if (last < 0) {
    btf__free(b);
    return make_error("building the fake BTF failed ({})", last);
  }
  std::uint32_t size = 0;
  const auto* raw = static_cast<const std::byte*>(btf__raw_data(b, &size));
  std::vector<std::byte> out(raw, raw + size);
  btf__free(b);
  return out;
}

}  // namespace

Result<GPA> FakeGuest::alloc(std::uint64_t bytes) {
  const std::uint64_t at = next_free_;
  next_free_ += (bytes + mem::kPageSize - 1) & ~(mem::kPageSize - 1);
  if (next_free_ > o_.ram) return make_error("fake guest out of RAM");
  HVTRACE_TRY(mem_->write_u64(GPA{at}, 0));
  return GPA{at};
}

Result<std::unique_ptr<FakeGuest>> FakeGuest::build(const FakeGuestOptions& o) {
  std::unique_ptr<FakeGuest> g(new FakeGuest());
  g->o_ = o;
  g->mem_ = std::make_unique<mem::FakeMem>(o.ram);
  mem::FakeMem& m = *g->mem_;
  const std::uint64_t tva = o.text_va, tpa = o.text_pa;
  auto img = [&](std::uint64_t off) { return GPA{tpa + off}; };

  // Kernel page tables: the image with 2 MiB pages, the direct map with 1 GiB pages.
  g->kernel_pt_ = std::make_unique<arch::PageTableBuilder>(m, o.paging, img(kInitTopPgtOff), kPtPoolPages);
  for (std::uint64_t off = 0; off < kImageSize; off += 1ULL << 21)
    HVTRACE_TRY(g->kernel_pt_->map(GVA{tva + off}, GPA{tpa + off}, 1ULL << 21));
  for (std::uint64_t pa = 0; pa < o.ram; pa += 1ULL << 30)
    HVTRACE_TRY(g->kernel_pt_->map(GVA{o.page_offset_base + pa}, GPA{pa}, 1ULL << 30));

  HVTRACE_TRY(m.write_u64(img(kPageOffsetBaseOff), o.page_offset_base));
  std::string banner = o.banner + "\n";
  HVTRACE_TRY(m.write(img(kBannerOff), std::as_bytes(std::span(banner.c_str(), banner.size() + 1))));

  std::uint64_t btf_size = 0;
  if (o.with_btf) {
    auto btf = make_btf();
    if (!btf) return std::move(btf).error();
    HVTRACE_TRY(m.write(img(kBtfOff), *btf));
    btf_size = btf->size();
  }

  // Symbols, sorted by address as kallsyms is. Two passes: the token table's own symbol needs its
  // position, which does not depend on the addresses.
  auto make_syms = [&](std::uint64_t rb_at, std::uint64_t tt_at) {
    std::vector<kernel::Symbol> s = {
        {"_text", 'T', GVA{tva}},
        {"_end", 'B', GVA{tva + kImageSize}},
        {"init_top_pgt", 'D', GVA{tva + kInitTopPgtOff}},
        {"page_offset_base", 'D', GVA{tva + kPageOffsetBaseOff}},
        {"linux_banner", 'R', GVA{tva + kBannerOff}},
        {"__per_cpu_offset", 'D', GVA{tva + kPerCpuOffsetOff}},
        {"init_task", 'D', GVA{tva + kInitTaskOff}},
        {"current_task", 'D', GVA{L::kCurrentTask}},
        {"fixed_percpu_data", 'D', GVA{0}},
        {"kallsyms_relative_base", 'R', GVA{tva + rb_at}},
        {"kallsyms_token_table", 'R', GVA{tva + tt_at}},
        {"entry_SYSCALL_64", 'T', GVA{tva + 0xa00000 - 0x400000}},
    };
    if (o.with_btf) {
      s.push_back({"__start_BTF", 'R', GVA{tva + kBtfOff}});
      s.push_back({"__stop_BTF", 'R', GVA{tva + kBtfOff + btf_size}});
    }
    for (std::size_t i = 0; i < o.filler_symbols; ++i)
      s.push_back({fmt::format("{}do_fake_thing_{}", i % 3 == 0 ? "__" : "", i), i % 2 != 0 ? 't' : 'T',
                   GVA{tva + 0x1000 + 0x40 * i}});
    s.push_back({std::string(140, 'x') + "_long_symbol", 'T', GVA{tva + 0x80000}});
    std::stable_sort(s.begin(), s.end(), [](const auto& a, const auto& b) { return a.addr < b.addr; });
    return s;
  };
  auto first = kernel::write_kallsyms_for_test(m, img(kKallsymsOff), make_syms(0, 0), tva, o.with_seqs);
  if (!first) return std::move(first).error();
  g->symbols_ = make_syms(first->relative_base_at.value - tpa, first->token_table.value - tpa);
  auto second = kernel::write_kallsyms_for_test(m, img(kKallsymsOff), g->symbols_, tva, o.with_seqs);
  if (!second) return std::move(second).error();

  // init_task: pid 0, swapper, a kernel thread whose list points at itself.
  g->init_task_ = GVA{tva + kInitTaskOff};
  const GPA it = img(kInitTaskOff);
  const GVA head{g->init_task_.value + L::kTasks};
  auto cred = g->alloc(L::kCredSize);
  if (!cred) return std::move(cred).error();
  HVTRACE_TRY(m.write_u64(GPA{it.value + L::kTasks}, head.value));
  HVTRACE_TRY(m.write_u64(GPA{it.value + L::kTasks + 8}, head.value));
  HVTRACE_TRY(m.write_as<std::uint32_t>(GPA{it.value + L::kFlags}, 0x00200000));
  HVTRACE_TRY(m.write_u64(GPA{it.value + L::kRealParent}, g->init_task_.value));
  HVTRACE_TRY(m.write_u64(GPA{it.value + L::kRealCred}, g->va_of(*cred).value));
  const char swapper[16] = "swapper/0";
  HVTRACE_TRY(m.write(GPA{it.value + L::kComm}, std::as_bytes(std::span(swapper))));
  g->last_task_ = g->init_task_.value;
  return g;
}

Result<GVA> FakeGuest::add_task(const FakeTask& t) {
  mem::FakeMem& m = *mem_;
  auto task_pa = alloc(L::kTaskSize);
  auto cred_pa = alloc(L::kCredSize);
  if (!task_pa || !cred_pa) return make_error("fake guest out of RAM");
  const GVA task = va_of(*task_pa);
  auto w32 = [&](std::uint64_t off, std::uint32_t v) { return m.write_as<std::uint32_t>(GPA{task_pa->value + off}, v); };
  auto w64 = [&](std::uint64_t off, std::uint64_t v) { return m.write_u64(GPA{task_pa->value + off}, v); };
  HVTRACE_TRY(w32(L::kPid, static_cast<std::uint32_t>(t.pid)));
  HVTRACE_TRY(w32(L::kTgid, static_cast<std::uint32_t>(t.tgid != 0 ? t.tgid : t.pid)));
  HVTRACE_TRY(w32(L::kState, t.state));
  HVTRACE_TRY(w32(L::kFlags, t.kernel_thread ? 0x00200000U : 0x00400100U));
  HVTRACE_TRY(w64(L::kStartTime, t.start_time));
  HVTRACE_TRY(w64(L::kRealParent, (t.parent.value != 0 ? t.parent : init_task_).value));
  HVTRACE_TRY(w64(L::kRealCred, va_of(*cred_pa).value));
  HVTRACE_TRY(w64(L::kCred, va_of(*cred_pa).value));
  HVTRACE_TRY(m.write_as<std::uint32_t>(GPA{cred_pa->value + L::kCredUid}, t.uid));
  HVTRACE_TRY(m.write_as<std::uint32_t>(GPA{cred_pa->value + L::kCredGid}, t.uid));
  HVTRACE_TRY(m.write_as<std::uint32_t>(GPA{cred_pa->value + L::kCredEuid}, t.uid));
  char comm[16] = {};
  std::copy_n(t.comm.begin(), std::min<std::size_t>(t.comm.size(), 15), comm);
  HVTRACE_TRY(m.write(GPA{task_pa->value + L::kComm}, std::as_bytes(std::span(comm))));
  if (!t.kernel_thread) {
    auto mm = alloc(L::kMmSize);
    next_free_ = (next_free_ + 0x1fff) & ~0x1fffULL;  // PTI kernels allocate an 8 KiB-aligned pgd pair
    constexpr std::uint64_t kUserTablePages = 16;    // the pgd pair plus the tables below it
    auto pgd = alloc(kUserTablePages * mem::kPageSize);
    auto args_page = alloc(mem::kPageSize);
    if (!mm || !pgd || !args_page) return make_error("fake guest out of RAM");
    HVTRACE_TRY(m.write_u64(GPA{mm->value + L::kMmPgd}, va_of(*pgd).value));
    // argv in the task's own address space, as the kernel's mm->arg_start..arg_end describe it.
    arch::PageTableBuilder user_pt(m, o_.paging, *pgd, kUserTablePages);
    HVTRACE_TRY(user_pt.map(GVA{L::kArgvVa}, *args_page, mem::kPageSize, arch::kPteUser | arch::kPteWrite | arch::kPteNx));
    // The kernel half is shared with init_top_pgt, as pgd_ctor copies it into every new pgd.
    for (unsigned i = 256; i < 512; ++i) {
      auto e = m.read_u64(GPA{kernel_dtb().value + 8ULL * i});
      if (!e) return std::move(e).error();
      HVTRACE_TRY(m.write_u64(GPA{pgd->value + 8ULL * i}, *e));
    }
    std::string args;
    for (const auto& a : t.argv.empty() ? std::vector<std::string>{t.comm} : t.argv) args += a + '\0';
    args.resize(std::min<std::size_t>(args.size(), mem::kPageSize));
    HVTRACE_TRY(m.write(*args_page, std::as_bytes(std::span(args.data(), args.size()))));
    HVTRACE_TRY(m.write_u64(GPA{mm->value + L::kMmArgStart}, L::kArgvVa));
    HVTRACE_TRY(m.write_u64(GPA{mm->value + L::kMmArgEnd}, L::kArgvVa + args.size()));
    HVTRACE_TRY(w64(L::kMm, va_of(*mm).value));
    HVTRACE_TRY(w64(L::kActiveMm, va_of(*mm).value));
  }
  // list_add_tail(&task->tasks, &init_task.tasks)
  const GVA head{init_task_.value + L::kTasks};
  const GVA node{task.value + L::kTasks};
  const GVA tail{last_task_ + L::kTasks};
  auto phys = [&](GVA va) {
    return va.value >= o_.text_va ? GPA{o_.text_pa + (va.value - o_.text_va)} : pa_of(va);
  };
  HVTRACE_TRY(m.write_u64(phys(node), head.value));
  HVTRACE_TRY(m.write_u64(GPA{phys(node).value + 8}, tail.value));
  HVTRACE_TRY(m.write_u64(phys(tail), node.value));
  HVTRACE_TRY(m.write_u64(GPA{phys(head).value + 8}, node.value));
  last_task_ = task.value;
  return task;
}

std::optional<Dtb> FakeGuest::dtb_of_task(GVA task) const {
  auto mm = mem_->read_u64(pa_of(GVA{task.value + L::kMm}));
  if (!mm || *mm == 0) return std::nullopt;
  auto pgd = mem_->read_u64(pa_of(GVA{*mm + L::kMmPgd}));
  if (!pgd) return std::nullopt;
  return Dtb{pa_of(GVA{*pgd}).value};
}

Result<FakeFdTable> FakeGuest::set_files(GVA task, const std::vector<FakeFile>& files, std::uint32_t max_fds) {
  mem::FakeMem& m = *mem_;
  FakeFdTable t;
  auto files_pa = alloc(0x100);
  auto fdt_pa = alloc(0x40);
  auto array_pa = alloc(std::max<std::uint64_t>(8ULL * max_fds, 8));
  if (!files_pa || !fdt_pa || !array_pa) return make_error("fake guest out of RAM");
  t.files_struct = va_of(*files_pa);
  t.fdtable = va_of(*fdt_pa);
  t.fd_array = va_of(*array_pa);
  HVTRACE_TRY(m.write_u64(pa_of(GVA{task.value + L::kFiles}), t.files_struct.value));
  HVTRACE_TRY(m.write_u64(GPA{files_pa->value + L::kFilesFdt}, t.fdtable.value));
  HVTRACE_TRY(m.write_as<std::uint32_t>(GPA{fdt_pa->value + L::kFdtMaxFds}, max_fds));
  HVTRACE_TRY(m.write_u64(GPA{fdt_pa->value + L::kFdtFd}, t.fd_array.value));
  for (const FakeFile& f : files) {
    if (f.fd < 0 || static_cast<std::uint32_t>(f.fd) >= max_fds) return make_error("fake fd {} outside max_fds {}", f.fd, max_fds);
    auto file_pa = alloc(0x100);
    if (!file_pa) return std::move(file_pa).error();
    GVA inode = f.inode;
    if (inode.value == 0) {
      auto inode_pa = alloc(0x260);
      if (!inode_pa) return std::move(inode_pa).error();
      inode = va_of(*inode_pa);
      HVTRACE_TRY(m.write_as<std::uint16_t>(GPA{inode_pa->value + L::kInodeMode}, static_cast<std::uint16_t>(f.mode)));
      HVTRACE_TRY(m.write_u64(GPA{inode_pa->value + L::kInodeIno}, f.ino));
      HVTRACE_TRY(m.write_as<std::uint32_t>(GPA{inode_pa->value + L::kInodeRdev}, (f.major << 20) | f.minor));
    }
    HVTRACE_TRY(m.write_as<std::uint32_t>(GPA{file_pa->value + L::kFileMode}, f.f_mode));
    HVTRACE_TRY(m.write_u64(GPA{file_pa->value + L::kFileInode}, inode.value));
    if ((f.mode & 0170000) == 0140000) {
      auto sock_pa = alloc(0x80);
      auto sk_pa = alloc(0x400);
      if (!sock_pa || !sk_pa) return make_error("fake guest out of RAM");
      HVTRACE_TRY(m.write_u64(GPA{file_pa->value + L::kFilePrivate}, va_of(*sock_pa).value));
      HVTRACE_TRY(m.write_as<std::uint16_t>(GPA{sock_pa->value + L::kSocketType}, f.type));
      HVTRACE_TRY(m.write_u64(GPA{sock_pa->value + L::kSocketSk}, va_of(*sk_pa).value));
      const std::uint64_t c = sk_pa->value;
      HVTRACE_TRY(m.write_as<std::uint16_t>(GPA{c + L::kSkcFamily}, f.family));
      HVTRACE_TRY(m.write_as<std::uint8_t>(GPA{c + L::kSkcState}, f.state));
      const auto be16 = [](std::uint16_t v) { return static_cast<std::uint16_t>((v >> 8) | (v << 8)); };
      HVTRACE_TRY(m.write_as<std::uint16_t>(GPA{c + L::kSkcDport}, be16(f.peer_port)));
      HVTRACE_TRY(m.write_as<std::uint16_t>(GPA{c + L::kSkcNum}, f.local_port));
      HVTRACE_TRY(m.write(GPA{c + L::kSkcDaddr}, std::as_bytes(std::span(f.peer_ip.data(), 4))));
      HVTRACE_TRY(m.write(GPA{c + L::kSkcRcvSaddr}, std::as_bytes(std::span(f.local_ip.data(), 4))));
      HVTRACE_TRY(m.write(GPA{c + L::kSkcV6Daddr}, std::as_bytes(std::span(f.peer_ip))));
      HVTRACE_TRY(m.write(GPA{c + L::kSkcV6RcvSaddr}, std::as_bytes(std::span(f.local_ip))));
    }
    HVTRACE_TRY(m.write_u64(GPA{array_pa->value + 8ULL * static_cast<std::uint32_t>(f.fd)}, va_of(*file_pa).value));
    t.files.push_back(va_of(*file_pa));
    t.inodes.push_back(inode);
  }
  return t;
}

Result<GVA> FakeGuest::set_current(unsigned cpu, GVA task) {
  auto area = alloc(L::kCurrentTask + 8);
  if (!area) return std::move(area).error();
  const GVA base = va_of(*area);
  HVTRACE_TRY(mem_->write_u64(GPA{o_.text_pa + kPerCpuOffsetOff + 8ULL * cpu}, base.value));
  HVTRACE_TRY(mem_->write_u64(GPA{area->value + L::kCurrentTask}, task.value));
  return base;
}

}  // namespace hvtrace::fake
