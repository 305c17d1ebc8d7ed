// find_dynamic_symbols on real shared objects from the host (libcrypt.so.1, libc.so.6) loaded into
// a fake process memory the way the loader maps them (PT_LOAD segments at a page-aligned base),
// checked against the host's own dynamic linker (dlsym/dladdr), and against hostile memory:
// missing pages, relocated and unrelocated dynamic sections, garbage.
#include "linux/elf_symbols.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace hvtrace::linux_os {
namespace {

constexpr std::uint64_t kBase = 0x7f12'3456'7000ULL;

// A process's memory, page by page; a missing page is unreadable.
struct FakeUserMem {
  std::map<std::uint64_t, std::vector<unsigned char>> pages;
  bool read(std::uint64_t va, void* dst, std::size_t len) const {
    auto* out = static_cast<unsigned char*>(dst);
    while (len > 0) {
      auto it = pages.find(va & ~0xfffULL);
      if (it == pages.end()) return false;
      const std::size_t off = va & 0xfff, n = std::min<std::size_t>(len, 4096 - off);
      std::memcpy(out, it->second.data() + off, n);
      out += n;
      va += n;
      len -= n;
    }
    return true;
  }
  unsigned char* at(std::uint64_t va) { return pages.at(va & ~0xfffULL).data() + (va & 0xfff); }
  UserMemReader reader() const {
    return [this](std::uint64_t va, void* dst, std::size_t len) { return read(va, dst, len); };
  }
};

std::optional<std::string> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Map `file` as ld.so does: each PT_LOAD's pages, file bytes then zeros.
FakeUserMem load(const std::string& file, std::uint64_t base) {
  FakeUserMem m;
  Elf64_Ehdr eh{};
  std::memcpy(&eh, file.data(), sizeof eh);
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr p{};
    std::memcpy(&p, file.data() + eh.e_phoff + i * sizeof p, sizeof p);
    if (p.p_type != PT_LOAD) continue;
    const std::uint64_t first = p.p_vaddr & ~0xfffULL, end = p.p_vaddr + p.p_memsz;
    for (std::uint64_t pv = first; pv < end; pv += 4096) {
      auto& page = m.pages[base + pv];
      page.assign(4096, 0);
      for (std::uint64_t b = 0; b < 4096; ++b) {
        const std::uint64_t v = pv + b;
        if (v < p.p_vaddr - (p.p_vaddr & 0xfff) || v >= p.p_vaddr + p.p_filesz) continue;
        const std::uint64_t off = p.p_offset + (v - p.p_vaddr);
        if (off < file.size()) page[b] = static_cast<unsigned char>(file[off]);
      }
    }
  }
  return m;
}

// The offset of `sym` in `lib` as the host's dynamic linker resolves it.
std::optional<std::uint64_t> host_offset(const char* lib, const char* sym) {
  void* h = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) h = dlopen(lib, RTLD_NOW);
  if (h == nullptr) return std::nullopt;
  void* p = dlsym(h, sym);
  Dl_info info{};
  if (p == nullptr || dladdr(p, &info) == 0) return std::nullopt;
  return reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(info.dli_fbase);
}

const char* kCrypt = "/lib/x86_64-linux-gnu/libcrypt.so.1";
const char* kLibc = "/lib/x86_64-linux-gnu/libc.so.6";

TEST(ElfSymbols, FindsLibcryptsCryptAsTheHostLinkerDoes) {
  const auto file = slurp(kCrypt);
  if (!file) GTEST_SKIP() << kCrypt << " not on this host";
  const auto mem = load(*file, kBase);
  const std::vector<std::string> names = {"crypt", "crypt_r", "crypt_rn", "crypt_ra", "no_such_function"};
  const auto r = find_dynamic_symbols(mem.reader(), kBase, names);
  ASSERT_EQ(r.status, ElfSymbolLookup::Status::kOk) << r.why;
  EXPECT_EQ(r.found.count("no_such_function"), 0u);
  for (const char* n : {"crypt", "crypt_r", "crypt_rn", "crypt_ra"}) {
    ASSERT_EQ(r.found.count(n), 1u) << n;
    const auto want = host_offset("libcrypt.so.1", n);
    ASSERT_TRUE(want.has_value()) << n;
    EXPECT_EQ(r.found.at(n) - kBase, *want) << n;
  }
}

TEST(ElfSymbols, FindsLibcsGetpwnamAndAcceptsARelocatedDynamicSection) {
  const auto file = slurp(kLibc);
  if (!file) GTEST_SKIP() << kLibc << " not on this host";
  auto mem = load(*file, kBase);
  const std::vector<std::string> names = {"getpwnam"};
  const auto want = host_offset("libc.so.6", "getpwnam");
  ASSERT_TRUE(want.has_value());
  auto r = find_dynamic_symbols(mem.reader(), kBase, names);
  ASSERT_EQ(r.status, ElfSymbolLookup::Status::kOk) << r.why;
  ASSERT_EQ(r.found.count("getpwnam"), 1u);
  EXPECT_EQ(r.found.at("getpwnam") - kBase, *want);
  // What glibc's ld.so does on x86-64: the dynamic section's pointers get the load bias added.
  Elf64_Ehdr eh{};
  std::memcpy(&eh, file->data(), sizeof eh);
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr p{};
    std::memcpy(&p, file->data() + eh.e_phoff + i * sizeof p, sizeof p);
    if (p.p_type != PT_DYNAMIC) continue;
    for (std::uint64_t off = 0; off + sizeof(Elf64_Dyn) <= p.p_memsz; off += sizeof(Elf64_Dyn)) {
      Elf64_Dyn d{};
      std::memcpy(&d, mem.at(kBase + p.p_vaddr + off), sizeof d);
      if (d.d_tag == DT_NULL) break;
      if (d.d_tag == DT_SYMTAB || d.d_tag == DT_STRTAB || d.d_tag == DT_GNU_HASH || d.d_tag == DT_HASH) {
        d.d_un.d_ptr += kBase;
        std::memcpy(mem.at(kBase + p.p_vaddr + off), &d, sizeof d);
      }
    }
  }
  r = find_dynamic_symbols(mem.reader(), kBase, names);
  ASSERT_EQ(r.status, ElfSymbolLookup::Status::kOk) << r.why;
  EXPECT_EQ(r.found.at("getpwnam") - kBase, *want);
}

TEST(ElfSymbols, AMissingPageIsTryAgainLaterNotAnError) {
  const auto file = slurp(kCrypt);
  if (!file) GTEST_SKIP() << kCrypt << " not on this host";
  const std::vector<std::string> names = {"crypt"};
  auto mem = load(*file, kBase);
  mem.pages.erase(kBase);   // the ELF header's page
  EXPECT_EQ(find_dynamic_symbols(mem.reader(), kBase, names).status, ElfSymbolLookup::Status::kUnreadable);
  // Every other page missing in turn: never a wrong address, only kUnreadable or the right one.
  const auto full = load(*file, kBase);
  const auto good = find_dynamic_symbols(full.reader(), kBase, names).found.at("crypt");
  for (const auto& [va, page] : full.pages) {
    auto holed = full;
    holed.pages.erase(va);
    const auto r = find_dynamic_symbols(holed.reader(), kBase, names);
    if (r.status == ElfSymbolLookup::Status::kOk) {
      EXPECT_EQ(r.found.at("crypt"), good) << std::hex << va;
    } else {
      EXPECT_EQ(r.status, ElfSymbolLookup::Status::kUnreadable) << std::hex << va << " " << r.why;
    }
  }
}

TEST(ElfSymbols, HostileBytesNeverCrashOrPointOutside) {
  const auto file = slurp(kCrypt);
  if (!file) GTEST_SKIP() << kCrypt << " not on this host";
  const std::vector<std::string> names = {"crypt", "crypt_r"};
  std::mt19937_64 rng(42);
  const auto clean = load(*file, kBase);
  std::uint64_t span = 0;
  for (const auto& [va, page] : clean.pages) span = std::max(span, va + 4096 - kBase);
  for (int round = 0; round < 300; ++round) {
    auto m = clean;
    // Flip bytes in the first page (headers) and in a random page (tables).
    for (int k = 0; k < 8; ++k) {
      auto it = std::next(m.pages.begin(), static_cast<long>(rng() % (k < 4 ? 1 : m.pages.size())));
      it->second[rng() % 4096] = static_cast<unsigned char>(rng());
    }
    const auto r = find_dynamic_symbols(m.reader(), kBase, names);
    for (const auto& [n, va] : r.found) {
      EXPECT_GE(va, kBase) << n;
      EXPECT_LT(va, kBase + span) << n;
    }
  }
  FakeUserMem junk;
  junk.pages[kBase].assign(4096, 0x41);
  EXPECT_EQ(find_dynamic_symbols(junk.reader(), kBase, names).status, ElfSymbolLookup::Status::kMalformed);
  EXPECT_EQ(find_dynamic_symbols(junk.reader(), ~0ULL & ~0xfffULL, names).status, ElfSymbolLookup::Status::kMalformed);
}

// A process whose libraries were loaded before anyone watched: found from an address inside one
// (where it made a system call) by their page-aligned ELF headers, named by DT_SONAME.
TEST(ElfSymbols, ScanFindsNeighbouringLibrariesByTheirSoname) {
  const auto crypt_file = slurp(kCrypt), libc_file = slurp(kLibc);
  if (!crypt_file || !libc_file) GTEST_SKIP() << "host libraries missing";
  const std::uint64_t libc_base = kBase, crypt_base = kBase + (8ULL << 20);
  auto mem = load(*libc_file, libc_base);
  for (auto& [va, page] : load(*crypt_file, crypt_base).pages) mem.pages[va] = page;
  const auto found = scan_loaded_objects(mem.reader(), libc_base + 0x30123, 32ULL << 20);
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].base, libc_base);
  EXPECT_EQ(found[0].soname, "libc.so.6");
  EXPECT_EQ(found[1].base, crypt_base);
  EXPECT_EQ(found[1].soname, "libcrypt.so.1");
  EXPECT_TRUE(scan_loaded_objects(mem.reader(), libc_base + 0x30123, 4096).size() <= 1u);   // window
  EXPECT_TRUE(scan_loaded_objects(mem.reader(), ~0ULL, 32ULL << 20).empty());
}

TEST(ElfSymbols, HashFunctions) {
  EXPECT_EQ(elf_gnu_hash(""), 5381u);
  EXPECT_EQ(elf_gnu_hash("printf"), 0x156b2bb8u);
  EXPECT_EQ(elf_sysv_hash("printf"), 0x077905a6u);
}

}  // namespace
}  // namespace hvtrace::linux_os
