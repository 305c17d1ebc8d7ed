// The guest's syscall table read from memory: struct syscall_metadata records found by their
// kallsyms names, sys_call_table resolved through the symbol index, i386 entry points by name,
// the layout from BTF (in the profile or in guest memory) or the 6.1 fallback, hostile records
// skipped with a reason, and the profile cache. The fake is focused: a kernel image with real
// kallsyms tables, records and strings at known places, and no page tables beyond what Kernel
// reads linearly (the image and the direct map).
#include "kernel/kernel.hpp"
#include "kernel/symbol_index.hpp"
#include "kernel/syscall_meta.hpp"

#include <bpf/btf.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace hvtrace;
using namespace hvtrace::kernel;

namespace {

constexpr std::uint64_t kTextVa = 0xffffffff9a000000ULL, kTextPa = 0x1000000, kImage = 0x800000;
constexpr std::uint64_t kPageOffsetBase = 0xffff888000000000ULL;
constexpr std::uint64_t kFuncOff = 0x10000, kKallsymsOff = 0x100000, kMetaOff = 0x200000, kTableOff = 0x280000,
                        kStringsOff = 0x300000, kBtfOff = 0x400000;
constexpr std::size_t kTableEntries = 451;  // 6.1's __NR_syscalls

// Where the five members sit: the 6.1 layout, or a shuffled one only BTF can describe.
struct RecordLayout {
  std::uint64_t name, nr, nb_args, types, args, size;
};
constexpr RecordLayout k61{0, 8, 12, 16, 24, 64};
constexpr RecordLayout kShuffled{40, 0, 4, 8, 24, 72};

std::vector<std::byte> btf_for(const RecordLayout& l) {
  btf* b = btf__new_empty();
  const int i32 = btf__add_int(b, "int", 4, BTF_INT_SIGNED);
  const int chr = btf__add_int(b, "char", 1, BTF_INT_CHAR);
  const int cchr = btf__add_const(b, chr);
  const int str = btf__add_ptr(b, cchr);
  const int strs = btf__add_ptr(b, str);
  btf__add_struct(b, "syscall_metadata", static_cast<std::uint32_t>(l.size));
  btf__add_field(b, "name", str, static_cast<std::uint32_t>(l.name * 8), 0);
  btf__add_field(b, "syscall_nr", i32, static_cast<std::uint32_t>(l.nr * 8), 0);
  btf__add_field(b, "nb_args", i32, static_cast<std::uint32_t>(l.nb_args * 8), 0);
  btf__add_field(b, "types", strs, static_cast<std::uint32_t>(l.types * 8), 0);
  btf__add_field(b, "args", strs, static_cast<std::uint32_t>(l.args * 8), 0);
  std::uint32_t size = 0;
  const auto* raw = static_cast<const std::byte*>(btf__raw_data(b, &size));
  std::vector<std::byte> out(raw, raw + size);
  btf__free(b);
  return out;
}

struct Record {
  std::string symbol;                // after __syscall_meta__
  std::string name;                  // as stored ("sys_openat")
  std::int32_t nr = -1;
  std::vector<std::string> types, args;
};

// A kernel image with syscall records, a sys_call_table and kallsyms describing both.
class SyscallGuest {
 public:
  RecordLayout layout = k61;
  bool btf_in_memory = false;
  std::vector<Record> records;
  std::vector<std::string> functions = {"__x64_sys_read", "__x64_sys_write", "__x64_sys_openat",
                                        "__x64_sys_ni_syscall", "__ia32_sys_read", "__ia32_compat_sys_openat",
                                        "__ia32_sys_write"};
  std::map<std::size_t, std::string> table = {{0, "__x64_sys_read"}, {1, "__x64_sys_write"}, {257, "__x64_sys_openat"}};
  std::size_t table_entries = kTableEntries;
  bool table_symbol = true;
  bool end_marker = true;  // a symbol right after the table, as kallsyms has

  mem::FakeMem mem{64ULL << 20};

  GVA va(std::uint64_t off) const { return GVA{kTextVa + off}; }
  GPA pa(std::uint64_t off) const { return GPA{kTextPa + off}; }
  GVA function(const std::string& n) const {
    auto it = std::find(functions.begin(), functions.end(), n);
    return va(kFuncOff + 0x40 * static_cast<std::uint64_t>(it - functions.begin()));
  }
  GVA record_va(std::size_t i) const { return va(kMetaOff + 0x80 * i); }

  // Strings live in the image; returns their address.
  GVA put_string(std::string_view s) {
    const GVA at = va(kStringsOff + strings_);
    std::string z(s);
    z += '\0';
    EXPECT_TRUE(mem.write(pa(kStringsOff + strings_), std::as_bytes(std::span(z.data(), z.size()))));
    strings_ += (z.size() + 7) & ~std::uint64_t{7};
    return at;
  }
  GVA put_pointers(const std::vector<std::string>& ss) {
    std::vector<std::uint64_t> ptrs;
    for (const auto& s : ss) ptrs.push_back(put_string(s).value);
    const GVA at = va(kStringsOff + strings_);
    EXPECT_TRUE(mem.write(pa(kStringsOff + strings_), std::as_bytes(std::span(ptrs))));
    strings_ += 8 * ptrs.size() + 8;
    return at;
  }
  void write_u64_at(GVA at, std::uint64_t v) { ASSERT_TRUE(mem.write_u64(GPA{at.value - kTextVa + kTextPa}, v)); }
  void write_i32_at(GVA at, std::int32_t v) { ASSERT_TRUE(mem.write_as(GPA{at.value - kTextVa + kTextPa}, v)); }

  std::unique_ptr<Kernel> build() {
    Profile p;
    std::vector<Symbol> syms = {{"_text", 'T', va(0)}, {"_end", 'B', va(kImage)}};
    for (const auto& f : functions) syms.push_back({f, 'T', function(f)});
    for (std::size_t i = 0; i < records.size(); ++i) {
      const Record& r = records[i];
      const GVA at = record_va(i);
      syms.push_back({"__syscall_meta__" + r.symbol, 'd', at});
      write_u64_at(GVA{at.value + layout.name}, put_string(r.name).value);
      write_i32_at(GVA{at.value + layout.nr}, r.nr);
      write_i32_at(GVA{at.value + layout.nb_args}, static_cast<std::int32_t>(r.types.size()));
      write_u64_at(GVA{at.value + layout.types}, r.types.empty() ? 0 : put_pointers(r.types).value);
      write_u64_at(GVA{at.value + layout.args}, r.args.empty() ? 0 : put_pointers(r.args).value);
    }
    if (table_symbol) syms.push_back({"sys_call_table", 'D', va(kTableOff)});
    // Zero padding up to the next symbol, as the real kernel has (its table ends at 451 of 456).
    if (end_marker) syms.push_back({"x32_sys_call_table", 'D', va(kTableOff + 8 * table_entries + 40)});
    for (std::size_t nr = 0; nr < table_entries; ++nr) {
      auto it = table.find(nr);
      write_u64_at(va(kTableOff + 8 * nr), function(it != table.end() ? it->second : "__x64_sys_ni_syscall").value);
    }
    if (btf_in_memory) {
      auto blob = btf_for(layout);
      EXPECT_TRUE(mem.write(pa(kBtfOff), blob));
      syms.push_back({"__start_BTF", 'R', va(kBtfOff)});
      syms.push_back({"__stop_BTF", 'R', va(kBtfOff + blob.size())});
      p.symbols["__start_BTF"] = {kBtfOff, false};
      p.symbols["__stop_BTF"] = {kBtfOff + blob.size(), false};
    }
    std::stable_sort(syms.begin(), syms.end(), [](const auto& a, const auto& b) { return a.addr < b.addr; });
    auto t = write_kallsyms_for_test(mem, pa(kKallsymsOff), syms, kTextVa, true);
    EXPECT_TRUE(t) << t.error().message;
    p.banner = "Linux version 6.1.0-syscalls-fake";
    p.build_id = "5ca11ab1e";
    p.kallsyms_relative_base_off = t->relative_base_at.value - kTextPa;
    p.kallsyms_token_table_off = t->token_table.value - kTextPa;
    p.symbols["_text"] = {0, false};
    if (table_symbol) p.symbols["sys_call_table"] = {kTableOff, false};
    p.fields["task_struct.pid"] = {0x500, 4};  // a real profile always has layouts
    for (const auto& [k, f] : profile_fields) p.fields[k] = f;
    KernelLayout l;
    l.text_va = va(0);
    l.text_pa = pa(0);
    l.end_va = va(kImage);
    l.kernel_dtb = Dtb{0x10000};  // an empty top-level table: anything outside image/direct map faults
    l.page_offset_base = kPageOffsetBase;
    return std::make_unique<Kernel>(mem, std::move(p), l, "syscall fake");
  }
  std::map<std::string, Field> profile_fields;

 private:
  std::uint64_t strings_ = 0;
};

std::vector<Record> good_records() {
  return {{"read", "sys_read", 0, {"unsigned int", "char *", "size_t"}, {"fd", "buf", "count"}},
          {"openat", "sys_openat", 257, {"int", "const char *", "int", "umode_t"}, {"dfd", "filename", "flags", "mode"}},
          {"getpid", "sys_getpid", 39, {}, {}},
          {"vm86", "sys_vm86", -1, {"unsigned long", "unsigned long"}, {"cmd", "arg"}}};
}

void expect_good(const GuestSyscalls& g) {
  ASSERT_EQ(g.meta.size(), 4u);
  EXPECT_EQ(g.meta[1], (SyscallMeta{"openat", 257, {"int", "const char *", "int", "umode_t"}, {"dfd", "filename", "flags", "mode"}}));
  EXPECT_EQ(g.meta[0], (SyscallMeta{"read", 0, {"unsigned int", "char *", "size_t"}, {"fd", "buf", "count"}}));
  EXPECT_EQ(g.meta[2], (SyscallMeta{"getpid", 39, {}, {}}));
  EXPECT_EQ(g.meta[3].nr, -1);
  EXPECT_EQ(g.x64_table, (std::map<std::uint32_t, std::string>{{0, "read"}, {1, "write"}, {257, "openat"}}));
  EXPECT_EQ(g.ia32_names, (std::set<std::string>{"read", "write", "openat"}));
}

}  // namespace

TEST(SymbolIndex, FindsEveryAliasAtAnAddressAndTheNextSymbol) {
  SymbolIndex idx({{"b", 'T', GVA{0x2000}}, {"a", 'T', GVA{0x1000}}, {"b_alias", 'T', GVA{0x2000}}, {"c", 'D', GVA{0x3000}}});
  auto at = idx.at(GVA{0x2000});
  ASSERT_EQ(at.size(), 2u);
  EXPECT_EQ(at[0].name, "b");
  EXPECT_EQ(at[1].name, "b_alias");
  EXPECT_TRUE(idx.at(GVA{0x2001}).empty());
  EXPECT_EQ(idx.next_after(GVA{0x2000}), GVA{0x3000});
  EXPECT_EQ(idx.next_after(GVA{0x1fff}), GVA{0x2000});
  EXPECT_FALSE(idx.next_after(GVA{0x3000}));
}

namespace {

// Reads the good records from `f` and checks where the layout came from.
void expect_good_read(SyscallGuest& f, std::string_view layout_source) {
  f.records = good_records();
  auto k = f.build();
  auto g = read_guest_syscalls(*k);
  ASSERT_TRUE(g) << g.error().message;
  expect_good(*g);
  EXPECT_EQ(g->rejected, 0u) << fmt::format("{}", fmt::join(g->problems, "; "));
  EXPECT_NE(g->source.find(layout_source), std::string::npos) << g->source;
}

std::map<std::string, Field> profile_fields_for(const RecordLayout& l) {
  return {{"syscall_metadata.name", {l.name, 8}},       {"syscall_metadata.syscall_nr", {l.nr, 4}},
          {"syscall_metadata.nb_args", {l.nb_args, 4}}, {"syscall_metadata.types", {l.types, 8}},
          {"syscall_metadata.args", {l.args, 8}}};
}

}  // namespace

TEST(GuestSyscalls, ReadsRecordsTableAndIa32NamesWithThe61Layout) {
  SyscallGuest f;
  expect_good_read(f, "6.1");
}

TEST(GuestSyscalls, TakesTheLayoutFromBtfInGuestMemory) {
  SyscallGuest f;
  f.layout = kShuffled;
  f.btf_in_memory = true;
  expect_good_read(f, "BTF in guest memory");
}

TEST(GuestSyscalls, TakesTheLayoutFromTheProfileFirst) {
  SyscallGuest f;
  f.layout = kShuffled;
  f.btf_in_memory = true;  // describes the same layout, but the profile's fields come first
  f.profile_fields = profile_fields_for(kShuffled);
  expect_good_read(f, "in the profile");
}

TEST(GuestSyscalls, ProfileLayoutWithImplausibleSizesIsRefused) {
  SyscallGuest f;
  f.records = good_records();
  f.profile_fields = profile_fields_for(k61);
  f.profile_fields["syscall_metadata.args"].offset = 1ULL << 40;
  auto k = f.build();
  auto g = read_guest_syscalls(*k);
  ASSERT_FALSE(g);
  EXPECT_NE(g.error().message.find("implausible"), std::string::npos) << g.error().message;
}

TEST(GuestSyscalls, HostileRecordsAreSkippedWithAReasonAndTheRestIsRead) {
  SyscallGuest f;
  f.records = good_records();
  f.records.push_back({"loop", "sys_loop", 5, {"int", "int", "int"}, {"a", "b", "c"}});
  f.records.push_back({"giant", "sys_giant", 6, {"int"}, {"a"}});
  f.records.push_back({"unterminated", "sys_unterminated", 7, {"int"}, {"a"}});
  f.records.push_back({"unmapped", "sys_unmapped", 8, {"int"}, {"a"}});
  f.records.push_back({"badtype", "sys_badtype", 9, {"int"}, {"a"}});
  f.records.push_back({"noprefix", "openat_evil", 10, {}, {}});
  f.table[3] = "__ia32_sys_read";  // not an x86-64 entry point
  auto k = f.build();
  const RecordLayout& l = f.layout;
  // types and args point back at the record: pointer bytes read as strings, never followed further.
  const GVA loop = f.record_va(4);
  f.write_u64_at(GVA{loop.value + l.types}, loop.value);
  f.write_u64_at(GVA{loop.value + l.args}, loop.value);
  f.write_i32_at(GVA{f.record_va(5).value + l.nb_args}, 0x7fffffff);
  const GVA long_name = f.put_string(std::string(200, 'A'));
  f.write_u64_at(GVA{f.record_va(6).value + l.name}, long_name.value);
  f.write_u64_at(GVA{f.record_va(7).value + l.types}, 0xffffc90000000000ULL);  // vmalloc: no page tables
  const GVA ctrl = f.put_pointers({std::string("in\x01t")});
  f.write_u64_at(GVA{f.record_va(8).value + l.types}, ctrl.value);

  auto g = read_guest_syscalls(*k);
  ASSERT_TRUE(g) << g.error().message;
  ASSERT_EQ(g->meta.size(), 4u);
  expect_good(*g);
  EXPECT_EQ(g->rejected, 7u) << fmt::format("{}", fmt::join(g->problems, "; "));
  const std::string all = fmt::format("{}", fmt::join(g->problems, "\n"));
  EXPECT_NE(all.find("__syscall_meta__giant"), std::string::npos) << all;
  EXPECT_NE(all.find("nb_args 2147483647"), std::string::npos) << all;
  EXPECT_NE(all.find("not terminated within 64 bytes"), std::string::npos) << all;
  EXPECT_NE(all.find("sys_call_table[3]"), std::string::npos) << all;
  EXPECT_EQ(g->x64_table.count(3), 0u);
}

TEST(GuestSyscalls, CountsAreBounded) {
  SyscallGuest f;
  for (std::size_t i = 0; i < SyscallMetaLimits::kMaxRecords + 30; ++i)
    f.records.push_back({fmt::format("s{}", i), fmt::format("sys_s{}", i), -1, {}, {}});
  f.end_marker = false;  // nothing after the table: at most kMaxTable entries
  f.table_entries = 600;
  f.table[550] = "__x64_sys_write";
  auto k = f.build();
  auto g = read_guest_syscalls(*k);
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(g->meta.size(), SyscallMetaLimits::kMaxRecords);
  EXPECT_EQ(g->x64_table.count(550), 0u);
  EXPECT_EQ(g->x64_table.count(257), 1u);
  EXPECT_NE(fmt::format("{}", fmt::join(g->problems, "\n")).find("only the first 1024"), std::string::npos);
}

TEST(GuestSyscalls, AKernelWithNeitherMetadataNorTableIsAnError) {
  SyscallGuest f;
  f.table_symbol = false;
  f.end_marker = false;
  auto k = f.build();
  auto g = read_guest_syscalls(*k);
  ASSERT_FALSE(g);
  EXPECT_NE(g.error().message.find("CONFIG_FTRACE_SYSCALLS"), std::string::npos) << g.error().message;
}

TEST(GuestSyscalls, CachedInTheProfileSoAWarmAttachDoesNotReread) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("hvtrace-sysmeta-{}", ::getpid());
  std::filesystem::remove_all(dir);
  SyscallGuest f;
  f.records = good_records();
  auto k = f.build();
  // An older profile already cached for this kernel: it gains the table and keeps the rest.
  ASSERT_TRUE(save_profile_file(k->profile(), dir / (k->profile().key() + ".json")));
  auto first = guest_syscalls(*k, dir);
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_NE(first->source.find("saved to"), std::string::npos) << first->source;
  auto loaded = load_profile_file(dir / (k->profile().key() + ".json"));
  ASSERT_TRUE(loaded) << loaded.error().message;
  ASSERT_TRUE(loaded->syscalls.has_value());
  EXPECT_EQ(loaded->syscalls->meta, first->meta);
  EXPECT_EQ(loaded->syscalls->x64_table, first->x64_table);
  EXPECT_EQ(loaded->syscalls->ia32_names, first->ia32_names);
  EXPECT_EQ(loaded->kallsyms_token_table_off, k->profile().kallsyms_token_table_off);
  // Warm: the records in memory are gone, the cached table is still what the attach returns.
  KernelLayout l = k->layout();
  f.write_u64_at(f.record_va(1), 0);
  Kernel warm(f.mem, *loaded, l, "cached");
  auto second = guest_syscalls(warm, dir);
  ASSERT_TRUE(second) << second.error().message;
  expect_good(*second);
  EXPECT_NE(second->source.find("[cached in"), std::string::npos) << second->source;
  EXPECT_EQ(read_guest_syscalls(warm)->meta.size(), 3u);  // memory really changed
  // No profile cached yet (e.g. after --profile elsewhere): the whole profile is written with it.
  const auto fresh = dir / "fresh";
  ASSERT_TRUE(guest_syscalls(*k, fresh));
  auto written = load_profile_file(fresh / (k->profile().key() + ".json"));
  ASSERT_TRUE(written) << written.error().message;
  ASSERT_TRUE(written->syscalls.has_value());
  EXPECT_EQ(written->syscalls->x64_table, first->x64_table);
  std::filesystem::remove_all(dir);
}

TEST(GuestSyscalls, AProfileWithoutOrWithACorruptTableStillLoads) {
  SyscallGuest f;
  auto k = f.build();
  const std::string plain = profile_to_json(k->profile());
  auto old = parse_profile(plain, "old.json");
  ASSERT_TRUE(old) << old.error().message;
  EXPECT_FALSE(old->syscalls.has_value());
  for (const char* bad : {R"({"meta": 3, "x64_table": {}, "ia32_names": []})",
                          R"({"meta": [], "x64_table": {"x": "read"}, "ia32_names": []})",
                          R"({"meta": [], "x64_table": {"9999": "read"}, "ia32_names": []})",
                          R"({"meta": [{"name": "a", "nr": 1, "types": ["int"], "args": []}], "x64_table": {}, "ia32_names": []})"}) {
    std::string text = plain;
    text.insert(text.rfind('}'), std::string(",\"syscalls\": ") + bad);
    auto p = parse_profile(text, "corrupt.json");
    ASSERT_TRUE(p) << p.error().message << "\n" << bad;
    EXPECT_FALSE(p->syscalls.has_value()) << bad;
    EXPECT_EQ(p->kallsyms_token_table_off, k->profile().kallsyms_token_table_off);
  }
}

TEST(CompareSyscallTables, ReportsEachDisagreementOnce) {
  GuestSyscalls g;
  g.x64_table = {{0, "read"}, {4, "newstat"}, {334, "rseq"}};
  g.meta = {{"read", 0, {}, {}}, {"rseq", 334, {}, {}}, {"orphan", 400, {}, {}}};
  g.ia32_names = {"read", "socketcall"};
  std::map<unsigned, std::string> compiled = {{0, "read"}, {4, "newstat"}, {334, "foo"}, {335, "bar"}, {400, "orphan"}};
  auto x64 = [&](unsigned nr) -> std::optional<std::string> {
    auto it = compiled.find(nr);
    return it == compiled.end() ? std::nullopt : std::optional(it->second);
  };
  auto i386 = [](unsigned nr) -> std::optional<std::string> {
    if (nr == 3) return "read";
    if (nr == 195) return "x86_stat64";
    return std::nullopt;
  };
  auto d = compare_syscall_tables(g, x64, i386);
  EXPECT_EQ(d, (std::vector<std::string>{"x86-64 nr 334: guest has rseq, compiled-in has foo",
                                         "x86-64 nr 335: guest has none, compiled-in has bar",
                                         "x86-64 nr 400: guest has none, compiled-in has orphan",
                                         "i386 nr 195: guest has none, compiled-in has x86_stat64"}));
  compiled = {{0, "read"}, {4, "newstat"}, {334, "rseq"}};
  g.meta.pop_back();
  g.ia32_names.insert("x86_stat64");
  EXPECT_TRUE(compare_syscall_tables(g, x64, i386).empty());
}
