// Exported symbols of an ELF shared object as it is loaded in a guest process, read from the
// process's memory with no debug symbols and no file: ELF header -> program headers -> PT_DYNAMIC
// -> DT_SYMTAB / DT_STRTAB / DT_STRSZ and DT_GNU_HASH (or DT_HASH) -> the symbol's value. This is
// how user-space breakpoints find library functions (getpwnam in libc.so.6, crypt in
// libcrypt.so.1) in a traced process, the way LibVMI/DRAKVUF users place them.
//
// The guest is hostile and its memory incomplete: every count and address is bounded and checked
// against the object's own extent (its PT_LOAD span), every hash chain walk is bounded, names are
// compared over a bounded length, and a page that is not present is reported as kUnreadable
// ("try again later": the loader or the program will fault it in), never as a crash. The dynamic
// section's pointers are accepted both as link-time offsets (before the loader relocates them) and
// as relocated addresses (glibc's ld.so adds the load bias in place on x86-64).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace hvtrace::linux_os {

// Copies len bytes of the process's virtual memory at va into dst; false when any byte is
// unreadable (not mapped, page not present).
using UserMemReader = std::function<bool(std::uint64_t va, void* dst, std::size_t len)>;

struct ElfLimits {
  std::uint32_t max_phdrs = 64;
  std::uint32_t max_dynamic = 1024;         // PT_DYNAMIC entries scanned
  std::uint32_t max_chain = 4096;           // symbols visited per name (one hash chain)
  std::uint32_t max_name = 512;             // bytes of a symbol name read and compared
  std::uint64_t max_span = 1ULL << 32;      // an object's PT_LOAD extent
  std::uint32_t max_buckets = 1U << 24;
};

struct ElfSymbolLookup {
  enum class Status {
    kOk,           // every name looked up; `found` holds the exported ones
    kUnreadable,   // a page needed is not (yet) readable: try again later
    kMalformed,    // not an ELF object this reader accepts, or inconsistent tables
  };
  Status status = Status::kOk;
  std::string why;                                 // for kUnreadable / kMalformed
  std::map<std::string, std::uint64_t> found;      // name -> address in the process (base + st_value)
};

// Looks up `names` among the dynamic symbols of the ELF object whose first byte (ELF header,
// file offset 0) is mapped at `base`. Only defined STT_FUNC/STT_OBJECT symbols count (an
// STT_GNU_IFUNC's value is its resolver, not the function: not reported). With several versions
// of a name, the first one the hash chain gives.
[[nodiscard]] ElfSymbolLookup find_dynamic_symbols(const UserMemReader& read, std::uint64_t base,
                                                   std::span<const std::string> names, const ElfLimits& limits = {});

// A loaded ELF object found in a process's memory: where its header is, and its DT_SONAME.
struct LoadedObject {
  std::uint64_t base = 0;
  std::string soname;   // empty: none (an executable) or unreadable
};

// The loaded objects whose ELF header sits on a page boundary within `window` bytes below or
// above `va` (an address inside one of them, e.g. where a process made a system call), nearest
// first. For a process whose libraries were loaded before anyone watched: the loader maps them
// next to each other. Reads one word per page (unreadable pages are skipped), at most `max_found`.
[[nodiscard]] std::vector<LoadedObject> scan_loaded_objects(const UserMemReader& read, std::uint64_t va, std::uint64_t window,
                                                            std::size_t max_found = 64, const ElfLimits& limits = {});

// The two hash functions of the ELF dynamic tables.
[[nodiscard]] std::uint32_t elf_sysv_hash(std::string_view name);
[[nodiscard]] std::uint32_t elf_gnu_hash(std::string_view name);

}  // namespace hvtrace::linux_os
