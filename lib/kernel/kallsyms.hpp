// The kernel's symbol table, read from its own kallsyms tables in guest physical memory, with no
// System.map. scripts/kallsyms.c emits the tables into one .rodata object, each label 8-byte
// aligned; their order and contents changed over the kernel's history. Layouts handled:
//
//   kBaseFirst (Linux <= 6.3; Debian's 6.1, which also has kallsyms_seqs_of_names):
//     kallsyms_offsets (s32 x N), kallsyms_relative_base (u64), kallsyms_num_syms (u32 N),
//     kallsyms_names, kallsyms_markers (u32 per 256 symbols), [kallsyms_seqs_of_names (3 bytes x N),
//     6.2+], kallsyms_token_table, kallsyms_token_index (u16 x 256)
//   kTokensFirst (Linux >= 6.4, kernel commit 404bad70fcf7; Debian's 6.12):
//     kallsyms_num_syms, kallsyms_names, kallsyms_markers, kallsyms_token_table,
//     kallsyms_token_index, kallsyms_offsets, kallsyms_relative_base, kallsyms_seqs_of_names
//
// Offsets to addresses (kernel/kallsyms.c, kallsyms_sym_address):
//   absolute per-CPU (CONFIG_KALLSYMS_ABSOLUTE_PERCPU: Debian's x86-64 6.1 and 6.12): a
//     non-negative offset is the absolute value (per-CPU symbols), a negative one means
//     relative_base - 1 - offset;
//   plain relative (no absolute per-CPU symbols, newer kernels): relative_base + (u32)offset.
//   The rule in use is read from the table itself: only the first has negative offsets.
// Not handled: kallsyms_addresses (absolute addresses, !KALLSYMS_BASE_RELATIVE, since removed
// upstream, never used by Debian's x86-64 kernels) and PC-relative kallsyms_offsets with no
// kallsyms_relative_base at all (newest upstream kernels); discovery then says that names and
// markers were found but no relative base.
//
// Discovery anchors on what every version keeps: the token table holds the one-character tokens
// "0".."9" consecutively and is confirmed by the token index; kallsyms_num_syms directly
// precedes kallsyms_names, and the markers give the offsets of every 256th name. From the token
// table we look for names + markers ending at it (kTokensFirst, and kBaseFirst without seqs),
// then for relative_base + num_syms before the names (kBaseFirst). Each candidate is checked
// cheaply (counts, marker run, the last 256 names) before the full walk over all names.
// Everything is bounds-checked: the bytes are hostile.
#pragma once

#include "common/result.hpp"
#include "common/types.hpp"
#include "mem/phys_mem.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::kernel {

struct Symbol {
  std::string name;
  char type = '?';  // as in /proc/kallsyms: T, t, D, d, B, b, R, r, A, V, W ...
  GVA addr;
};

enum class KallsymsLayout : std::uint8_t {
  kBaseFirst,    // Linux <= 6.3 (see above)
  kTokensFirst,  // Linux >= 6.4
};

// Where the tables sit in guest physical memory.
struct KallsymsTables {
  KallsymsLayout layout = KallsymsLayout::kBaseFirst;
  GPA offsets, relative_base_at, num_syms_at, names, markers, token_table, token_index;
  std::optional<GPA> seqs_of_names;
  std::uint32_t num_syms = 0;
  std::uint64_t relative_base = 0;  // the relocated _text (virtual)
  bool absolute_percpu = true;      // offset rule (see above)

  // The physical range all tables occupy together.
  [[nodiscard]] std::uint64_t span_begin() const;
  [[nodiscard]] std::uint64_t span_end() const;
};

[[nodiscard]] const char* to_string(KallsymsLayout l);

struct KallsymsLimits {
  std::uint32_t max_syms = 1U << 22;                 // 4 M symbols
  std::uint64_t max_backscan = 32ULL << 20;          // how far before the token table to look
};

// A physical range [begin, end) the scan is confined to (the kernel image: kernel/image.hpp).
struct PhysRange {
  std::uint64_t begin = 0, end = 0;
};

// What a scan examined, so tests can check its cost by counts, not by time.
struct KallsymsScanStats {
  std::uint64_t digit_runs = 0;      // "0".."9" runs examined as token-table candidates
  std::uint64_t token_tables = 0;    // ... confirmed by a token index (then the tables around them are sought)
  std::uint64_t complete = 0;        // complete tables handed to `accept`
};

// At most this many digit runs are examined per scan (a guest can plant runs anywhere in RAM it
// can write; discovery confines the scan to the kernel image, where it cannot).
inline constexpr std::uint64_t kMaxDigitRuns = 4096;

// Find the tables by scanning the RAM's data extents (holes are skipped, never touched), only
// inside `regions` when given (nothing outside them is read). Candidates are tried in address
// order; the first that validates completely wins unless `accept` (optional) rejects it, e.g.
// because page tables disagree.
[[nodiscard]] Result<KallsymsTables> locate_kallsyms(
    const mem::PhysMem& mem, const KallsymsLimits& limits = {},
    const std::function<bool(const KallsymsTables&)>& accept = {}, const std::vector<PhysRange>* regions = nullptr,
    KallsymsScanStats* stats = nullptr);

// Validate the tables given the physical positions of relative_base and the token table (from a
// cached profile; either order, as the layout has it).
[[nodiscard]] Result<KallsymsTables> validate_kallsyms_at(const mem::PhysMem& mem, GPA relative_base_at,
                                                           GPA token_table, const KallsymsLimits& limits = {});

// Decode every symbol, in table order (= /proc/kallsyms order for the core kernel).
[[nodiscard]] Result<std::vector<Symbol>> decode_kallsyms(const mem::PhysMem& mem, const KallsymsTables& t);

// Test helper: lay out kallsyms tables for `syms` at `base` in one of the formats above, with
// single-character tokens plus two pair tokens, as scripts/kallsyms.c would. Returns the tables'
// positions. `with_seqs` adds kallsyms_seqs_of_names (kTokensFirst always has it);
// `absolute_percpu` picks the offset rule (symbols below relative_base are per-CPU).
[[nodiscard]] Result<KallsymsTables> write_kallsyms_for_test(mem::FakeMem& mem, GPA base,
                                                              const std::vector<Symbol>& syms,
                                                              std::uint64_t relative_base, bool with_seqs,
                                                              KallsymsLayout layout = KallsymsLayout::kBaseFirst,
                                                              bool absolute_percpu = true);

}  // namespace hvtrace::kernel
