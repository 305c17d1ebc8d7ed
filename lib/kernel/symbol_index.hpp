// Reverse symbol lookup: address -> the kallsyms names at it, and the next symbol after an
// address (which bounds an object that kallsyms lists without a size, e.g. sys_call_table).
// Built once from Kernel::all_symbols() (sorted by address; O(log n) lookups). The names come from
// guest memory, so an address may carry several (aliases) or none; callers choose among them.
#pragma once

#include "common/types.hpp"
#include "kernel/kallsyms.hpp"

#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace hvtrace::kernel {

class SymbolIndex {
 public:
  explicit SymbolIndex(std::vector<Symbol> symbols);

  // Every symbol that starts exactly at `va`, in kallsyms order.
  [[nodiscard]] std::span<const Symbol> at(GVA va) const;
  // The lowest symbol address above `va`, if any.
  [[nodiscard]] std::optional<GVA> next_after(GVA va) const;
  [[nodiscard]] const std::vector<Symbol>& symbols() const { return by_addr_; }

 private:
  std::vector<Symbol> by_addr_;  // stable-sorted by address
};

}  // namespace hvtrace::kernel
