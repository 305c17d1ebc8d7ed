// The kernel's symbol table, read from its own kallsyms tables in guest physical memory, with no
// System.map. The tables (scripts/kallsyms.c output, each 8-byte aligned) are, in order:
//   kallsyms_offsets (s32 x N), kallsyms_relative_base (u64, the relocated _text),
//   kallsyms_num_syms (u32 N), kallsyms_names, kallsyms_markers (u32 per 256 symbols),
//   [kallsyms_seqs_of_names (3 bytes x N), newer kernels], kallsyms_token_table, kallsyms_token_index.
// We anchor on the token table (it holds the one-character tokens "0".."9" consecutively and is
// confirmed by the token index), then look backwards for relative_base/num_syms whose names and
// markers end exactly at the token table. Everything is bounds-checked: the bytes are hostile.
// Addresses use the x86-64 rule (CONFIG_KALLSYMS_ABSOLUTE_PERCPU): a non-negative offset is the
// absolute value (per-CPU symbols), a negative one means relative_base - 1 - offset.
#pragma once

#include "common/result.hpp"
#include "common/types.hpp"
#include "mem/phys_mem.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::kernel {

struct Symbol {
  std::string name;
  char type = '?';  // as in /proc/kallsyms: T, t, D, d, B, b, R, r, A, V, W ...
  GVA addr;
};

// Where the tables sit in guest physical memory.
struct KallsymsTables {
  GPA offsets, relative_base_at, names, markers, token_table, token_index;
  std::optional<GPA> seqs_of_names;
  std::uint32_t num_syms = 0;
  std::uint64_t relative_base = 0;  // the relocated _text (virtual)
};

struct KallsymsLimits {
  std::uint32_t max_syms = 1U << 22;                 // 4 M symbols
  std::uint64_t max_backscan = 32ULL << 20;          // how far before the token table to look
};

// Find the tables by scanning the RAM's data extents (holes are skipped, never touched).
// Candidates are tried in address order; the first that validates completely wins unless
// `accept` (optional) rejects it, e.g. because page tables disagree.
[[nodiscard]] Result<KallsymsTables> locate_kallsyms(
    const mem::PhysMem& mem, const KallsymsLimits& limits = {},
    const std::function<bool(const KallsymsTables&)>& accept = {});

// Validate the tables given their positions relative to each other (a cached profile) and the
// physical position of relative_base.
[[nodiscard]] Result<KallsymsTables> validate_kallsyms_at(const mem::PhysMem& mem, GPA relative_base_at,
                                                           GPA token_table, const KallsymsLimits& limits = {});

// Decode every symbol, in table order (= /proc/kallsyms order for the core kernel).
[[nodiscard]] Result<std::vector<Symbol>> decode_kallsyms(const mem::PhysMem& mem, const KallsymsTables& t);

// Test helper: lay out kallsyms tables for `syms` at `base` in the format above, with
// single-character tokens plus one pair token, as scripts/kallsyms.c would. Returns the tables'
// positions. `with_seqs` adds kallsyms_seqs_of_names.
[[nodiscard]] Result<KallsymsTables> write_kallsyms_for_test(mem::FakeMem& mem, GPA base,
                                                              const std::vector<Symbol>& syms,
                                                              std::uint64_t relative_base, bool with_seqs);

}  // namespace hvtrace::kernel
